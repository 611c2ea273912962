package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"rbd/internal/stats"
	"rbd/internal/verbs"
	"rbd/internal/wire"
)

// ErrClosed is returned by a closed queue or session.
var ErrClosed = errors.New("client: closed")

// QueueConfig are the wishes a queue connects with; the target may grant less.
type QueueConfig struct {
	Depth  int // commands (and slots) in flight
	MaxIO  int // slot size, bytes
	Inline int // inline data, bytes (0: none)
	// KeepAlive: a KEEPALIVE goes out when requests are outstanding and
	// nothing came back for this long (default 5 s); KeepAliveTimeout later
	// still (default 15 s) the connection is declared dead.
	KeepAlive, KeepAliveTimeout time.Duration
}

// Completion is the outcome of a command, handed to its Done function in the
// queue's poller goroutine (Done must not block).
type Completion struct {
	Status wire.Status
	// Data is where a READ's data is: the slot's buffer, or the receive buffer
	// of an inline reply. An inline Data is valid until Release.
	Data []byte
	q    *Queue
	recv int // receive context holding Data, or -1
}

// Release gives an inline reply's receive buffer back to the queue. It must be
// called once for every successful READ completion (a no-op when the data is
// in the slot).
func (c *Completion) Release() {
	if c.recv >= 0 && c.q != nil {
		c.q.repostRecv(c.recv)
		c.recv = -1
	}
}

// Slot is a command context of a queue: a registered local buffer of the slot
// size and the target slot of the same index. A slot belongs to its holder
// between Acquire and Release.
type Slot struct {
	q     *Queue
	index int
	// Buf is the slot's local buffer: fill it before a WRITE; a READ's data
	// lands here unless it came inline.
	Buf []byte

	// command in flight
	state  atomic.Int32
	gen    uint16
	req    wire.Request
	done   func(*Slot, Completion)
	start  stats.Stamp
	inline bool
}

// Index is the slot's number in its queue.
func (s *Slot) Index() int { return s.index }

// Queue reports which queue the slot belongs to.
func (s *Slot) Queue() *Queue { return s.q }

// Slot states.
const (
	slotFree = iota
	slotHeld
	slotSent    // command sent, waiting for the reply
	slotReading // reply came, RDMA READ of the data in flight
)

// Queue is one RC connection of a session: credits, slots, the CQ poller.
// Acquire, Submit and Release are safe for concurrent use.
type Queue struct {
	sess  *Session
	index int
	log   *slog.Logger
	ep    *verbs.Endpoint
	peer  netip.AddrPort

	depth, slotSize, inline, area int
	remoteAddr                    uint64
	remoteKey                     uint32

	local, msgs    *verbs.Buffer
	localMR, msgMR *verbs.MR
	slots          []Slot
	free           chan int
	control        *Slot // the last slot: OPEN, KEEPALIVE, DISCONNECT
	ctlMu          sync.Mutex
	nrecv          int

	lastReply atomic.Int64 // unix nanos of the last reply
	inflight  atomic.Int32
	dead      atomic.Bool
	dropOnce  sync.Once
	why       atomic.Value
	stopped   chan struct{}
	stats     *stats.Counters
}

// Work request IDs: the kind in the upper bits, the context below.
const (
	idRecv = 1 << 40
	idSend = 2 << 40
	idRead = 3 << 40
	idMask = 0xffff
)

