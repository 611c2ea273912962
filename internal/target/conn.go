package target

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"rbd/internal/backend"
	"rbd/internal/stats"
	"rbd/internal/verbs"
	"rbd/internal/wire"
)

// conn is one RC connection of a session. Its poller goroutine owns the CQ
// and the per-message contexts between a receive and the dispatch; workers
// own a context while its backend I/O runs; a context is free again (its
// receive re-posted) when its reply's send completes.
type conn struct {
	srv  *Server
	log  *slog.Logger
	peer netip.AddrPort
	ep   *verbs.Endpoint

	depth, slotSize, inline, area int
	nctx                          int // message contexts: 2 × depth
	slots, msgs                   *verbs.Buffer
	slotMR, msgMR                 *verbs.MR
	slotBusy                      []atomic.Bool
	ctxs                          []reqCtx

	work        chan int
	workers     sync.WaitGroup
	outstanding atomic.Int32

	// set by the poller when OPEN succeeds
	sess  *session
	be    *backend.Backend
	queue uint16
	caps  uint32

	dropOnce sync.Once
	dead     atomic.Bool
	why      atomic.Value // string: why the connection was dropped
}

type reqCtx struct {
	req      wire.Request
	payload  int
	start    stats.Stamp
	slotHeld bool // the command owns slot req.Slot until its reply
}

const sendBit = 1 << 32

func newConn(s *Server, req *verbs.ConnRequest, depth, slotSize, inline int) (*conn, error) {
	c := &conn{srv: s, peer: req.ID.RemoteAddr(), depth: depth, slotSize: slotSize, inline: inline, nctx: 2 * depth}
	c.log = s.log.With("peer", c.peer)
	c.area = max(wire.MinDataArea, (inline+4095)/4096*4096)
	var err error
	c.ep, err = verbs.NewEndpoint(req.ID, verbs.EndpointConfig{QP: verbs.QPCaps{
		MaxSendWR: c.nctx + 4, MaxRecvWR: c.nctx, MaxSendSGE: 2, MaxRecvSGE: 2, MaxInlineData: wire.HeaderSize}})
	if err != nil {
		return nil, err
	}
	// on failure the request's identifier stays the caller's, to reject
	fail := func(err error) (*conn, error) {
		c.ep.ID = nil
		c.free()
		return nil, err
	}
	if c.slots, err = verbs.AllocBuffer(depth * slotSize); err != nil {
		return fail(err)
	}
	if c.slotMR, err = c.ep.Register(c.slots, verbs.AccessLocalWrite|verbs.AccessRemoteWrite|verbs.AccessRemoteRead); err != nil {
		return fail(err)
	}
	if c.msgs, err = verbs.AllocBuffer(c.nctx * (c.area + 2*wire.HeaderSize)); err != nil {
		return fail(err)
	}
	if c.msgMR, err = c.ep.Register(c.msgs, verbs.AccessLocalWrite); err != nil {
		return fail(err)
	}
	c.slotBusy = make([]atomic.Bool, depth)
	c.ctxs = make([]reqCtx, c.nctx)
	c.work = make(chan int, c.nctx)
	wrs := make([]verbs.RecvWR, c.nctx)
	for i := range wrs {
		wrs[i] = c.recvWR(i)
	}
	if _, err := c.ep.QP.PostRecv(wrs); err != nil {
		return fail(err)
	}
	return c, nil
}

// Message buffer layout: nctx data areas (page-aligned), then per context a
// request header and a reply header.
func (c *conn) dataOff(i int) int  { return i * c.area }
func (c *conn) hdrOff(i int) int   { return c.nctx*c.area + i*2*wire.HeaderSize }
func (c *conn) replyOff(i int) int { return c.hdrOff(i) + wire.HeaderSize }
func (c *conn) data(i int) []byte  { return c.msgMR.Bytes()[c.dataOff(i) : c.dataOff(i)+c.area] }
func (c *conn) header(i int) []byte {
	return c.msgMR.Bytes()[c.hdrOff(i) : c.hdrOff(i)+wire.HeaderSize]
}
func (c *conn) slot(s int) []byte {
	return c.slotMR.Bytes()[s*c.slotSize : (s+1)*c.slotSize]
}

