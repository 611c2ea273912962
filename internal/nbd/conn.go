package nbd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// DefaultReadBufferSize is the default size of a Conn's read buffer.
const DefaultReadBufferSize = 32 << 10

// socketMode is how NewSocketPair serves the daemon's end (RBD_NBD_SOCKET,
// for comparisons): "" (a rawConn that waits for requests on the netpoller
// and reads payloads and writes replies with plain system calls),
// "blocking" (a rawConn whose every wait blocks the thread) or "netpoller"
// (a net.Conn).
var socketMode = os.Getenv("RBD_NBD_SOCKET")

// ErrClosed is returned by a Conn's methods after Close.
var ErrClosed = errors.New("nbd: connection closed")

// ConnOptions tunes a Conn. A nil *ConnOptions or the zero value selects the
// defaults.
type ConnOptions struct {
	// ReadBufferSize is the size of the buffer request headers are read
	// through (default DefaultReadBufferSize; at least RequestSize). The
	// payload bytes of a WRITE that arrive in the same read as headers are
	// copied out of it; the rest of a payload is read straight into the
	// caller's buffer. Larger buffers need fewer system calls for small
	// requests and copy more of large payloads.
	ReadBufferSize int
	// Netpoller serves a socketpair's daemon end (NewSocketPair) as a
	// net.Conn on Go's netpoller instead of a rawConn (reads and writes
	// with plain system calls, waits for requests on the netpoller);
	// RBD_NBD_SOCKET=netpoller in the environment makes it the default.
	Netpoller bool

	blocking bool // tests: a rawConn whose every wait blocks (RBD_NBD_SOCKET=blocking)
}

// A Conn serves the transmission phase of one NBD connection: the daemon's
// end of a socketpair whose other end belongs to the kernel.
//
// The read side (ReadRequest, ReadPayload) must be used by one goroutine at a
// time. Reply is safe for concurrent use by any number of goroutines, also
// concurrently with the read side. Close is safe to call at any time, from any
// goroutine, any number of times.
//
// Replies are queued and written by a writer goroutine, each batch with one
// writev; they may be sent in any order, since the kernel matches them by
// handle.
type Conn struct {
	nc net.Conn

	// Read side, owned by the reading goroutine.
	rbuf       []byte
	rpos, rend int    // buffered bytes are rbuf[rpos:rend]
	remain     uint32 // payload bytes of the current WRITE not consumed yet
	rerr       error  // sticky read error

	// pending counts the requests ReadRequest returned (but NBD_CMD_DISC)
	// less the replies queued (see Pending, Drain).
	pending atomic.Int64

	// Write side. mu guards the fields up to werr; iov and bufs belong to
	// the writer goroutine.
	mu      sync.Mutex
	queue   []reply // replies waiting for the writer
	spare   []reply // the other queue buffer, swapped with queue per batch
	writing bool    // the writer goroutine is draining the queue
	kicked  bool    // a wake-up is pending on kick
	closed  bool
	werr    error // sticky write error
	iov     [][]byte
	bufs    net.Buffers

	kick       chan struct{}
	quit       chan struct{}
	writerDone chan struct{}
	closeOnce  sync.Once
	closeErr   error
}

// reply is one queued reply record.
type reply struct {
	hdr  [ReplySize]byte
	data []byte
	more [][]byte // ReplyV: further payload pieces, in order
	done func()
}

// NewConn returns a Conn that serves nc and starts its writer goroutine. The
// Conn owns nc and closes it in Close. For speed nc should be a socket on Go's
// netpoller (as from net.FileConn), so that reads and writev park goroutines
// instead of blocking threads.
func NewConn(nc net.Conn, opts *ConnOptions) *Conn {
	var o ConnOptions
	if opts != nil {
		o = *opts
	}
	if o.ReadBufferSize <= 0 {
		o.ReadBufferSize = DefaultReadBufferSize
	}
	if o.ReadBufferSize < RequestSize {
		o.ReadBufferSize = RequestSize
	}
	c := &Conn{
		nc:         nc,
		rbuf:       make([]byte, o.ReadBufferSize),
		kick:       make(chan struct{}, 1),
		quit:       make(chan struct{}),
		writerDone: make(chan struct{}),
	}
	go c.writeLoop()
	return c
}

// NewFileConn returns a Conn that serves a duplicate of the socket f (see
// net.FileConn). The caller keeps ownership of f and may close it as soon as
// NewFileConn returns.
func NewFileConn(f *os.File, opts *ConnOptions) (*Conn, error) {
	nc, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("nbd: %s: %w", f.Name(), err)
	}
	return NewConn(nc, opts), nil
}

