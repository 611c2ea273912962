// Package client is the RDMA side of the initiator: a Session is one export
// opened on one target over 1..N queues (RC connections). Each queue has its
// request state (slots: a registered local buffer and a command context
// each), its connection (endpoint and message ring, internal/ring) and one
// loop goroutine that polls the completion queue and completes commands
// where it polls. A caller acquires a slot, fills its buffer for a WRITE,
// and submits a command (Submit, or Stage and Kick to post a burst in one
// chain); its Done function runs in the loop. READ data arrives in the slot's
// buffer: the target pushes it there before its reply (protocol version 2).
// rbdi maps NBD requests onto it and writes its NBD replies from the loop at
// the end of each batch (Queue.SetBatchEnd); the e2e tests use it as a test
// initiator.
//
// Files by stage: queue.go (set-up, slots, lifetime), submit.go (commands
// out), complete.go (the loop, replies in), control.go (OPEN, KEEPALIVE,
// DISCONNECT, the CM watcher).
package client
