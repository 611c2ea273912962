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

// loop is the queue's completion loop (ring.Run): each reply completes its
// command where it is polled, the receives of a batch are re-posted in one
// call, and the batch-end hook (rbdi's NBD reply writer) runs once per batch.
func (q *Queue) loop() {
	defer close(q.stopped)
	err := q.ring.Run(ring.Loop{
		Complete: q.completion,
		Stopped:  q.dead.Load,
		Waited:   q.stats.AddCQWait,
		Polled:   q.stats.ObservePolled,
		BatchEnd: func() {
			if f := q.batchEnd.Load(); f != nil {
				(*f)()
			}
		},
		FlushFailed: func(err error) {
			if !q.dead.Load() {
				q.drop("post receive: " + err.Error())
			}
		},
	})
	if err != nil && !errors.Is(err, verbs.ErrClosed) {
		q.drop("completion queue: " + err.Error())
	}
	q.failAll()
	if f := q.batchEnd.Load(); f != nil {
		(*f)()
	}
}

func (q *Queue) completion(wc *verbs.WC) {
	if wc.Status != verbs.WCSuccess {
		if wc.Status != verbs.WCFlushErr && !q.dead.Load() {
			q.log.Warn("completion error", "err", wc.Err())
		}
		q.drop("completion error: " + wc.Err().Error())
		return
	}
	i, ok := ring.RecvIndex(wc.ID)
	if !ok {
		if wc.ID&^0xffff != idSend {
			q.drop(fmt.Sprintf("completion with unknown id %#x", wc.ID))
		}
		return // a command went out
	}
	if i >= q.ring.Recvs() {
		q.drop("receive completion for unknown context")
		return
	}
	q.reply(i, int(wc.ByteLen))
}

// reply handles the target's reply in receive context i.
func (q *Queue) reply(i, n int) {
	q.lastReply.Store(time.Now().UnixNano())
	if n < wire.HeaderSize {
		q.violation("reply of %d bytes", n)
		return
	}
	r, err := wire.DecodeReply(q.ring.RecvHeader(i))
	if err != nil {
		q.violation("%v", err)
		return
	}
	idx := int(r.Handle & 0xffff)
	if idx >= q.depth || r.Handle>>32 != 0 {
		q.violation("reply for unknown handle %#x", r.Handle)
		return
	}
	s := &q.slots[idx]
	if s.state.Load() != slotSent || uint16(r.Handle>>16) != s.gen || r.Op != s.req.Op {
		q.violation("reply %s for handle %#x that is not outstanding", r.Op, r.Handle)
		return
	}
	if int(r.Length) != n-wire.HeaderSize || int(r.Length) > q.ring.Area() {
		q.violation("reply announces %d data bytes, carries %d", r.Length, n-wire.HeaderSize)
		return
	}
	if s.req.Op == wire.OpOpen {
		q.complete(s, Completion{Status: r.Status, Data: q.ring.RecvData(i)[:r.Length], q: q, recv: i})
		return
	}
	q.ring.Repost(i)
	if r.Length != 0 {
		q.violation("%s reply carries %d data bytes", r.Op, r.Length)
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
	if c.q == nil {
		c.q = q
	}
	s.state.Store(slotHeld)
	q.inflight.Add(-1)
	if op, ok := statOp(s.req.Op); ok {
		bytes := 0
		if c.Status == wire.StatusOK && op != stats.OpFlush {
			bytes = int(s.req.Length)
		}
		kind := stats.ErrNone
		if c.Status != wire.StatusOK {
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

// failAll completes every command still in flight with ESHUTDOWN once the
// connection is gone; no command is marked sent after it (prepare).
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
}

func (q *Queue) violation(format string, args ...any) {
	why := "protocol violation by the target: " + fmt.Sprintf(format, args...)
	q.log.Error("dropping connection", "reason", why)
	q.stats.AddError(stats.ErrInvalid)
	q.drop(why)
}