// NewSocketPair creates an AF_UNIX stream socketpair for one kernel NBD
// connection. It returns the kernel's end, to be passed to Client.Connect or
// Client.Reconfigure and closed afterwards (the kernel holds its own
// reference), and a Conn serving the daemon's end with plain system calls,
// waiting for requests on the netpoller (rawConn; see the package doc for
// RBD_NBD_SOCKET).
func NewSocketPair(opts *ConnOptions) (kernel *os.File, conn *Conn, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("nbd: socketpair: %w", err)
	}
	kernel = os.NewFile(uintptr(fds[0]), "nbd-kernel")
	if socketMode != "netpoller" && (opts == nil || !opts.Netpoller) {
		if socketMode == "blocking" || (opts != nil && opts.blocking) {
			return kernel, NewConn(newRawConn(fds[1]), opts), nil
		}
		rc, err := newPolledConn(fds[1]) // owns fds[1], also on error
		if err != nil {
			kernel.Close()
			return nil, nil, fmt.Errorf("nbd: socketpair: %w", err)
		}
		return kernel, NewConn(rc, opts), nil
	}
	daemon := os.NewFile(uintptr(fds[1]), "nbd-daemon")
	conn, err = NewFileConn(daemon, opts)
	daemon.Close()
	if err != nil {
		kernel.Close()
		return nil, nil, err
	}
	return kernel, conn, nil
}

// ReadRequest reads the next request header. For a CmdWrite request, the
// caller should then read its Length bytes of payload with ReadPayload; any
// part of the payload not read by the next call to ReadRequest is discarded.
//
// ReadRequest returns io.EOF when the kernel closed the connection cleanly
// between requests, ErrClosed after Close, and an error wrapping ErrBadMagic
// when the stream is out of step. Errors are sticky. A CmdDisc request is
// returned like any other; the kernel closes the socket after it.
func (c *Conn) ReadRequest() (Request, error) {
	if c.rerr != nil {
		return Request{}, c.rerr
	}
	if c.remain > 0 {
		if err := c.discard(); err != nil {
			return Request{}, err
		}
	}
	if c.rend-c.rpos < RequestSize {
		if err := c.fill(RequestSize); err != nil {
			return Request{}, err
		}
	}
	req, err := DecodeRequest(c.rbuf[c.rpos:c.rend])
	if err != nil {
		c.rerr = err
		return Request{}, err
	}
	c.rpos += RequestSize
	if c.rpos == c.rend {
		c.rpos, c.rend = 0, 0
	}
	if req.Type == CmdWrite {
		c.remain = req.Length
	}
	if req.Type != CmdDisc {
		c.pending.Add(1)
	}
	return req, nil
}

// Buffered is how many bytes the read side holds already: ReadRequest does
// not block while it is at least RequestSize, nor ReadPayload for as many
// bytes. A server that batches its work flushes the batch before a read that
// may block.
func (c *Conn) Buffered() int { return c.rend - c.rpos }

// ReadPayload reads the next len(dst) bytes of the current WRITE request's
// payload into dst. It may be called several times to scatter one payload.
// Bytes already buffered are copied; the rest is read from the socket
// straight into dst. It returns an error if len(dst) exceeds what is left of
// the payload; read errors are sticky, as for ReadRequest.
func (c *Conn) ReadPayload(dst []byte) error {
	if c.rerr != nil {
		return c.rerr
	}
	if uint64(len(dst)) > uint64(c.remain) {
		return fmt.Errorf("nbd: payload read of %d bytes, but %d are left", len(dst), c.remain)
	}
	n := copy(dst, c.rbuf[c.rpos:c.rend])
	c.rpos += n
	c.remain -= uint32(n)
	if c.rpos == c.rend {
		c.rpos, c.rend = 0, 0
	}
	if n == len(dst) {
		return nil
	}
	var m int
	var err error
	if rc, ok := c.nc.(*rawConn); ok {
		m, err = rc.readFull(dst[n:])
	} else {
		m, err = io.ReadFull(c.nc, dst[n:])
	}
	c.remain -= uint32(m)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		c.rerr = c.readError("read payload", err)
		return c.rerr
	}
	return nil
}

