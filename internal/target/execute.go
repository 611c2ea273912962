package target

import (
	"syscall"
	"time"

	"rbd/internal/stats"
	"rbd/internal/verbs"
	"rbd/internal/wire"
)

// execute runs a checked command, in the loop (inLoop) or in a worker.
func (c *conn) execute(i int, inLoop bool) {
	defer c.guard("execute")
	x := &c.ctxs[i]
	r := &x.req
	var err error
	n := 0
	push := false
	t0 := time.Now()
	if h := c.srv.cfg.BeforeIO; h != nil && (r.Op == wire.OpRead || r.Op == wire.OpWrite) {
		h(r.Op, r.Offset)
	}
	switch r.Op {
	case wire.OpRead:
		if r.Flags&wire.FlagInline != 0 {
			err = c.be.ReadAt(c.ring.RecvData(i)[:r.Length], int64(r.Offset))
			if err == nil {
				n = int(r.Length)
			}
		} else {
			err = c.be.ReadAt(c.slot(int(r.Slot))[:r.Length], int64(r.Offset))
			push = err == nil && c.version >= wire.VersionPush
		}
	case wire.OpWrite:
		var buf []byte
		if r.Flags&wire.FlagInline != 0 {
			buf = c.ring.RecvData(i)[:r.Length]
		} else {
			buf = c.slot(int(r.Slot))[:r.Length]
		}
		err = c.be.WriteAt(buf, int64(r.Offset), r.Flags&wire.FlagFUA != 0)
	case wire.OpFlush:
		err = c.be.Flush()
	case wire.OpTrim:
		err = c.be.Discard(int64(r.Offset), int64(r.Length))
	case wire.OpWriteZeroes:
		err = c.be.WriteZeroes(int64(r.Offset), int64(r.Length), r.Flags&wire.FlagNoUnmap == 0)
	case wire.OpDisconnect:
		// answered once every earlier request is: wait for them
		c.awaitQuiet()
	}
	if r.Op == wire.OpRead || r.Op == wire.OpWrite {
		// a moving average (1/8) of the backend's time per request decides
		// whether the next ones run in the loop
		d := int64(time.Since(t0))
		old := c.ioNanos.Load()
		c.ioNanos.Store(old + (d-old)/8)
	}
	st := wire.StatusOK
	if err != nil {
		st = wire.StatusOf(err)
		if st == wire.StatusIO {
			c.log.Warn("backend I/O error", "export", c.sess.export.Name(), "op", r.Op, "offset", r.Offset, "length", r.Length, "err", err)
		}
	}
	c.account(x, st)
	c.reply(i, st, n, push, inLoop)
}

// finish records a command's outcome and replies (loop only).
func (c *conn) finish(i int, st wire.Status, n int) {
	c.account(&c.ctxs[i], st)
	c.reply(i, st, n, false, true)
}

// account counts a command's outcome and frees its slot.
func (c *conn) account(x *reqCtx, st wire.Status) {
	r := &x.req
	if op, ok := statOp(r.Op); ok && c.sess != nil {
		bytes := 0
		if st == wire.StatusOK && op != stats.OpFlush {
			bytes = int(r.Length)
		}
		kind := errKind(st)
		c.sess.Stats.Done(op, bytes, x.start, kind)
		c.sess.export.Stats.Done(op, bytes, x.start, kind)
		if op == stats.OpWrite && r.Flags&wire.FlagFUA != 0 && st == wire.StatusOK {
			c.sess.Stats.AddFUAWrite()
			c.sess.export.Stats.AddFUAWrite()
		}
		if r.Flags&wire.FlagInline != 0 && st == wire.StatusOK {
			if op == stats.OpRead {
				c.sess.Stats.AddInlineRead()
				c.sess.export.Stats.AddInlineRead()
			} else if op == stats.OpWrite {
				c.sess.Stats.AddInlineWrite()
				c.sess.export.Stats.AddInlineWrite()
			}
		}
	}
	if x.slotHeld {
		x.slotHeld = false
		c.slotBusy[r.Slot].Store(false)
	}
}

func errKind(st wire.Status) stats.ErrKind {
	switch st {
	case wire.StatusOK:
		return stats.ErrNone
	case wire.StatusInval, wire.StatusBusy:
		return stats.ErrInvalid
	case wire.StatusNoSpace, wire.Status(syscall.EDQUOT):
		return stats.ErrNoSpace
	case wire.StatusROFS:
		return stats.ErrReadOnly
	case wire.StatusNotSupp:
		return stats.ErrUnsupported
	}
	return stats.ErrIO
}

// reply sends context i's reply header, with n bytes of its data area; push
// first RDMA-WRITEs a READ's data from the target slot into the initiator's
// slot of the same index (version 2), in the same chain. Deferred (in the
// loop) the reply joins the batch's post; a worker posts it at once.
func (c *conn) reply(i int, st wire.Status, n int, push, deferred bool) {
	x := &c.ctxs[i]
	rep := wire.Reply{Op: x.req.Op, Status: st, Handle: x.req.Handle, Length: uint32(n)}
	if n > 0 && x.req.Op == wire.OpRead {
		rep.Flags = wire.FlagInline
	}
	rep.Encode(c.ring.SendHeader(i))
	k := 0
	if push {
		w := &x.wrs[0]
		*w = verbs.SendWR{ID: pushBit | uint64(i), Op: verbs.OpRDMAWrite, NumSGE: 1,
			RemoteAddr: c.peerAddr + uint64(x.req.Slot)*uint64(c.slotSize), RKey: c.peerKey}
		w.SGE[0] = c.slotMR.SGE(int(x.req.Slot)*c.slotSize, int(x.req.Length))
		k = 1
	}
	w := &x.wrs[k]
	*w = verbs.SendWR{ID: sendBit | uint64(i), Op: verbs.OpSend, Flags: verbs.Signaled, NumSGE: 1}
	w.SGE[0] = c.ring.SendHeaderSGE(i)
	if c.version >= wire.VersionPush {
		w.Flags |= verbs.Solicited
	}
	if n > 0 {
		w.NumSGE = 2
		w.SGE[1] = c.ring.RecvDataSGE(i, n)
	} else if c.ep.MaxInlineData() >= wire.HeaderSize {
		w.Flags |= verbs.Inline
	}
	// The credit comes back now (the initiator may send again as soon as
	// it sees the reply); the request counts as unposted until its reply is
	// posted, so that a DISCONNECT's reply (which waits for unposted to fall
	// to 1) never overtakes it: deferred, after the batch's post (BatchEnd).
	c.outstanding.Add(-1)
	if deferred {
		c.ring.Defer(x.wrs[:k+1]...)
		c.repliesDeferred++
		return
	}
	if err := c.ring.Post(x.wrs[:k+1]); err != nil && !c.dead.Load() {
		c.drop("post send: " + err.Error())
	}
	c.posted(1)
}

// posted counts n replies as posted.
func (c *conn) posted(n int) {
	if c.unposted.Add(-int32(n)) <= 1 {
		c.signalQuiet()
	}
}
