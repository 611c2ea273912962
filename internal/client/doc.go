// Package client is the RDMA side of the initiator: a Session is one export
// opened on one target over 1..N queues (RC connections), each with its own
// slots, credits and completion poller. A caller acquires a slot, fills its
// buffer for a WRITE, submits a command and gets a Completion in the queue's
// poller goroutine; READ data arrives in the slot's buffer (fetched with RDMA
// READ) or inline in a receive buffer. rbdi maps NBD requests onto it; the
// e2e tests use it as a test initiator.
//
// Request state (slots), queue pairs (Queue) and the NBD side (rbdi) are kept
// apart so that reconnecting a queue and resending its commands can be added
// without touching the rest.
package client
