// Package verbs is where rbd meets libibverbs and librdmacm: connection
// management through rdma_cm (listen, resolve, connect, accept with private data,
// reject with a reason, disconnect and their events), protection domains, memory
// regions over page-aligned buffers from unix.Mmap, completion queues with a
// completion channel, RC queue pairs, chained posting of SEND, RECV, RDMA WRITE
// and RDMA READ work requests and batched completion polling.
//
// The same code runs on InfiniBand, RoCE (rdma_rxe) and iWARP (siw): it never
// uses RDMA WRITE with immediate data or shared receive queues, keeps private
// data within the smallest transport limit (MaxConnectPrivateData), and binds
// listeners to the address family that was asked for.
//
// Only verbs_cgo.go imports "C". Every C object is a Go type with an idempotent
// Close; objects are released in the reverse order of their creation
// (Endpoint.Close does this for a whole connection), and Close is safe while
// another goroutine polls or waits. No goroutine ever blocks inside C: the
// completion-channel and rdma_cm event-channel fds are non-blocking and their
// waiting is done on Go's netpoller (CQ.WaitEvent), or, for a completion
// loop that would rather keep its thread, in poll(2) in that thread
// (CQ.WaitEventThread: the completion wakes the very thread that handles it,
// with no hand-off through the scheduler; an eventfd wakes it on close).
// Errors wrap the errno with the name of the
// verb ("verbs: ibv_reg_mr: cannot allocate memory").
//
// Without cgo, or on a host without RDMA devices, the package still builds;
// its functions then return errors that match ErrNotSupported.
package verbs