// dialQueue connects one queue and OPENs it on the export.
func dialQueue(ctx context.Context, s *Session, index int) (*Queue, error) {
	cfg := s.cfg
	q := &Queue{sess: s, index: index, log: s.log.With("queue", index), stopped: make(chan struct{}), stats: s.Stats}
	id, err := verbs.Resolve(ctx, cfg.Source, cfg.Target)
	if err != nil {
		return nil, err
	}
	// the receive side: 2 × depth contexts (header + data area each)
	want := cfg.Queue
	q.area = max(wire.MinDataArea, (want.Inline+4095)/4096*4096)
	q.nrecv = 2 * want.Depth
	q.ep, err = verbs.NewEndpoint(id, verbs.EndpointConfig{QP: verbs.QPCaps{
		MaxSendWR: 2*want.Depth + 8, MaxRecvWR: q.nrecv, MaxSendSGE: 2, MaxRecvSGE: 2, MaxInlineData: wire.HeaderSize}})
	if err != nil {
		id.Close()
		return nil, err
	}
	if q.msgs, err = verbs.AllocBuffer(q.nrecv*(q.area+wire.HeaderSize) + want.Depth*wire.HeaderSize); err != nil {
		q.free_()
		return nil, err
	}
	if q.msgMR, err = q.ep.Register(q.msgs, verbs.AccessLocalWrite); err != nil {
		q.free_()
		return nil, err
	}
	wrs := make([]verbs.RecvWR, q.nrecv)
	for i := range wrs {
		wrs[i] = q.recvWR(i)
	}
	if _, err := q.ep.QP.PostRecv(wrs); err != nil {
		q.free_()
		return nil, err
	}
	pd := make([]byte, wire.ConnectSize)
	(&wire.Connect{MinVersion: wire.MinVersion, MaxVersion: wire.MaxVersion, QueueDepth: uint16(want.Depth),
		MaxIO: uint32(want.MaxIO), InlineMax: uint32(want.Inline)}).Encode(pd)
	ev, err := q.ep.ID.Connect(ctx, verbs.ConnParam{PrivateData: pd, InitiatorDepth: 16, ResponderResources: 0, RetryCount: 7, RNRRetryCount: 7})
	if err != nil {
		q.free_()
		return nil, connectError(cfg.Target, err)
	}
	acc, err := wire.DecodeAccept(ev.PrivateData)
	if err != nil {
		q.free_()
		return nil, fmt.Errorf("target %s answered with bad accept data: %w", cfg.Target, err)
	}
	if int(acc.Depth) > want.Depth || int(acc.SlotSize) > want.MaxIO || int(acc.InlineMax) > want.Inline || acc.Depth < 2 {
		q.free_()
		return nil, fmt.Errorf("target %s granted %d slots of %d bytes, inline %d: not what was asked", cfg.Target, acc.Depth, acc.SlotSize, acc.InlineMax)
	}
	q.depth, q.slotSize, q.inline = int(acc.Depth), int(acc.SlotSize), int(acc.InlineMax)
	q.remoteAddr, q.remoteKey = acc.SlotAddr, acc.SlotRKey
	q.peer = q.ep.ID.RemoteAddr()
	// local slots: the RDMA WRITE source and the RDMA READ sink (iWARP wants
	// remote-write access on a READ sink)
	if q.local, err = verbs.AllocBuffer(q.depth * q.slotSize); err != nil {
		q.free_()
		return nil, err
	}
	if q.localMR, err = q.ep.Register(q.local, verbs.AccessReadSink); err != nil {
		q.free_()
		return nil, err
	}
	q.slots = make([]Slot, q.depth)
	q.free = make(chan int, q.depth)
	for i := range q.slots {
		q.slots[i] = Slot{q: q, index: i, Buf: q.localMR.Bytes()[i*q.slotSize : (i+1)*q.slotSize]}
		if i < q.depth-1 {
			q.free <- i
		}
	}
	q.control = &q.slots[q.depth-1]
	q.lastReply.Store(time.Now().UnixNano())
	go q.poll()
	go q.keepalive()
	go q.watchCM()
	return q, nil
}

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

// Depth is the number of data slots (the granted depth less the control slot).
func (q *Queue) Depth() int { return q.depth - 1 }

// SlotSize is the largest READ or WRITE of one command.
func (q *Queue) SlotSize() int { return q.slotSize }

// Inline is the largest READ or WRITE that travels in the messages.
func (q *Queue) Inline() int { return q.inline }

// Index is the queue's number in its session.
func (q *Queue) Index() int { return q.index }

