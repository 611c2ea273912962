package client

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"rbd/internal/verbs"
	"rbd/internal/wire"
)

// run supervises the queue: each time its connection ends, it reconnects
// with backoff under the same session and queue index, OPENs, and sends
// again what was in flight, in submission order; it finishes the queue when
// it is closed, when reconnecting is off, when the loss outlasts
// CtrlLossTimeout, or when the target refuses the queue for good.
func (q *Queue) run(c *qconn) {
	defer close(q.stopped)
	cfg := q.sess.cfg.Queue
	for {
		<-c.stopped
		q.failControl()
		why := c.reason()
		// under the submit lock: no prepare is building a command in the
		// ring's memory (it saw the connection alive just before it died)
		q.subMu.Lock()
		c.free()
		q.subMu.Unlock()
		if q.closing.Load() || cfg.NoReconnect {
			q.finish(why, StateClosed)
			return
		}
		lost := time.Now()
		q.log.Warn("reconnecting", "reason", why, "in_flight", q.inflight.Load())
		nc, err := q.reconnect(lost, why)
		if err != nil {
			q.log.Error("connection to the target lost for good; I/O on this queue fails", "reason", err)
			q.finish(err.Error(), StateFailed)
			return
		}
		c = nc
		// close may have looked for the connection to drop before this one
		// was published (resend stores it, then this loads closing; close
		// stores closing, then loads the connection): one of the two drops it
		if q.closing.Load() {
			c.drop("closed")
		}
	}
}

// finish ends the queue: its commands fail with ESHUTDOWN.
func (q *Queue) finish(why, state string) {
	if q.closing.Load() && state == StateFailed {
		state = StateClosed
	}
	q.why.Store(why)
	q.setState(QueueState{State: state, Since: time.Now(), LastErr: why})
	q.failAll()
}

// reconnect tries until a connection is back (and returns it, published,
// with the resends posted) or the loss is beyond repair.
func (q *Queue) reconnect(lost time.Time, why string) (*qconn, error) {
	cfg := q.sess.cfg.Queue
	delay := cfg.ReconnectDelay
	for attempt := 1; ; attempt++ {
		q.setState(QueueState{State: StateReconnecting, Attempt: attempt, Since: lost, LastErr: why})
		wait := delay
		if limit := cfg.CtrlLossTimeout; limit >= 0 {
			left := time.Until(lost.Add(limit))
			if left <= 0 {
				return nil, fmt.Errorf("no connection for %v (ctrl-loss-timeout): %s", limit, why)
			}
			wait = min(wait, left)
		}
		fastAt := lost.Add(cfg.FastIOFailTimeout)
		if cfg.FastIOFailTimeout > 0 && !q.failingFast() {
			wait = min(wait, max(0, time.Until(fastAt)))
		}
		t := time.NewTimer(wait)
		select {
		case <-q.stop:
			t.Stop()
			return nil, errors.New("closed while reconnecting")
		case <-t.C:
		}
		if cfg.FastIOFailTimeout > 0 && !q.failingFast() && !time.Now().Before(fastAt) {
			q.failFastNow()
		}
		// an attempt may take up to 30 s (a target host that does not answer),
		// but never past the ctrl-loss-timeout
		timeout := 30 * time.Second
		if limit := cfg.CtrlLossTimeout; limit >= 0 {
			timeout = max(min(timeout, time.Until(lost.Add(limit))), time.Second)
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		go func() { // closing the queue ends the attempt
			select {
			case <-q.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		c, err := q.dialOpen(ctx)
		cancel()
		if err == nil {
			// connected (OPENed) before the resends go out: a resent command
			// may complete at once, and its owner then sees the queue connected
			q.setState(QueueState{State: StateConnected, Since: time.Now()})
			n := q.resend(c)
			q.stats.AddReconnect()
			q.log.Info("reconnected", "attempt", attempt, "after", time.Since(lost).Round(time.Millisecond), "resent", n)
			return c, nil
		}
		var pe *permanentError
		if errors.As(err, &pe) {
			return nil, err
		}
		why = err.Error()
		q.log.Warn("reconnect failed", "attempt", attempt, "err", err)
		delay = min(2*delay, cfg.ReconnectDelayMax)
	}
}

func (q *Queue) failingFast() bool {
	q.subMu.RLock()
	defer q.subMu.RUnlock()
	return q.failFast
}

// failFastNow fails the commands waiting for a connection (the queue has
// been reconnecting for FastIOFailTimeout), and from now on new ones at
// once, until a connection is back. Only while no connection loop runs.
func (q *Queue) failFastNow() {
	q.subMu.Lock()
	q.failFast = true
	var owed []*Slot
	for i := range q.slots {
		if s := &q.slots[i]; s != q.control && s.state.Load() == slotSent {
			owed = append(owed, s)
		}
	}
	q.subMu.Unlock()
	q.log.Warn("failing I/O while reconnecting", "after", q.sess.cfg.Queue.FastIOFailTimeout, "failed", len(owed))
	for _, s := range owed {
		q.complete(s, Completion{Status: wire.StatusShutdown, recv: -1})
	}
	q.runBatchEnd()
}

// dialOpen makes a new connection and OPENs it with the session's id and
// this queue's index; the target answers once the old connection's requests
// are done (docs/protocol.md).
func (q *Queue) dialOpen(ctx context.Context) (*qconn, error) {
	c, _, err := q.dial(ctx)
	if err != nil {
		return nil, err
	}
	c.start()
	_, err = q.open(ctx, c)
	if err == nil {
		return c, nil
	}
	c.drop("OPEN failed: " + err.Error())
	<-c.stopped
	q.failControl()
	q.subMu.Lock() // a nudge may be building on it
	c.free()
	q.subMu.Unlock()
	var ee *ExportError
	if errors.As(err, &ee) {
		switch ee.Status {
		case wire.StatusNoEnt, wire.StatusPerm, wire.StatusInval, wire.StatusROFS, wire.StatusAccess:
			return nil, &permanentError{err} // the export is gone or no longer ours
		}
	}
	var ae *AuthError
	if errors.As(err, &ae) {
		return nil, &permanentError{err} // not the target the key belongs to
	}
	return nil, err
}

// resend publishes connection c and sends every command still owed a reply
// again on it, in submission order, in one post; new commands go to c from
// here on. It returns how many it sent.
func (q *Queue) resend(c *qconn) int {
	q.subMu.Lock()
	defer q.subMu.Unlock()
	if q.failFast {
		q.failFast = false
		q.log.Info("commands are taken again", "after", "fast-io-fail-timeout")
	}
	q.conn.Store(c)
	var owed []*Slot
	for i := range q.slots {
		if s := &q.slots[i]; s != q.control && s.state.Load() == slotSent {
			owed = append(owed, s)
		}
	}
	sort.Slice(owed, func(i, j int) bool { return owed[i].seq < owed[j].seq })
	wrs := make([]verbs.SendWR, 0, 2*len(owed))
	for _, s := range owed {
		n := s.build(c)
		wrs = append(wrs, s.wrs[:n]...)
	}
	if len(wrs) > 0 {
		c.post(wrs)
		q.stats.AddResent(len(owed))
	}
	return len(owed)
}
