package client

import (
	"context"
	"fmt"
	"time"

	"rbd/internal/stats"
	"rbd/internal/wire"
)

// Keepalive defaults (docs/protocol.md).
const (
	DefaultKeepAlive        = 5 * time.Second
	DefaultKeepAliveTimeout = 15 * time.Second
)

// keepalive watches a queue whose target may have stopped answering without
// the connection failing (a hung target process, a black-holed link).
func (q *Queue) keepalive() {
	idle, dead := q.sess.cfg.Queue.KeepAlive, q.sess.cfg.Queue.KeepAliveTimeout
	t := time.NewTicker(min(time.Second, idle/2))
	defer t.Stop()
	for {
		select {
		case <-q.stopped:
			return
		case <-t.C:
		}
		if q.inflight.Load() == 0 {
			q.lastReply.Store(time.Now().UnixNano()) // idle: nothing is owed
			continue
		}
		quiet := time.Since(time.Unix(0, q.lastReply.Load()))
		if quiet > idle+dead {
			q.stats.AddError(stats.ErrTimeout)
			q.drop(fmt.Sprintf("the target did not answer for %v", quiet.Round(time.Second)))
			return
		}
		if quiet > idle && q.ctlMu.TryLock() {
			s := q.control
			s.state.Store(slotHeld)
			if err := s.Submit(wire.OpKeepAlive, 0, 0, 0, func(*Slot, Completion) { q.ctlMu.Unlock() }); err != nil {
				q.ctlMu.Unlock()
			}
		}
	}
}

// control_ runs a command on the control slot and waits for it.
func (q *Queue) control_(ctx context.Context, op wire.Op, flags uint8, payload []byte) (wire.Status, []byte, error) {
	q.ctlMu.Lock()
	defer q.ctlMu.Unlock()
	s := q.control
	s.state.Store(slotHeld)
	type result struct {
		c    Completion
		data []byte
	}
	ch := make(chan result, 1)
	n := copy(s.Buf, payload)
	if n != len(payload) {
		return 0, nil, fmt.Errorf("client: control payload of %d bytes", len(payload))
	}
	done := func(_ *Slot, c Completion) {
		d := append([]byte(nil), c.Data...)
		c.Release()
		ch <- result{c, d}
	}
	if err := s.Submit(op, flags, 0, uint32(len(payload)), done); err != nil {
		return 0, nil, err
	}
	nudge := time.NewTicker(time.Second)
	defer nudge.Stop()
	for {
		select {
		case r := <-ch:
			return r.c.Status, r.data, nil
		case <-nudge.C:
			if op == wire.OpOpen {
				q.nudge()
			}
		case <-ctx.Done():
			q.drop("no reply to " + op.String())
			<-q.stopped
			return 0, nil, ctx.Err()
		}
	}
}

// nudge sends a KEEPALIVE on a free data slot. The target answers it even
// before OPEN; its arrival wakes a soft-iWARP target that left the OPEN
// unread in its socket (Linux 6.1 siw accepts, then attaches the socket).
func (q *Queue) nudge() {
	if s := q.TryAcquire(); s != nil {
		if err := s.Submit(wire.OpKeepAlive, 0, 0, 0, func(s *Slot, _ Completion) { s.Release() }); err != nil {
			s.Release()
		}
	}
}

// watchCM turns the peer's disconnect into the end of the queue.
func (q *Queue) watchCM() {
	for {
		ev, err := q.ep.NextEvent(context.Background())
		if err != nil {
			return // closed
		}
		if ev.Type.Terminal() {
			q.drop("the target disconnected (" + ev.Type.String() + ")")
			return
		}
	}
}
