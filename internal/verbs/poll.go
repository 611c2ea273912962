package verbs

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pollFD parks goroutines on Go's netpoller until a non-blocking channel fd
// (completion channel, rdma_cm event channel) is readable. It watches a dup of
// the fd, so closing it never closes the fd that the C object owns.
type pollFD struct {
	f      *os.File
	rc     syscall.RawConn
	closed atomic.Bool
}

func newPollFD(fd int, name string) (*pollFD, error) {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, newError("fcntl F_DUPFD_CLOEXEC", err.(syscall.Errno))
	}
	f := os.NewFile(uintptr(dup), name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &pollFD{f: f, rc: rc}, nil
}

// read calls try until it reports done, waiting for readability in between;
// try must return false only after the fd said EAGAIN. It returns ctx's error
// when ctx ends first and ErrClosed when the pollFD is closed.
func (p *pollFD) read(ctx context.Context, try func() bool) error {
	if p.closed.Load() {
		return ErrClosed
	}
	if d, ok := ctx.Deadline(); ok {
		p.f.SetReadDeadline(d)
	} else {
		p.f.SetReadDeadline(time.Time{})
	}
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { p.f.SetReadDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	err := p.rc.Read(func(uintptr) bool { return try() })
	switch {
	case err == nil:
		return nil
	case p.closed.Load():
		return ErrClosed
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, os.ErrClosed):
		return ErrClosed
	case errors.Is(err, os.ErrDeadlineExceeded):
		return context.DeadlineExceeded
	}
	return err
}

func (p *pollFD) close() error {
	if p.closed.Swap(true) {
		return nil
	}
	return p.f.Close()
}
