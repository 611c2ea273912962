package target

import (
	"errors"
	"fmt"
	"time"

	"rbd/internal/auth"
	"rbd/internal/ring"
	"rbd/internal/stats"
	"rbd/internal/verbs"
	"rbd/internal/wire"
)

// loop is the connection's completion loop (ring.Run): requests are handled
// where they are polled, and the replies of a batch go out in one post.
func (c *conn) loop() {
	err := c.ring.Run(ring.Loop{
		Complete: c.completion,
		Stopped:  c.dead.Load,
		Waited: func() {
			if c.sess != nil {
				c.sess.Stats.AddCQWait()
				c.sess.export.Stats.AddCQWait()
			}
		},
		Polled: func(n int) {
			if c.sess != nil {
				c.sess.Stats.ObservePolled(n)
			}
		},
		FlushFailed: func(err error) {
			if !c.dead.Load() {
				c.drop("post: " + err.Error())
			}
		},
		BatchEnd: func() {
			if n := c.repliesDeferred; n > 0 {
				c.repliesDeferred = 0
				c.posted(n)
			}
		},
	})
	if err != nil && !errors.Is(err, verbs.ErrClosed) {
		c.drop("completion queue: " + err.Error())
	}
	c.ring.Leftovers(func(wc *verbs.WC) {
		c.log.Warn("completion error", "err", wc.Err(), "seen", "after the connection ended")
	})
}

func (c *conn) completion(wc *verbs.WC) {
	if wc.Status != verbs.WCSuccess {
		if wc.Status != verbs.WCFlushErr {
			c.log.Warn("completion error", "err", wc.Err())
		}
		c.drop("completion error: " + wc.Err().Error())
		return
	}
	if c.dead.Load() {
		return
	}
	if i, ok := ring.RecvIndex(wc.ID); ok {
		if i >= c.nctx {
			c.drop(fmt.Sprintf("receive completion for unknown context %d", i))
			return
		}
		c.received(i, int(wc.ByteLen))
		return
	}
	i := int(wc.ID & 0xffffffff)
	if wc.ID&^0xffffffff != sendBit || i >= c.nctx {
		c.drop(fmt.Sprintf("completion for unknown context %#x", wc.ID))
		return
	}
	c.ring.Repost(i) // a reply went out: its context is free
}

// received handles a request that arrived in context i.
func (c *conn) received(i, n int) {
	defer c.guard("received")
	if n < wire.HeaderSize {
		c.violation("message of %d bytes", n)
		return
	}
	r, err := wire.DecodeRequest(c.ring.RecvHeader(i))
	if err != nil {
		c.violation("%v", err)
		return
	}
	c.lastMsg.Store(time.Now().UnixNano())
	if c.draining.Load() {
		return // the target stops: unanswered, sent again after the reconnect
	}
	if int(c.outstanding.Add(1)) > c.depth {
		c.violation("more than %d requests outstanding", c.depth)
		return
	}
	c.unposted.Add(1)
	x := &c.ctxs[i]
	x.req, x.payload = r, n-wire.HeaderSize
	if c.sess == nil {
		// DISCONNECT after a refused OPEN; KEEPALIVE while an OPEN waits (the
		// initiator's nudge: see client.Queue.open)
		if r.Op == wire.OpDisconnect || r.Op == wire.OpKeepAlive {
			c.finish(i, wire.StatusOK, 0)
			return
		}
		if r.Op != wire.OpOpen {
			c.violation("%s before OPEN", r.Op)
			return
		}
		c.openRequest(i)
		return
	}
	if r.Op == wire.OpOpen {
		c.violation("second OPEN")
		return
	}
	op, isIO := statOp(r.Op)
	if isIO {
		x.start = c.sess.Stats.Start(op)
		c.sess.export.Stats.Start(op)
	}
	x.slotHeld = false
	if st := c.check(x); st != wire.StatusOK {
		c.finish(i, st, 0)
		return
	}
	switch r.Op {
	case wire.OpKeepAlive:
		c.finish(i, wire.StatusOK, 0)
	case wire.OpRead, wire.OpWrite:
		if c.inlineIO > 0 && c.ioNanos.Load() < int64(c.inlineIO) {
			c.execute(i, true)
			return
		}
		c.work <- i
	default:
		// FLUSH, TRIM and WRITE_ZEROES may take long and DISCONNECT waits:
		// never in the loop, which must go on answering (KEEPALIVE above)
		c.work <- i
	}
}

func statOp(o wire.Op) (stats.Op, bool) {
	switch o {
	case wire.OpRead:
		return stats.OpRead, true
	case wire.OpWrite:
		return stats.OpWrite, true
	case wire.OpFlush:
		return stats.OpFlush, true
	case wire.OpTrim:
		return stats.OpTrim, true
	case wire.OpWriteZeroes:
		return stats.OpWriteZeroes, true
	}
	return 0, false
}

