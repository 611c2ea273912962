// Package target is the engine of rbdt: it listens for rbd initiators on
// rdma_cm, gives each connection a protection domain, memory regions and
// slots of its own, checks every command, and does O_DIRECT I/O between the
// slots (or inline message buffers) and the exported block devices and image
// files (internal/backend). It owns exports, sessions and connections; the
// daemon (cmd/rbdt) owns configuration, the control socket and metrics.
//
// Each connection runs one loop goroutine on its message ring
// (internal/ring): a request runs where it is polled while the backend is
// fast, and the batch's replies (for version-2 initiators, with the READ
// data pushed ahead of them by RDMA WRITE) go out in one post; FLUSH,
// DISCONNECT and I/O on a slow backend go to a bounded set of workers.
// Files by stage: server.go (listen, handshake, sessions), conn.go
// (connection set-up and lifetime), receive.go (the loop, checks, OPEN),
// execute.go (backend I/O, accounting, replies).
//
// Nothing a peer sends can crash the server: a bad command gets an error
// reply, a protocol violation drops that connection only, and an initiator can
// reach only its own slots. See docs/protocol.md and docs/security.md.
package target