func (c *conn) recvWR(i int) verbs.RecvWR {
	w := verbs.RecvWR{ID: uint64(i), NumSGE: 2}
	w.SGE[0] = c.msgMR.SGE(c.hdrOff(i), wire.HeaderSize)
	w.SGE[1] = c.msgMR.SGE(c.dataOff(i), c.area)
	return w
}

// free releases everything; only after the poller and the workers stopped.
func (c *conn) free() {
	if c.ep != nil {
		c.ep.Close()
	}
	for _, b := range []*verbs.Buffer{c.slots, c.msgs} {
		if b != nil {
			b.Close()
		}
	}
}

// drop ends the connection: the QP is flushed and the poller wakes up. It may
// be called from any goroutine, any number of times. It is the only caller of
// Disconnect, and dead is set only once Disconnect returned: the poller stops
// (and free destroys the QP) only after that, because librdmacm's
// rdma_disconnect uses the QP that rdma_destroy_qp frees.
func (c *conn) drop(why string) {
	c.dropOnce.Do(func() {
		c.why.Store(why)
		c.ep.ID.Disconnect()
		c.dead.Store(true)
		c.ep.Wakeup()
	})
}

// violation drops a connection whose peer broke the protocol.
func (c *conn) violation(format string, args ...any) {
	why := "protocol violation: " + fmt.Sprintf(format, args...)
	c.log.Warn("dropping connection", "reason", why)
	if c.sess != nil {
		c.sess.Stats.AddError(stats.ErrInvalid)
		c.sess.export.Stats.AddError(stats.ErrInvalid)
	}
	c.drop(why)
}

// serve runs the connection until it ends, then frees it.
func (c *conn) serve(ctx context.Context) {
	workers := c.srv.cfg.Workers
	if workers <= 0 {
		workers = min(c.depth, maxWorkers)
	}
	for range workers {
		c.workers.Add(1)
		go func() {
			defer c.workers.Done()
			for i := range c.work {
				c.execute(i)
			}
		}()
	}
	go func() { // the peer's disconnect, or the server's end
		evctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			<-evctx.Done()
			if ctx.Err() != nil {
				c.drop("target shutting down")
			}
		}()
		// not WaitDisconnect: its own Disconnect could race with free
		for {
			ev, err := c.ep.ID.NextEvent(evctx)
			if err != nil {
				return
			}
			if ev.Type.Terminal() {
				c.drop("initiator disconnected")
				return
			}
		}
	}()
	c.poll()
	close(c.work)
	c.workers.Wait()
	c.srv.leave(c)
	why, _ := c.why.Load().(string)
	c.log.Debug("connection closed", "reason", why)
	c.free()
}

func (c *conn) poll() {
	wcs := make([]verbs.WC, 32)
	repost := make([]verbs.RecvWR, 0, 32)
	for !c.dead.Load() {
		w := c.ep.CQ.Waits()
		n, err := c.ep.CQ.Wait(context.Background(), wcs)
		if c.sess != nil && c.ep.CQ.Waits() != w {
			c.sess.Stats.AddCQWait()
			c.sess.export.Stats.AddCQWait()
		}
		if err != nil {
			if !errors.Is(err, verbs.ErrClosed) {
				c.drop("completion queue: " + err.Error())
			}
			return
		}
		if c.sess != nil {
			c.sess.Stats.ObservePolled(n)
		}
		repost = repost[:0]
		for k := range n {
			wc := &wcs[k]
			if wc.Status != verbs.WCSuccess {
				if wc.Status != verbs.WCFlushErr {
					c.log.Warn("completion error", "err", wc.Err())
				}
				c.drop("completion error: " + wc.Err().Error())
				continue
			}
			if c.dead.Load() {
				continue
			}
			i := int(wc.ID &^ sendBit)
			if i < 0 || i >= c.nctx {
				c.drop(fmt.Sprintf("completion for unknown context %#x", wc.ID))
				continue
			}
			if wc.ID&sendBit != 0 { // a reply went out: the context is free
				repost = append(repost, c.recvWR(i))
				continue
			}
			c.received(i, int(wc.ByteLen))
		}
		if len(repost) > 0 && !c.dead.Load() {
			if _, err := c.ep.QP.PostRecv(repost); err != nil {
				c.drop("post receive: " + err.Error())
			}
		}
	}
}

