// Package nbd is rbdi's side of the kernel NBD driver: it makes /dev/nbdN
// devices whose I/O is served in Go. It also owns the server side of the
// NBD handshake, for peers that are not the kernel (nbdinfo, qemu-img,
// nbd-client over a socket).
//
// The pieces:
//
//   - The wire codec of the NBD transmission phase (Request, Reply,
//     DecodeRequest, EncodeReply, ...): 28-byte big-endian request headers
//     (a WRITE's payload follows), 16-byte simple replies (a successful READ's
//     payload follows), errno-valued error numbers (ErrnoFor). The kernel
//     speaks no handshake (the daemon passes it the connection's parameters
//     over netlink) and no structured replies.
//   - Conn, the server side of one connection: the daemon's end of an AF_UNIX
//     socketpair whose other end belongs to the kernel (NewSocketPair). One
//     goroutine reads requests (ReadRequest) and WRITE payloads straight into
//     the caller's buffers (ReadPayload); any goroutine queues replies (Reply),
//     which a writer goroutine sends in batches, one writev each, or Flush
//     sends from the caller's goroutine. A socketpair's daemon end is read
//     and written with plain system calls in the calling goroutine
//     (rawConn): between requests the reader parks on Go's netpoller (a
//     thread blocked in a system call would hold its P, and the runtime
//     answers that with sysmon wake-ups and P hand-offs, several per
//     request); a WRITE's payload arrives with MSG_WAITALL reads, and waits
//     inside it (the rest of a payload, a full send buffer) block the
//     thread briefly. RBD_NBD_SOCKET=blocking makes every wait block the
//     thread, RBD_NBD_SOCKET=netpoller serves it as a net.Conn, for
//     comparisons.
//     Other connections (a net.Conn from a listener) use the netpoller.
//   - HandshakeServer and ServeHandshake, the server side of the
//     fixed-newstyle handshake: the greeting, then options until the client
//     picks an export (NBD_OPT_GO, NBD_OPT_INFO with the export's size,
//     transmission flags, name, description and block sizes; NBD_OPT_LIST;
//     NBD_OPT_ABORT; NBD_OPT_EXPORT_NAME; NBD_OPT_STRUCTURED_REPLY; every
//     other option is refused and the handshake goes on). It reads exactly the
//     handshake's bytes, so the transmission phase is served on the same
//     net.Conn afterwards; it bounds option data at MaxOptionLength and leaves
//     the overall deadline to the caller. The structured-reply chunk codec
//     (EncodeOffsetData, EncodeReplyNone, AppendReplyError,
//     DecodeStructuredReply) is for connections that negotiated structured
//     replies; the kernel negotiates nothing and gets simple replies.
//   - Client, which creates, reconfigures, inspects and disconnects devices
//     through the "nbd" generic-netlink family and reports dead connections
//     (WatchLinkDead). It needs the nbd module and CAP_SYS_ADMIN.
//   - Sysfs, which tunes a device's queue (max_sectors_kb, scheduler) and
//     waits for it to appear (WaitForDevice) or go away.
//
// A device is brought up like this: make one socketpair per hardware queue,
// start a serving goroutine per Conn, call Client.Connect with the kernel's
// ends, close those ends (the kernel holds its own references), then tune
// the queue through Sysfs. Client.Disconnect makes the kernel send a DISC
// request on every connection and shut the sockets down; ReadRequest then
// returns the DISC request and io.EOF.
//
// Ownership: the data slice given to Conn.Reply is borrowed until the reply's
// done callback has run, so it can point into an RDMA-registered region that
// is reused afterwards; Conn.Close waits until every queued reply's callback
// has run. ReadPayload writes into the caller's buffer and keeps no reference
// to it.
//
// A process that serves a block device it also uses should call
// prctl(PR_SET_IO_FLUSHER) and lock its memory, so that memory reclaim
// cannot wait on its own I/O.
package nbd
