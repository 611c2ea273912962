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

// keepalive watches a connection whose target may have stopped answering
// without the connection failing (a hung target process, a black-holed
// link).
func (c *qconn) keepalive() {
	q := c.q
	idle, dead := q.sess.cfg.Queue.KeepAlive, q.sess.cfg.Queue.KeepAliveTimeout
	t := time.NewTicker(min(time.Second, idle/2))
	defer t.Stop()
	// lastIdle: the last tick that found nothing outstanding. The target
	// owes nothing before it, so a queue that turns busy after a quiet
	// spell counts the target's silence from there, not from its last
	// reply (a late tick on a loaded machine must not kill it at once).
	var lastIdle time.Time
	for {
		select {
		case <-c.stopped:
			return
		case <-t.C:
		}
		heard := time.Unix(0, c.lastReply.Load())
		if q.inflight.Load() == 0 {
			lastIdle = time.Now()
			// idle: nothing is owed, but a heartbeat every KeepAlive tells
			// the target that this initiator lives (it frees the sessions of
			// silent ones), and this side that the target does
			if time.Since(heard) > idle && q.ctlMu.TryLock() {
				c.lastReply.Store(time.Now().UnixNano())
				s := q.control
				s.state.Store(slotHeld)
				if err := c.submitOn(s, wire.OpKeepAlive, 0, func(*Slot, Completion) { q.ctlMu.Unlock() }); err != nil {
					q.ctlMu.Unlock()
				}
			}
			continue
		}
		if lastIdle.After(heard) {
			heard = lastIdle
		}
		quiet := time.Since(heard)
		if quiet > idle+dead {
			q.stats.AddError(stats.ErrTimeout)
			c.drop(fmt.Sprintf("the target did not answer for %v", quiet.Round(time.Second)))
			return
		}
		if quiet > idle && q.ctlMu.TryLock() {
			s := q.control
			s.state.Store(slotHeld)
			if err := c.submitOn(s, wire.OpKeepAlive, 0, func(*Slot, Completion) { q.ctlMu.Unlock() }); err != nil {
				q.ctlMu.Unlock()
			}
		}
	}
}

// submitOn sends a control command on connection c itself (not the queue's
// current one): OPEN of a connection being set up, KEEPALIVE of one being
// watched.
func (c *qconn) submitOn(s *Slot, op wire.Op, length uint32, done func(*Slot, Completion)) error {
	_, n, err := s.prepare(c, op, 0, 0, length, done)
	if err != nil {
		return err
	}
	if n == 0 { // c is dead already: nothing will answer
		c.q.complete(s, Completion{Status: wire.StatusShutdown, recv: -1})
		return nil
	}
	c.post(s.wrs[:n])
	return nil
}

// control_ runs a command on the control slot over connection c and waits
// for it.
func (q *Queue) control_(ctx context.Context, c *qconn, op wire.Op, flags uint8, payload []byte) (wire.Status, []byte, error) {
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
	if err := c.submitOn(s, op, uint32(len(payload)), done); err != nil {
		return 0, nil, err
	}
	nudge := time.NewTicker(time.Second)
	defer nudge.Stop()
	for {
		select {
		case r := <-ch:
			if r.c.Status == wire.StatusShutdown && c.dead.Load() {
				return 0, nil, fmt.Errorf("%s: the connection ended: %s", op, c.reason())
			}
			return r.c.Status, r.data, nil
		case <-c.stopped:
			// the loop is gone: nothing else completes the control slot
			q.failControl()
		case <-nudge.C:
			if op == wire.OpOpen {
				c.nudge()
			}
		case <-ctx.Done():
			c.drop("no reply to " + op.String())
			<-c.stopped
			q.failControl()
			<-ch
			return 0, nil, ctx.Err()
		}
	}
}

// nudge sends a KEEPALIVE on a free data slot. The target answers it even
// before OPEN; its arrival wakes a soft-iWARP target that left the OPEN
// unread in its socket (Linux 6.1 siw accepts, then attaches the socket).
func (c *qconn) nudge() {
	if s := c.q.TryAcquire(); s != nil {
		if err := c.submitOn(s, wire.OpKeepAlive, 0, func(s *Slot, _ Completion) { s.Release() }); err != nil {
			s.Release()
		}
	}
}

// watchCM turns the peer's disconnect into the end of the connection.
func (c *qconn) watchCM() {
	for {
		ev, err := c.ep.NextEvent(context.Background())
		if err != nil {
			return // closed
		}
		if ev.Type.Terminal() {
			c.drop("the target disconnected (" + ev.Type.String() + ")")
			return
		}
	}
}
