// Package initiator is the engine of rbdi: it turns a remote export into a
// local block device. For each device it opens an RDMA session on the target
// (internal/client), creates the kernel NBD device through generic netlink
// with one socketpair per queue (internal/nbd), and serves each kernel socket
// from its own RDMA queue: every NBD request maps onto RDMA operations against
// the target's slots, with many in flight per queue, and the only copy is
// between the NBD socket and the registered slot buffer. Users see
// /dev/rbdiN, a link to the /dev/nbdX underneath.
package initiator
