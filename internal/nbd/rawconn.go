package nbd

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawConn is a socket read and written with plain system calls in the
// calling thread. A WRITE's payload is read with MSG_WAITALL in one call
// however many pieces the kernel sends it in, and a batch of replies leaves
// with one writev. Close shuts the socket down, which wakes a thread blocked
// on it, and closes the fd once no call is using it.
//
// How the reader waits for the next request (Read) depends on poll: with a
// pollable rawConn (newPolledConn) the goroutine parks on Go's netpoller
// between requests, so that a daemon with no I/O holds no P in a system call
// (a thread blocked in a syscall with its P keeps the runtime's sysmon
// polling every 20 µs and gets its P retaken, which costs several thread
// wake-ups per request); the short waits inside a request (the rest of a
// payload, a full send buffer) block the thread. Without poll (newRawConn),
// every wait blocks the thread.
type rawConn struct {
	fd     int
	poll   syscall.RawConn // the fd on the netpoller, or nil
	file   *os.File        // owner of fd when poll is set
	mu     sync.RWMutex    // held shared by calls on fd, exclusively to close it
	closed bool
	once   sync.Once

	// the reader's non-blocking read for poll.Read, made once so that a
	// read allocates nothing: its buffer in, its result out
	tryRead func(uintptr) bool
	rp      []byte
	rn      int
	rerr    error
	rfds    [1]unix.PollFd // block's poll set, for the reader and the writer
	wfds    [1]unix.PollFd
}

func newRawConn(fd int) *rawConn { return &rawConn{fd: fd} }

// newPolledConn returns a rawConn whose Read waits on the netpoller. It owns
// fd, which it makes non-blocking, and closes it on error.
func newPolledConn(fd int) (*rawConn, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl O_NONBLOCK", err)
	}
	f := os.NewFile(uintptr(fd), "nbd-daemon")
	sc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	c := &rawConn{fd: fd, poll: sc, file: f}
	c.tryRead = func(fd uintptr) bool {
		c.rn, c.rerr = unix.Read(int(fd), c.rp)
		return c.rerr != unix.EAGAIN
	}
	return c, nil
}

func (c *rawConn) acquire() bool {
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return false
	}
	return true
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if !c.acquire() {
		return 0, net.ErrClosed
	}
	defer c.mu.RUnlock()
	for {
		var n int
		var err error
		if c.poll != nil {
			// one non-blocking read; EAGAIN parks the goroutine
			// until the socket is readable
			c.rp = p
			perr := c.poll.Read(c.tryRead)
			n, err, c.rp, c.rerr = c.rn, c.rerr, nil, nil
			if perr != nil {
				return 0, perr
			}
		} else {
			n, err = unix.Read(c.fd, p)
		}
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, os.NewSyscallError("read", err)
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// block waits in the calling thread until fd is ready for events (a short
// wait inside a request on a non-blocking fd).
func (c *rawConn) block(events int16) error {
	fds := c.rfds[:]
	if events == unix.POLLOUT {
		fds = c.wfds[:]
	}
	fds[0] = unix.PollFd{Fd: int32(c.fd), Events: events}
	for {
		_, err := unix.Poll(fds, -1)
		if err != unix.EINTR {
			if err != nil {
				return os.NewSyscallError("poll", err)
			}
			return nil
		}
	}
}

// readFull reads len(p) bytes, waiting in the kernel until all are there.
func (c *rawConn) readFull(p []byte) (int, error) {
	if !c.acquire() {
		return 0, net.ErrClosed
	}
	defer c.mu.RUnlock()
	got := 0
	for got < len(p) {
		b := p[got:]
		r, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(c.fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_WAITALL, 0, 0)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN && c.poll != nil:
			// non-blocking: MSG_WAITALL took what was there
			if err := c.block(unix.POLLIN); err != nil {
				return got, err
			}
			continue
		case e != 0:
			return got, os.NewSyscallError("recvfrom", e)
		case r == 0:
			return got, io.ErrUnexpectedEOF
		}
		got += int(r)
	}
	return got, nil
}

func (c *rawConn) Write(p []byte) (int, error) {
	return c.writev([][]byte{p})
}

// writev writes every byte of iov, with as few writev calls as the socket
// allows. It consumes iov (the slices are resliced).
func (c *rawConn) writev(iov [][]byte) (int, error) {
	if !c.acquire() {
		return 0, net.ErrClosed
	}
	defer c.mu.RUnlock()
	total := 0
	for len(iov) > 0 {
		n, err := unix.Writev(c.fd, iov[:min(len(iov), 1024)]) // IOV_MAX
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN && c.poll != nil {
			if err := c.block(unix.POLLOUT); err != nil {
				return total, err
			}
			continue
		}
		if err != nil {
			return total, os.NewSyscallError("writev", err)
		}
		total += n
		for n > 0 && len(iov) > 0 {
			if n >= len(iov[0]) {
				n -= len(iov[0])
				iov = iov[1:]
				continue
			}
			iov[0] = iov[0][n:]
			n = 0
		}
		for len(iov) > 0 && len(iov[0]) == 0 {
			iov = iov[1:]
		}
	}
	return total, nil
}

// Close wakes blocked calls (shutdown), waits for them, then closes the fd.
func (c *rawConn) Close() error {
	var err error
	c.once.Do(func() {
		unix.Shutdown(c.fd, unix.SHUT_RDWR)
		c.mu.Lock()
		c.closed = true
		if c.file != nil {
			err = c.file.Close()
		} else {
			err = unix.Close(c.fd)
		}
		c.mu.Unlock()
	})
	return err
}

func (c *rawConn) LocalAddr() net.Addr              { return rawAddr{} }
func (c *rawConn) RemoteAddr() net.Addr             { return rawAddr{} }
func (c *rawConn) SetDeadline(time.Time) error      { return syscall.ENOTSUP }
func (c *rawConn) SetReadDeadline(time.Time) error  { return syscall.ENOTSUP }
func (c *rawConn) SetWriteDeadline(time.Time) error { return syscall.ENOTSUP }
func (rawAddr) Network() string                     { return "unix" }
func (rawAddr) String() string                      { return "nbd-daemon" }

type rawAddr struct{}
