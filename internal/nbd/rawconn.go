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

// rawConn is a blocking socket read and written with plain system calls in
// the calling thread, not through Go's netpoller: a request that arrives
// wakes the very thread that waits for it (no hand-off to a goroutine that
// the scheduler must then run), a WRITE's payload is read with MSG_WAITALL
// in one call however many pieces the kernel sends it in, and a batch of
// replies leaves with one writev. Close shuts the socket down, which wakes a
// thread blocked on it, and closes the fd once no call is using it.
type rawConn struct {
	fd     int
	mu     sync.RWMutex // held shared by calls on fd, exclusively to close it
	closed bool
	once   sync.Once
}

func newRawConn(fd int) *rawConn { return &rawConn{fd: fd} }

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
		n, err := unix.Read(c.fd, p)
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
		err = unix.Close(c.fd)
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