func (q *Queue) recvOff(i int) int   { return i * (q.area + wire.HeaderSize) }
func (q *Queue) recvData(i int) int  { return q.recvOff(i) + wire.HeaderSize }
func (q *Queue) cmdOff(slot int) int { return q.nrecv*(q.area+wire.HeaderSize) + slot*wire.HeaderSize }

func (q *Queue) recvWR(i int) verbs.RecvWR {
	w := verbs.RecvWR{ID: idRecv | uint64(i), NumSGE: 2}
	w.SGE[0] = q.msgMR.SGE(q.recvOff(i), wire.HeaderSize)
	w.SGE[1] = q.msgMR.SGE(q.recvData(i), q.area)
	return w
}

func (q *Queue) repostRecv(i int) {
	if q.dead.Load() {
		return
	}
	if _, err := q.ep.QP.PostRecv([]verbs.RecvWR{q.recvWR(i)}); err != nil && !q.dead.Load() {
		q.drop("post receive: " + err.Error())
	}
}

// Acquire takes a free data slot, waiting while all are busy.
func (q *Queue) Acquire(ctx context.Context) (*Slot, error) {
	select {
	case i := <-q.free:
		return q.take(i)
	default:
	}
	q.stats.AddStallNoSlot()
	select {
	case i := <-q.free:
		return q.take(i)
	case <-q.stopped:
		return nil, q.err()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (q *Queue) take(i int) (*Slot, error) {
	s := &q.slots[i]
	s.state.Store(slotHeld)
	return s, nil
}

// Release gives a slot back (after its command completed, or unused).
func (s *Slot) Release() {
	s.state.Store(slotFree)
	s.q.free <- s.index
}

func (q *Queue) err() error {
	if why, _ := q.why.Load().(string); why != "" {
		return fmt.Errorf("%w: queue %d: %s", ErrClosed, q.index, why)
	}
	return ErrClosed
}

// Submit sends a command on a held slot. For READ and WRITE, Length bytes of
// the slot (at most SlotSize) are the data. done runs in the poller goroutine
// when the command completes; the slot stays held until its holder releases it.
func (s *Slot) Submit(op wire.Op, flags uint8, offset uint64, length uint32, done func(*Slot, Completion)) error {
	q := s.q
	if q.dead.Load() {
		return q.err()
	}
	if (op == wire.OpRead || op == wire.OpWrite) && int(length) > q.slotSize {
		return fmt.Errorf("client: %s of %d bytes exceeds the slot size %d", op, length, q.slotSize)
	}
	s.gen++
	s.req = wire.Request{Op: op, Flags: flags, Slot: uint16(s.index), Length: length, Offset: offset,
		Handle: uint64(s.gen)<<16 | uint64(s.index)}
	s.done = done
	s.inline = false
	if (op == wire.OpRead || op == wire.OpWrite) && q.inline > 0 && int(length) <= q.inline {
		s.inline = true
		s.req.Flags |= wire.FlagInline
	}
	if sop, ok := statOp(op); ok {
		s.start = q.stats.Start(sop)
		if op == wire.OpWrite && flags&wire.FlagFUA != 0 {
			q.stats.AddFUAWrite()
		}
	}
	hdr := q.msgMR.Bytes()[q.cmdOff(s.index):]
	s.req.Encode(hdr)
	var wrs [2]verbs.SendWR
	n := 0
	if op == wire.OpWrite && !s.inline {
		w := &wrs[n]
		*w = verbs.SendWR{ID: idSend | uint64(s.index), Op: verbs.OpRDMAWrite, NumSGE: 1,
			RemoteAddr: q.remoteAddr + uint64(s.index*q.slotSize), RKey: q.remoteKey}
		w.SGE[0] = q.localMR.SGE(s.index*q.slotSize, int(length))
		n++
	}
	w := &wrs[n]
	*w = verbs.SendWR{ID: idSend | uint64(s.index), Op: verbs.OpSend, Flags: verbs.Signaled, NumSGE: 1}
	w.SGE[0] = q.msgMR.SGE(q.cmdOff(s.index), wire.HeaderSize)
	if op == wire.OpWrite && s.inline {
		w.NumSGE = 2
		w.SGE[1] = q.localMR.SGE(s.index*q.slotSize, int(length))
		q.stats.AddInlineWrite()
	} else if q.ep.QP.Caps.MaxInlineData >= wire.HeaderSize && op != wire.OpOpen {
		w.Flags |= verbs.Inline
	}
	n++
	s.state.Store(slotSent)
	q.inflight.Add(1)
	if _, err := q.ep.QP.PostSend(wrs[:n]); err != nil {
		s.state.Store(slotHeld)
		q.inflight.Add(-1)
		if errors.Is(err, verbs.ErrClosed) || q.dead.Load() {
			return q.err()
		}
		q.stats.AddStallSQFull()
		q.drop("post send: " + err.Error())
		return q.err()
	}
	return nil
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

// poll is the queue's completion loop.
func (q *Queue) poll() {
	defer close(q.stopped)
	wcs := make([]verbs.WC, 32)
	for !q.dead.Load() {
		w := q.ep.CQ.Waits()
		n, err := q.ep.CQ.Wait(context.Background(), wcs)
		if q.ep.CQ.Waits() != w {
			q.stats.AddCQWait()
		}
		if err != nil {
			if !errors.Is(err, verbs.ErrClosed) {
				q.drop("completion queue: " + err.Error())
			}
			break
		}
		q.stats.ObservePolled(n)
		for k := range n {
			q.completion(&wcs[k])
		}
	}
	q.failAll()
}

func (q *Queue) completion(wc *verbs.WC) {
	if wc.Status != verbs.WCSuccess {
		if wc.Status != verbs.WCFlushErr && !q.dead.Load() {
			q.log.Warn("completion error", "err", wc.Err())
		}
		q.drop("completion error: " + wc.Err().Error())
		return
	}
	i := int(wc.ID & idMask)
	switch wc.ID &^ idMask {
	case idSend:
	case idRecv:
		if i >= q.nrecv {
			q.drop("receive completion for unknown context")
			return
		}
		q.reply(i, int(wc.ByteLen))
	case idRead:
		if i >= q.depth || q.slots[i].state.Load() != slotReading {
			q.drop("RDMA READ completion for a slot not reading")
			return
		}
		s := &q.slots[i]
		q.complete(s, Completion{Status: wire.StatusOK, Data: s.Buf[:s.req.Length], recv: -1})
	default:
		q.drop(fmt.Sprintf("completion with unknown id %#x", wc.ID))
	}
}

// reply handles the target's reply in receive context i.
func (q *Queue) reply(i, n int) {
	q.lastReply.Store(time.Now().UnixNano())
	if n < wire.HeaderSize {
		q.violation("reply of %d bytes", n)
		return
	}
	b := q.msgMR.Bytes()
	r, err := wire.DecodeReply(b[q.recvOff(i):])
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
	if int(r.Length) != n-wire.HeaderSize || int(r.Length) > q.area {
		q.violation("reply announces %d data bytes, carries %d", r.Length, n-wire.HeaderSize)
		return
	}
	data := b[q.recvData(i) : q.recvData(i)+int(r.Length)]
	if r.Status != wire.StatusOK || s.req.Op != wire.OpRead {
		if s.req.Op == wire.OpOpen {
			q.complete(s, Completion{Status: r.Status, Data: data, q: q, recv: i})
			return
		}
		q.repostRecv(i)
		q.complete(s, Completion{Status: r.Status, recv: -1})
		return
	}
	if r.Flags&wire.FlagInline != 0 {
		if r.Length != s.req.Length {
			q.violation("inline READ reply of %d bytes for %d", r.Length, s.req.Length)
			return
		}
		q.stats.AddInlineRead()
		q.complete(s, Completion{Status: wire.StatusOK, Data: data, q: q, recv: i})
		return
	}
	q.repostRecv(i)
	// the data waits in the target's slot: fetch it
	s.state.Store(slotReading)
	w := verbs.SendWR{ID: idRead | uint64(idx), Op: verbs.OpRDMARead, Flags: verbs.Signaled, NumSGE: 1,
		RemoteAddr: q.remoteAddr + uint64(idx*q.slotSize), RKey: q.remoteKey}
	w.SGE[0] = q.localMR.SGE(idx*q.slotSize, int(s.req.Length))
	if _, err := q.ep.QP.PostSend([]verbs.SendWR{w}); err != nil {
		q.drop("post RDMA READ: " + err.Error())
	}
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
// connection is gone.
func (q *Queue) failAll() {
	for i := range q.slots {
		s := &q.slots[i]
		if st := s.state.Load(); st == slotSent || st == slotReading {
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

// drop ends the connection; commands in flight complete with ESHUTDOWN.
func (q *Queue) drop(why string) {
	q.dropOnce.Do(func() {
		if why != "closed" {
			q.log.Warn("connection to the target ends", "reason", why)
		}
		q.why.Store(why)
		q.dead.Store(true)
		q.ep.ID.Disconnect()
		q.ep.Wakeup()
	})
}

// Dead reports whether the connection is gone, and why.
func (q *Queue) Dead() (bool, string) {
	why, _ := q.why.Load().(string)
	return q.dead.Load(), why
}

// Done is closed when the queue's poller has stopped.
func (q *Queue) Done() <-chan struct{} { return q.stopped }

// control runs a command on the control slot and waits for it.
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
	var err error
	if op == wire.OpOpen {
		err = q.submitOpen(s, payload, done)
	} else {
		err = s.Submit(op, flags, 0, 0, done)
	}
	if err != nil {
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
	select {
	case i := <-q.free:
		s, _ := q.take(i)
		if err := s.Submit(wire.OpKeepAlive, 0, 0, 0, func(s *Slot, _ Completion) { s.Release() }); err != nil {
			s.Release()
		}
	default:
	}
}

// watchCM turns the peer's disconnect into the end of the queue.
func (q *Queue) watchCM() {
	for {
		ev, err := q.ep.ID.NextEvent(context.Background())
		if err != nil {
			return // closed
		}
		if ev.Type.Terminal() {
			q.drop("the target disconnected (" + ev.Type.String() + ")")
			return
		}
	}
}

// submitOpen sends OPEN with its payload (inline, from the control slot).
func (q *Queue) submitOpen(s *Slot, payload []byte, done func(*Slot, Completion)) error {
	s.gen++
	s.req = wire.Request{Op: wire.OpOpen, Length: uint32(len(payload)), Handle: uint64(s.gen)<<16 | uint64(s.index)}
	s.done = done
	s.req.Encode(q.msgMR.Bytes()[q.cmdOff(s.index):])
	w := verbs.SendWR{ID: idSend | uint64(s.index), Op: verbs.OpSend, Flags: verbs.Signaled, NumSGE: 2}
	w.SGE[0] = q.msgMR.SGE(q.cmdOff(s.index), wire.HeaderSize)
	w.SGE[1] = q.localMR.SGE(s.index*q.slotSize, len(payload))
	s.state.Store(slotSent)
	q.inflight.Add(1)
	if _, err := q.ep.QP.PostSend([]verbs.SendWR{w}); err != nil {
		s.state.Store(slotHeld)
		q.inflight.Add(-1)
		return err
	}
	return nil
}

// close disconnects (DISCONNECT first when graceful) and frees the queue.
func (q *Queue) close(graceful bool) {
	if graceful && !q.dead.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		q.control_(ctx, wire.OpDisconnect, 0, nil)
		cancel()
	}
	q.drop("closed")
	<-q.stopped
	q.free_()
}

func (q *Queue) free_() {
	if q.ep != nil {
		q.ep.Close()
	}
	for _, b := range []*verbs.Buffer{q.local, q.msgs} {
		if b != nil {
			b.Close()
		}
	}
}