// check validates a command against the export and the connection's limits.
func (c *conn) check(x *reqCtx) wire.Status {
	r, payload := &x.req, x.payload
	inline := r.Flags&wire.FlagInline != 0
	size := uint64(c.be.Size())
	lbs := uint64(c.be.LogicalBlockSize())
	ro := c.caps&wire.CapReadOnly != 0
	inRange := func() bool {
		end := r.Offset + uint64(r.Length)
		return end >= r.Offset && end <= size
	}
	aligned := r.Offset%lbs == 0 && uint64(r.Length)%lbs == 0 && r.Length > 0
	switch r.Op {
	case wire.OpRead, wire.OpWrite:
		if r.Op == wire.OpWrite && ro {
			return wire.StatusROFS
		}
		if inline {
			if int(r.Length) > c.inline {
				return wire.StatusInval
			}
			if r.Op == wire.OpWrite && payload != int(r.Length) {
				return wire.StatusInval
			}
		} else {
			if int(r.Slot) >= c.depth || int(r.Length) > c.slotSize {
				return wire.StatusInval
			}
		}
		if !aligned || !inRange() {
			if aligned && r.Op == wire.OpWrite {
				return wire.StatusNoSpace
			}
			return wire.StatusInval
		}
		if !inline {
			if c.slotBusy[r.Slot].Swap(true) {
				return wire.StatusBusy // the initiator reused a slot in use
			}
			x.slotHeld = true
		}
	case wire.OpTrim, wire.OpWriteZeroes:
		if ro {
			return wire.StatusROFS
		}
		if r.Op == wire.OpTrim && c.caps&wire.CapTrim == 0 {
			return wire.StatusNotSupp
		}
		if !aligned {
			return wire.StatusInval
		}
		if !inRange() {
			return wire.StatusNoSpace
		}
	case wire.OpFlush, wire.OpKeepAlive, wire.OpDisconnect:
	}
	return wire.StatusOK
}

// openRequest binds the connection to a session (OPEN, in the loop, so that
// no request of this connection runs before it).
func (c *conn) openRequest(i int) {
	x := &c.ctxs[i]
	if x.payload != int(x.req.Length) {
		c.violation("OPEN announces %d payload bytes, carries %d", x.req.Length, x.payload)
		return
	}
	o, err := wire.DecodeOpen(c.ring.RecvData(i)[:x.payload])
	if err != nil {
		c.violation("%v", err)
		return
	}
	if o.Flags&wire.OpenAuth != 0 && c.version < wire.VersionAuth {
		c.violation("authenticated OPEN on a version-%d connection", c.version)
		return
	}
	if c.openRefused {
		c.violation("OPEN again after an authentication refusal")
		return
	}
	var rep wire.OpenReply
	st := wire.StatusOK
	sess, err := c.srv.open(c, o)
	if err != nil {
		var oe *openError
		if errors.As(err, &oe) {
			st = oe.status
		} else {
			st = wire.StatusOf(err)
		}
		rep.Message = err.Error()
		c.log.Info("OPEN refused", "export", o.ExportName, "status", st, "reason", err)
		if st == wire.StatusAccess {
			// one challenge, one answer: the initiator gets the reply, then
			// the connection goes
			c.openRefused = true
			time.AfterFunc(time.Second, func() { c.drop("OPEN refused: " + err.Error()) })
		}
	} else {
		be := sess.export.be
		caps := wire.CapFlush | wire.CapFUA | wire.CapWriteZeroes | wire.CapMultiConn
		if be.CanDiscard() {
			caps |= wire.CapTrim
		}
		if sess.readOnly {
			caps |= wire.CapReadOnly
		}
		if be.Rotational() {
			caps |= wire.CapRotational
		}
		// Fencing: the replaced connection's requests (a write stalled in
		// its backend I/O) finish before the initiator may resend them here.
		if !c.srv.fenced(c, sess) {
			st = wire.StatusBusy
			rep.Message = fmt.Sprintf("the previous connection of queue %d still has I/O in progress on the target; try again", o.Queue)
			c.log.Warn("OPEN refused", "export", o.ExportName, "status", st, "reason", rep.Message)
		} else {
			c.sess, c.be, c.caps = sess, be, caps
			c.opened.Store(true)
			c.srv.handshakeDone(c.claim)
			rep = wire.OpenReply{Size: uint64(be.Size()), LogicalBlockSize: uint32(be.LogicalBlockSize()),
				PhysicalBlockSize: uint32(be.PhysicalBlockSize()), Caps: caps, Session: sess.id}
			if c.authed {
				// the target proves it holds the key too, over this
				// connection's nonces and the reply's geometry
				rep.Flags = wire.OpenReplyAuth
				buf := make([]byte, wire.OpenReplyProved+64)
				n, _ := rep.Encode(buf)
				rep.MAC = auth.TargetProof(sess.export.cfg.Key, c.nonce, &o, buf[:n])
			}
		}
	}
	n, _ := rep.Encode(c.ring.RecvData(i))
	c.reply(i, st, n, false, true)
}
