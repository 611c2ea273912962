// Package initiator is the engine of rbdi: it turns a remote export into a
// local block device. For each device it opens an RDMA session on the target
// (internal/client), creates the kernel NBD device through generic netlink
// with one socketpair per queue (internal/nbd), and serves each kernel socket
// from its own RDMA queue: every NBD request maps onto RDMA operations against
// the target's slots, with many in flight per queue, and the only copy is
// between the NBD socket and the registered slot buffer. Users see
// /dev/rbdiN, a link to the /dev/nbdX underneath.
//
// By stage: manager.go adds, finds and removes devices; device.go carries
// NBD requests to the queues; kernel.go owns the kernel device's sockets
// (replacing one the kernel gives up on, ordering the kernel's resent writes
// after rbdi's copies); socket.go serves a device on an NBD Unix socket;
// state.go and adopt.go keep each device's state and adopt the devices an
// earlier rbdi left; route.go checks the route to a target.
package initiator
