// Package memt is an in-memory implementation of the transport seam
// (internal/transport): a Network that is both a transport.Dialer and a
// transport.Network, whose endpoints behave like the two ends of an RC queue
// pair, so that the engines (internal/client, internal/target, through
// internal/ring) run in one process, fast and deterministically, under -race.
//
// What memt owns: the listeners and the addresses they are bound to, the
// connections (Conn: one per dialed/accepted endpoint pair), each endpoint's
// memory-region table (keys it allocates; regions are verbs.NewSoftMR over the
// caller's verbs.Buffer), its receive queue, its send queue of work requests
// not yet executed, its completion queue and its event channel, and the
// connection-manager events (Connect/Accept/Reject private data, DISCONNECTED).
// It owns no buffer: the engines' verbs.Buffers are read and written in place,
// at the addresses their SGEs and RDMA addresses name. Endpoint.Close
// deregisters (closes) every region registered on the endpoint.
//
// Execution model. Nothing runs in a goroutine of memt's own: a work request
// is executed synchronously in the PostSend (or PostRecv, or Release, ...) call
// that makes it executable, under the connection's one mutex, in posting
// order per direction. A SEND copies the gathered bytes into the peer's oldest
// posted receive; with none posted it waits (RNR retry "infinite", the
// default) until the peer posts one, or fails with a RNR error
// (Options.RNRError). RDMA WRITE and READ copy to and from the peer's
// regions, checked against their rkey, bounds and access. Faults (Conn.Hold,
// Freeze, Delay, Reorder, DropAfter, Drop) only decide when the queued work
// requests of a direction execute; a delay is released by a timer
// (time.AfterFunc), the only asynchronous thing there is. Order within one
// direction is always kept, as RC keeps it.
//
// Errors are those of RC: an unknown lkey or an address outside its region is
// a local protection error completion; a bad rkey, a region without the
// access asked, or an address outside it a remote access error completion;
// a SEND bigger than the receive a local length error on the receiver and a
// remote invalid request error on the sender. Each moves the connection to
// the error state: every outstanding work request of both sides completes
// with verbs.WCFlushErr (signaled or not), later posts complete at once with
// it, and both sides' NextEvent report EventDisconnected — as Disconnect does.
//
// Completion events: Arm(false) makes WaitEvent wake at the next completion,
// Arm(true) only at the next receive of a message its sender marked
// verbs.Solicited or at an error completion; Wakeup and Close make WaitEvent
// return verbs.ErrClosed.
//
// Fidelity limits: inline data is resolved through its lkey like any other
// (a device ignores the key of inline data) but copied at post time if the
// request has to wait; RDMA READ responder resources are not enforced; send
// queue space is counted in work requests not yet executed (a full queue is
// syscall.ENOMEM, as ibv_post_send reports it).
package memt
