package verbs

import (
	"context"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// CompChannel is a completion channel: it tells when an armed CQ has a new
// completion. Its fd is non-blocking and waited on with Go's netpoller.
type CompChannel struct {
	lt   lifetime
	ch   unsafe.Pointer
	fd   int // the channel's own fd (non-blocking), for WaitEventThread
	pfd  *pollFD
	wake int // eventfd: written by wakeup, so that WaitEventThread returns
	woke atomic.Bool
}

// NewCompChannel creates a completion channel on the device.
func (c *Context) NewCompChannel() (*CompChannel, error) {
	p, err := c.ptr()
	if err != nil {
		return nil, err
	}
	ch, fd, err := cCreateCompChannel(p)
	if err != nil {
		return nil, err
	}
	pfd, err := newPollFD(fd, "ibv_comp_channel")
	if err != nil {
		cDestroyCompChannel(ch)
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		pfd.close()
		cDestroyCompChannel(ch)
		return nil, newError("eventfd", err.(syscall.Errno))
	}
	return &CompChannel{ch: ch, fd: fd, pfd: pfd, wake: wake}, nil
}

// Close wakes any goroutine waiting on the channel (it gets ErrClosed) and
// destroys the channel; it is idempotent. The CQs using it must be closed first.
func (cc *CompChannel) Close() error {
	cc.wakeup()
	if !cc.lt.close() {
		return nil
	}
	defer cc.lt.unlock()
	unix.Close(cc.wake)
	return cDestroyCompChannel(cc.ch)
}

// wakeup closes the netpoller side and signals the eventfd, so that waiters
// of either kind return ErrClosed; it frees nothing.
func (cc *CompChannel) wakeup() {
	cc.pfd.close()
	if !cc.woke.Swap(true) {
		var one = [8]byte{1}
		unix.Write(cc.wake, one[:])
	}
}

// CQ is a completion queue. Poll and Wait may run in one goroutine while
// another posts work or closes the CQ.
type CQ struct {
	lt      lifetime
	cq      unsafe.Pointer
	ch      *CompChannel
	unacked int
	waits   atomic.Uint64
	Size    int // entries the device granted
}

// Waits counts the times Wait found the CQ empty and parked on the channel.
func (cq *CQ) Waits() uint64 { return cq.waits.Load() }

// CreateCQ creates a completion queue of at least entries entries, reporting to
// ch (nil: no channel, poll only) on completion vector vector.
func (c *Context) CreateCQ(entries int, ch *CompChannel, vector int) (*CQ, error) {
	p, err := c.ptr()
	if err != nil {
		return nil, err
	}
	var chp unsafe.Pointer
	if ch != nil {
		if !ch.lt.acquire() {
			return nil, ErrClosed
		}
		defer ch.lt.release()
		chp = ch.ch
	}
	cq, n, err := cCreateCQ(p, entries, chp, vector)
	if err != nil {
		return nil, err
	}
	return &CQ{cq: cq, ch: ch, Size: n}, nil
}

// Poll fills wcs with up to len(wcs) (at most MaxChain) completions, in one
// call into C, and returns how many it got.
func (cq *CQ) Poll(wcs []WC) (int, error) {
	if !cq.lt.acquire() {
		return 0, ErrClosed
	}
	defer cq.lt.release()
	if len(wcs) > MaxChain {
		wcs = wcs[:MaxChain]
	}
	return cPollCQ(cq.cq, wcs)
}

// Arm asks for an event on the channel at the next completion.
func (cq *CQ) Arm() error { return cq.ArmFor(false) }

// ArmFor asks for an event at the next solicited completion (an incoming
// message its sender marked solicited, or an error completion where the
// device reports those) when solicitedOnly, else at the next completion.
func (cq *CQ) ArmFor(solicitedOnly bool) error {
	if !cq.lt.acquire() {
		return ErrClosed
	}
	defer cq.lt.release()
	return cReqNotifyCQ(cq.cq, solicitedOnly)
}

// WaitEvent parks until the channel reports an event for this CQ (Arm first),
// without blocking a thread in C. Only one goroutine may wait on a channel.
func (cq *CQ) WaitEvent(ctx context.Context) error {
	if cq.ch == nil {
		return newError("ibv_get_cq_event", syscall.EINVAL)
	}
	var got bool
	var gerr error
	err := cq.ch.pfd.read(ctx, func() bool {
		if !cq.ch.lt.acquire() {
			gerr = ErrClosed
			return true
		}
		_, e := cGetCQEvent(cq.ch.ch)
		cq.ch.lt.release()
		if e == syscall.EAGAIN || e == syscall.EWOULDBLOCK {
			return false
		}
		if e != nil {
			gerr = newError("ibv_get_cq_event", e.(syscall.Errno))
			return true
		}
		got = true
		return true
	})
	if err != nil {
		return err
	}
	if gerr != nil {
		return gerr
	}
	if got {
		cq.ack(1)
	}
	return nil
}

// WaitEventThread is WaitEvent for a loop that would rather keep its thread
// than park on the netpoller: it blocks the calling thread in poll(2) on the
// channel (and on the wake-up eventfd), so that the completion wakes this
// very thread, with no hand-off through the scheduler. It returns ErrClosed
// once the channel is woken or closed.
func (cq *CQ) WaitEventThread() error {
	ch := cq.ch
	if ch == nil {
		return newError("ibv_get_cq_event", syscall.EINVAL)
	}
	if !ch.lt.acquire() {
		return ErrClosed
	}
	defer ch.lt.release()
	fds := []unix.PollFd{{Fd: int32(ch.fd), Events: unix.POLLIN}, {Fd: int32(ch.wake), Events: unix.POLLIN}}
	for {
		if ch.woke.Load() {
			return ErrClosed
		}
		_, e := cGetCQEvent(ch.ch)
		if e == nil {
			cq.ack(1)
			return nil
		}
		if e != syscall.EAGAIN && e != syscall.EWOULDBLOCK {
			return newError("ibv_get_cq_event", e.(syscall.Errno))
		}
		if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
			return newError("poll", err.(syscall.Errno))
		}
	}
}

// ack acknowledges events in batches (ibv_ack_cq_events takes a lock).
func (cq *CQ) ack(n int) {
	if !cq.lt.acquire() {
		return
	}
	defer cq.lt.release()
	cq.unacked += n
	if cq.unacked >= 32 {
		cAckCQEvents(cq.cq, cq.unacked)
		cq.unacked = 0
	}
}

// Wait returns at least one completion in wcs, polling first and parking on the
// channel when the CQ is empty (poll, arm, poll again, wait: no completion is
// missed between the last poll and the arming).
func (cq *CQ) Wait(ctx context.Context, wcs []WC) (int, error) {
	for {
		n, err := cq.Poll(wcs)
		if n > 0 || err != nil {
			return n, err
		}
		if err := cq.Arm(); err != nil {
			return 0, err
		}
		if n, err = cq.Poll(wcs); n > 0 || err != nil {
			return n, err
		}
		cq.waits.Add(1)
		if err := cq.WaitEvent(ctx); err != nil {
			return 0, err
		}
	}
}

// Close destroys the CQ, after any Poll in progress; it is idempotent. QPs
// using it must be closed first.
func (cq *CQ) Close() error {
	if !cq.lt.close() {
		return nil
	}
	defer cq.lt.unlock()
	if cq.unacked > 0 {
		cAckCQEvents(cq.cq, cq.unacked)
		cq.unacked = 0
	}
	return cDestroyCQ(cq.cq)
}
