// Package target is the engine of rbdt: it listens for rbd initiators on
// rdma_cm, gives each connection a protection domain, memory regions and
// slots of its own, checks every command, and does O_DIRECT I/O between the
// slots (or inline message buffers) and the exported block devices and image
// files (internal/backend). It owns exports, sessions and connections; the
// daemon (cmd/rbdt) owns configuration, the control socket and metrics.
//
// Nothing a peer sends can crash the server: a bad command gets an error
// reply, a protocol violation drops that connection only, and an initiator can
// reach only its own slots. See docs/protocol.md and docs/security.md.
package target
