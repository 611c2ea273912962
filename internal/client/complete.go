package client

import (
	"errors"
	"fmt"
	"time"

	"rbd/internal/ring"
	"rbd/internal/stats"
	"rbd/internal/verbs"
	"rbd/internal/wire"
)

// loop is the connection's completion loop (ring.Run): each reply completes
// its command where it is polled, the receives of a batch are re-posted in
// one call, and the batch-end hook (rbdi's NBD reply writer) runs once per
// batch. When the connection ends, the queue's supervisor (run) takes over.
func (c *qconn) loop() {
	defer close(c.stopped)
	q := c.q
	err := c.ring.Run(ring.Loop{
		Complete: c.completion,
		Stopped:  c.dead.Load,
		Waited:   q.stats.AddCQWait,
		Polled:   q.stats.ObservePolled,
		BatchEnd: q.runBatchEnd,
		FlushFailed: func(err error) {
			if !c.dead.Load() {
				c.drop("post receive: " + err.Error())
			}
		},
	})
	if err != nil && !errors.Is(err, verbs.ErrClosed) {
		c.drop("completion queue: " + err.Error())
	}
	c.ring.Leftovers(func(wc *verbs.WC) {
		c.q.log.Warn("completion error", "err", wc.Err(), "seen", "after the connection ended")
	})
}

func (c *qconn) completion(wc *verbs.WC) {
	if wc.Status != verbs.WCSuccess {
		if wc.Status != verbs.WCFlushErr {
			c.q.log.Warn("completion error", "err", wc.Err())
		}
		c.drop("completion error: " + wc.Err().Error())
		return
	}
	i, ok := ring.RecvIndex(wc.ID)
	if !ok {
		if wc.ID&^0xffff != idSend {
			c.drop(fmt.Sprintf("completion with unknown id %#x", wc.ID))
		}
		return // a command went out
	}
	if i >= c.ring.Recvs() {
		c.drop("receive completion for unknown context")
		return
	}
	c.reply(i, int(wc.ByteLen))
}

// reply handles the target's reply in receive context i.
func (c *qconn) reply(i, n int) {
	q := c.q
	c.lastReply.Store(time.Now().UnixNano())
	if n < wire.HeaderSize {
		c.violation("reply of %d bytes", n)
		return
	}
	r, err := wire.DecodeReply(c.ring.RecvHeader(i))
	if err != nil {
		c.violation("%v", err)
		return
	}
	idx := int(r.Handle & 0xffff)
	if idx >= q.depth || r.Handle>>32 != 0 {
		c.violation("reply for unknown handle %#x", r.Handle)
		return
	}
	s := &q.slots[idx]
	if s.state.Load() != slotSent || uint16(r.Handle>>16) != s.gen || r.Op != s.req.Op {
		c.violation("reply %s for handle %#x that is not outstanding", r.Op, r.Handle)
		return
	}
	if int(r.Length) != n-wire.HeaderSize || int(r.Length) > c.ring.Area() {
		c.violation("reply announces %d data bytes, carries %d", r.Length, n-wire.HeaderSize)
		return
	}
	if s.req.Op == wire.OpOpen {
		q.complete(s, Completion{Status: r.Status, Data: c.ring.RecvData(i)[:r.Length], ring: c.ring, recv: i})
		return
	}
	c.ring.Repost(i)
	if r.Length != 0 {
		c.violation("%s reply carries %d data bytes", r.Op, r.Length)
		return
	}
	if r.Status != wire.StatusOK || s.req.Op != wire.OpRead {
		q.complete(s, Completion{Status: r.Status, recv: -1})
		return
	}
	// the target pushed the data into the slot before this reply
	q.complete(s, Completion{Status: wire.StatusOK, Data: s.Buf[:s.req.Length], recv: -1})
}

func (q *Queue) complete(s *Slot, c Completion) {
	s.state.Store(slotHeld)
	q.inflight.Add(-1)
	if op, ok := statOp(s.req.Op); ok {
		bytes := 0
		if c.Status == wire.StatusOK && op != stats.OpFlush {
			bytes = int(s.req.Length)
		}
		kind := stats.ErrNone
		if c.withdrawn { // not an error anyone sees: it is sent again
			bytes = 0
		} else if c.Status != wire.StatusOK {
			kind = stats.ErrRemote
			if c.Status == wire.StatusShutdown {
				kind = stats.ErrTransport
			}
		}
		q.stats.Done(op, bytes, s.start, kind)
	}
	if d := s.done; d != nil {
		s.done = nil
		d(s, c)
	}
}

// failAll finishes the queue's commands: every command still owed a reply
// completes with ESHUTDOWN, and none is marked sent after it (prepare).
// Only once no connection's loop runs.
func (q *Queue) failAll() {
	q.subMu.Lock()
	q.ended = true
	q.subMu.Unlock()
	for i := range q.slots {
		s := &q.slots[i]
		if s.state.Load() == slotSent {
			q.complete(s, Completion{Status: wire.StatusShutdown, recv: -1})
		}
	}
	q.runBatchEnd()
}

// failControl completes a control command (OPEN, KEEPALIVE, DISCONNECT) of a
// connection that ended: those belong to their connection and are never
// sent again. Only once that connection's loop has stopped. The queue's
// supervisor and a closing control call may both get here: the CAS lets one
// complete it.
func (q *Queue) failControl() {
	if s := q.control; s.state.CompareAndSwap(slotSent, slotHeld) {
		q.complete(s, Completion{Status: wire.StatusShutdown, recv: -1})
	}
}

func (c *qconn) violation(format string, args ...any) {
	why := "protocol violation by the target: " + fmt.Sprintf(format, args...)
	c.q.log.Error("dropping connection", "reason", why)
	c.q.stats.AddError(stats.ErrInvalid)
	c.drop(why)
}