// received handles a request that arrived in context i.
func (c *conn) received(i, n int) {
	defer c.guard("received")
	if n < wire.HeaderSize {
		c.violation("message of %d bytes", n)
		return
	}
	r, err := wire.DecodeRequest(c.header(i))
	if err != nil {
		c.violation("%v", err)
		return
	}
	if int(c.outstanding.Add(1)) > c.depth {
		c.violation("more than %d requests outstanding", c.depth)
		return
	}
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
	default:
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

// openRequest binds the connection to a session (OPEN, in the poller, so that
// no request of this connection runs before it).
func (c *conn) openRequest(i int) {
	x := &c.ctxs[i]
	if x.payload != int(x.req.Length) {
		c.violation("OPEN announces %d payload bytes, carries %d", x.req.Length, x.payload)
		return
	}
	o, err := wire.DecodeOpen(c.data(i)[:x.payload])
	if err != nil {
		c.violation("%v", err)
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
		c.sess, c.be, c.caps = sess, be, caps
		rep = wire.OpenReply{Size: uint64(be.Size()), LogicalBlockSize: uint32(be.LogicalBlockSize()),
			PhysicalBlockSize: uint32(be.PhysicalBlockSize()), Caps: caps, Session: sess.id}
	}
	n, _ := rep.Encode(c.data(i))
	c.reply(i, st, n)
}

// guard turns a panic while handling a peer's message into the end of that
// connection: a bug must not take the other sessions down with it.
func (c *conn) guard(where string) {
	if p := recover(); p != nil {
		c.log.Error("internal error; dropping the connection", "where", where, "panic", p, "stack", string(debug.Stack()))
		c.drop(fmt.Sprintf("internal error in %s: %v", where, p))
	}
}

// execute runs a checked command in a worker.
func (c *conn) execute(i int) {
	defer c.guard("execute")
	x := &c.ctxs[i]
	r := &x.req
	var err error
	n := 0
	switch r.Op {
	case wire.OpRead:
		if r.Flags&wire.FlagInline != 0 {
			err = c.be.ReadAt(c.data(i)[:r.Length], int64(r.Offset))
			if err == nil {
				n = int(r.Length)
			}
		} else {
			err = c.be.ReadAt(c.slot(int(r.Slot))[:r.Length], int64(r.Offset))
		}
	case wire.OpWrite:
		var buf []byte
		if r.Flags&wire.FlagInline != 0 {
			buf = c.data(i)[:r.Length]
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
		for c.outstanding.Load() > 1 && !c.dead.Load() {
			time.Sleep(100 * time.Microsecond)
		}
	}
	st := wire.StatusOK
	if err != nil {
		st = wire.StatusOf(err)
		if st == wire.StatusIO {
			c.log.Warn("backend I/O error", "export", c.sess.export.Name(), "op", r.Op, "offset", r.Offset, "length", r.Length, "err", err)
		}
	}
	c.finish(i, st, n)
}

// finish records a command's outcome and replies.
func (c *conn) finish(i int, st wire.Status, n int) {
	x := &c.ctxs[i]
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
	c.reply(i, st, n)
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

// reply sends context i's reply header, with n bytes of its data area.
func (c *conn) reply(i int, st wire.Status, n int) {
	x := &c.ctxs[i]
	rep := wire.Reply{Op: x.req.Op, Status: st, Handle: x.req.Handle, Length: uint32(n)}
	if n > 0 && x.req.Op == wire.OpRead {
		rep.Flags = wire.FlagInline
	}
	rep.Encode(c.msgMR.Bytes()[c.replyOff(i):])
	w := verbs.SendWR{ID: sendBit | uint64(i), Op: verbs.OpSend, Flags: verbs.Signaled, NumSGE: 1}
	w.SGE[0] = c.msgMR.SGE(c.replyOff(i), wire.HeaderSize)
	if n > 0 {
		w.NumSGE = 2
		w.SGE[1] = c.msgMR.SGE(c.dataOff(i), n)
	} else if c.ep.QP.Caps.MaxInlineData >= wire.HeaderSize {
		w.Flags |= verbs.Inline
	}
	c.outstanding.Add(-1)
	if _, err := c.ep.QP.PostSend([]verbs.SendWR{w}); err != nil && !c.dead.Load() {
		c.drop("post send: " + err.Error())
	}
}