// discard skips what is left of the current payload.
func (c *Conn) discard() error {
	for c.remain > 0 {
		if c.rpos == c.rend {
			if err := c.fill(1); err != nil {
				if errors.Is(err, io.EOF) {
					c.rerr = c.readError("discard payload", io.ErrUnexpectedEOF)
					return c.rerr
				}
				return err
			}
		}
		n := min(uint64(c.remain), uint64(c.rend-c.rpos))
		c.rpos += int(n)
		c.remain -= uint32(n)
	}
	if c.rpos == c.rend {
		c.rpos, c.rend = 0, 0
	}
	return nil
}

// fill reads until at least n bytes are buffered. A clean end of stream with
// nothing buffered is io.EOF, in the middle of a header io.ErrUnexpectedEOF.
func (c *Conn) fill(n int) error {
	if c.rpos > 0 {
		c.rend = copy(c.rbuf, c.rbuf[c.rpos:c.rend])
		c.rpos = 0
	}
	for c.rend < n {
		m, err := c.nc.Read(c.rbuf[c.rend:])
		c.rend += m
		if err == nil {
			continue
		}
		if c.rend >= n {
			break // deliver what we have; the error comes back on the next read
		}
		if errors.Is(err, io.EOF) {
			if c.rend == 0 {
				c.rerr = io.EOF
				if c.isClosed() {
					c.rerr = ErrClosed
				}
				return c.rerr
			}
			err = io.ErrUnexpectedEOF
		}
		c.rerr = c.readError("read request", err)
		return c.rerr
	}
	return nil
}

// readError wraps a read error; after Close it is ErrClosed, and after a
// failed write (which closes the socket) it is the write error.
func (c *Conn) readError(op string, err error) error {
	c.mu.Lock()
	closed, werr := c.closed, c.werr
	c.mu.Unlock()
	switch {
	case closed:
		return ErrClosed
	case werr != nil && errors.Is(err, net.ErrClosed):
		return werr
	}
	return fmt.Errorf("nbd: %s: %w", op, err)
}

func (c *Conn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Reply queues a simple reply for handle with error number errno (0 for
// success) and, for a successful READ, the payload data. If errno is not 0,
// data is not sent: the kernel reads no payload after an error.
//
// data is borrowed, not copied: the caller must not modify or reuse it until
// done has been called. If Reply returns nil, done (unless nil) is called
// exactly once, after the reply has been handed to the socket or once the
// connection has failed or been closed. It runs on the writer goroutine, so
// it must return quickly and must not call Close (which waits for the
// callbacks). By the time Close returns, every done has been called. Reply
// itself never blocks on the socket. If Reply returns an error (ErrClosed after Close, or the error
// of an earlier failed write), nothing was queued and done is never called.
//
// Reply does not allocate once the queue has grown to the connection's
// working depth; to keep the whole path free of allocations, pass a done
// that was bound once (for example a method value stored per request slot)
// rather than a new closure per call.
func (c *Conn) Reply(handle uint64, errno uint32, data []byte, done func()) error {
	return c.reply(handle, errno, data, nil, done)
}

// ReplyV is Reply with the payload in pieces (a request served in parts):
// the pieces are written in order after the header, and belong to the Conn
// until done runs, like Reply's data. The slice data itself is kept too.
func (c *Conn) ReplyV(handle uint64, errno uint32, data [][]byte, done func()) error {
	if len(data) == 0 {
		return c.reply(handle, errno, nil, nil, done)
	}
	return c.reply(handle, errno, data[0], data[1:], done)
}

// QueueReplyV is ReplyV without waking the writer goroutine: the reply waits
// in the queue until Flush, the next Reply, or Close. A server that handles
// completions in batches queues each batch's replies and then flushes once,
// writing them with one writev from its own goroutine (no hand-off).
func (c *Conn) QueueReplyV(handle uint64, errno uint32, data [][]byte, done func()) error {
	if len(data) == 0 {
		return c.enqueue(handle, errno, nil, nil, done, false)
	}
	return c.enqueue(handle, errno, data[0], data[1:], done, false)
}

// QueueReply is Reply without waking the writer goroutine (see QueueReplyV).
func (c *Conn) QueueReply(handle uint64, errno uint32, data []byte, done func()) error {
	return c.enqueue(handle, errno, data, nil, done, false)
}

// Flush writes the queued replies in the calling goroutine, batch by batch,
// and runs their done callbacks there, unless the writer goroutine is
// writing already (it then takes them). It may block while the socket is
// full.
func (c *Conn) Flush() {
	c.mu.Lock()
	if c.writing || len(c.queue) == 0 {
		c.mu.Unlock()
		return
	}
	c.writing = true
	c.drainLocked()
	c.writing = false
	c.mu.Unlock()
}

func (c *Conn) reply(handle uint64, errno uint32, data []byte, more [][]byte, done func()) error {
	return c.enqueue(handle, errno, data, more, done, true)
}

func (c *Conn) enqueue(handle uint64, errno uint32, data []byte, more [][]byte, done func(), kick bool) error {
	c.pending.Add(-1) // the request's one reply, whether or not it can go out
	if errno != 0 {
		data, more = nil, nil
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	if c.werr != nil {
		err := c.werr
		c.mu.Unlock()
		return err
	}
	c.queue = append(c.queue, reply{data: data, more: more, done: done})
	EncodeReply(c.queue[len(c.queue)-1].hdr[:], handle, errno)
	if !kick || c.writing || c.kicked {
		// The writer is draining and takes it before it stops, or it
		// has been woken already.
		c.mu.Unlock()
		return nil
	}
	c.kicked = true
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default: // a wake-up is already pending
	}
	return nil
}

// writeLoop is the writer goroutine: each time it is woken, it sends what is
// queued, batch by batch, until the queue is empty. After Close it releases
// what is left without writing and exits.
func (c *Conn) writeLoop() {
	defer close(c.writerDone)
	for {
		select {
		case <-c.kick:
		case <-c.quit:
		}
		c.mu.Lock()
		c.kicked = false
		closed := c.closed
		for closed && c.writing { // a Flush is draining: let it finish
			c.mu.Unlock()
			runtime.Gosched()
			c.mu.Lock()
		}
		if !c.writing { // else a Flush is draining, and takes what is queued
			c.writing = true
			c.drainLocked()
			c.writing = false
		}
		c.mu.Unlock()
		if closed {
			return // Reply queues nothing after Close
		}
	}
}

// drainLocked writes the queued replies, one batch per writev, and calls
// their done callbacks, until the queue is empty. The caller holds mu; it is
// released while writing and calling callbacks.
func (c *Conn) drainLocked() {
	for len(c.queue) > 0 {
		batch := c.queue
		c.queue = c.spare[:0]
		c.spare = nil
		err := c.werr
		if c.closed {
			err = ErrClosed
		}
		c.mu.Unlock()
		if err == nil {
			if err = c.writeBatch(batch); err != nil {
				c.fail(err)
			}
		}
		for i := range batch {
			if done := batch[i].done; done != nil {
				done()
			}
			batch[i].data, batch[i].more, batch[i].done = nil, nil, nil
		}
		c.mu.Lock()
		c.spare = batch[:0]
	}
}

// writeBatch sends the headers and payloads of batch with one writev (more
// only if the socket takes them in parts).
func (c *Conn) writeBatch(batch []reply) error {
	iov := c.iov[:0]
	for i := range batch {
		r := &batch[i]
		iov = append(iov, r.hdr[:])
		if len(r.data) > 0 {
			iov = append(iov, r.data)
		}
		for _, m := range r.more {
			if len(m) > 0 {
				iov = append(iov, m)
			}
		}
	}
	c.iov = iov
	var err error
	if rc, ok := c.nc.(*rawConn); ok {
		_, err = rc.writev(iov)
	} else {
		c.bufs = iov
		_, err = c.bufs.WriteTo(c.nc)
	}
	if err != nil {
		clear(iov)
		return fmt.Errorf("nbd: write replies: %w", err)
	}
	return nil
}

// fail records the first write error and closes the socket, so that the
// read side stops too.
func (c *Conn) fail(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if c.werr == nil {
		c.werr = err
	}
	c.mu.Unlock()
	c.closeSocket()
}

func (c *Conn) closeSocket() error {
	first := false
	c.closeOnce.Do(func() {
		first = true
		c.closeErr = c.nc.Close()
	})
	if !first {
		return nil
	}
	return c.closeErr
}

// Close closes the socket, which unblocks ReadRequest and ReadPayload (they
// return ErrClosed), stops the writer goroutine and calls the done callback
// of every reply still queued. When Close returns, the Conn no longer refers
// to any reply's data. Close is idempotent; calls after the first return nil.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.writerDone
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	err := c.closeSocket()
	close(c.quit)
	<-c.writerDone
	if err != nil {
		return fmt.Errorf("nbd: close: %w", err)
	}
	return nil
}
