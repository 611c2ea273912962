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

	"rbd/internal/ring"
	"rbd/internal/stats"
	"rbd/internal/transport"
	"rbd/internal/verbs"
	"rbd/internal/wire"
)

// ErrClosed is returned by a closed queue or session.
var ErrClosed = errors.New("client: closed")

// QueueConfig are the wishes a queue connects with; the target may grant less.
type QueueConfig struct {
	Depth  int // commands (and slots) in flight
	MaxIO  int // slot size, bytes
	Inline int // inline WRITE data, bytes (0: none)
	// KeepAlive: a KEEPALIVE goes out when requests are outstanding and
	// nothing came back for this long (default 5 s); KeepAliveTimeout later
	// still (default 15 s) the connection is declared dead.
	KeepAlive, KeepAliveTimeout time.Duration
	// Spin: how long the completion loop polls an empty CQ before it sleeps
	// (default 0).
	Spin time.Duration
}

// Completion is the outcome of a command, handed to its Done function in the
// queue's loop goroutine (Done must not block).
type Completion struct {
	Status wire.Status
	// Data is where a READ's data is: the slot's buffer (the target pushed
	// it there), or for OPEN the receive buffer of the reply, valid until
	// Release.
	Data []byte
	q    *Queue
	recv int // receive context holding Data, or -1
}

// Release gives a reply's receive buffer back to the queue; it must be called
// in the Done function (a no-op when the data is in the slot).
func (c *Completion) Release() {
	if c.recv >= 0 && c.q != nil {
		c.q.ring.Repost(c.recv)
		c.recv = -1
	}
}

// Slot is a command context of a queue: a registered local buffer of the slot
// size, which the target's slot of the same index serves. A slot belongs to
// its holder between Acquire and Release.
type Slot struct {
	q     *Queue
	index int
	// Buf is the slot's local buffer: fill it before a WRITE; a READ's data
	// lands here.
	Buf []byte

	// command in flight
	state atomic.Int32
	gen   uint16
	req   wire.Request
	done  func(*Slot, Completion)
	start stats.Stamp
	wrs   [2]verbs.SendWR
}

// Index is the slot's number in its queue.
func (s *Slot) Index() int { return s.index }

// Queue reports which queue the slot belongs to.
func (s *Slot) Queue() *Queue { return s.q }

// Slot states.
const (
	slotFree = iota
	slotHeld
	slotSent // command sent, waiting for the reply
)

// Queue is one RC connection of a session: its slots (request state), its
// endpoint and message ring (the connection), and the loop goroutine that
// handles completions. Acquire, Submit and Release are safe for concurrent
// use.
type Queue struct {
	sess  *Session
	index int
	log   *slog.Logger
	ep    transport.Endpoint
	ring  *ring.Ring
	peer  netip.AddrPort

	depth, slotSize, inline int
	remoteAddr              uint64
	remoteKey               uint32

	local   *verbs.Buffer
	localMR *verbs.MR
	slots   []Slot
	free    chan int
	control *Slot // the last slot: OPEN, KEEPALIVE, DISCONNECT
	ctlMu   sync.Mutex
	staged  []verbs.SendWR // Stage's batch, posted by Kick
	// subMu orders marking commands sent (prepare, shared) against the
	// loop's final failAll (exclusive), which sets ended.
	subMu sync.RWMutex
	ended bool

	// BatchEnd, if set before the first command, runs in the loop goroutine
	// after each batch of completions (rbdi writes its NBD replies there).
	batchEnd atomic.Pointer[func()]

	lastReply atomic.Int64 // unix nanos of the last reply
	inflight  atomic.Int32
	dead      atomic.Bool
	dropOnce  sync.Once
	why       atomic.Value
	stopped   chan struct{}
	stats     *stats.Counters
}

// Send work request IDs: the command of slot i.
const idSend = 2 << 40

// dialQueue connects one queue and OPENs it on the export.
func dialQueue(ctx context.Context, s *Session, index int) (*Queue, error) {
	cfg := s.cfg
	q := &Queue{sess: s, index: index, log: s.log.With("queue", index), stopped: make(chan struct{}), stats: s.Stats}
	want := cfg.Queue
	// one reply per command; a few receives spare
	nrecv := want.Depth + 4
	var err error
	q.ep, err = cfg.Transport.Open(ctx, cfg.Source, cfg.Target, verbs.QPCaps{
		MaxSendWR: 2*want.Depth + 8, MaxRecvWR: nrecv, MaxSendSGE: 2, MaxRecvSGE: 2, MaxInlineData: wire.HeaderSize})
	if err != nil {
		return nil, err
	}
	// the target marks its replies solicited: completions of our own
	// sends never wake the loop
	if q.ring, err = ring.New(q.ep, ring.Config{Recvs: nrecv, Area: wire.MinDataArea, Headers: want.Depth,
		Solicited: true, Spin: want.Spin}); err != nil {
		q.free_()
		return nil, err
	}
	// local slots, registered before connecting: the source of RDMA WRITEs
	// and where the target pushes READ data (remote write)
	if q.local, err = verbs.AllocBuffer(want.Depth * want.MaxIO); err != nil {
		q.free_()
		return nil, err
	}
	if q.localMR, err = q.ep.Register(q.local, verbs.AccessLocalWrite|verbs.AccessRemoteWrite); err != nil {
		q.free_()
		return nil, err
	}
	pd := make([]byte, wire.ConnectSizeV2)
	(&wire.Connect{MinVersion: wire.VersionPush, MaxVersion: wire.MaxVersion, QueueDepth: uint16(want.Depth),
		MaxIO: uint32(want.MaxIO), InlineMax: uint32(want.Inline), RegionKey: q.localMR.RKey, RegionAddr: q.localMR.Addr()}).Encode(pd)
	ev, err := q.ep.Connect(ctx, verbs.ConnParam{PrivateData: pd, InitiatorDepth: 0, ResponderResources: 0, RetryCount: 7, RNRRetryCount: 7})
	if err != nil {
		q.free_()
		return nil, connectError(cfg.Target, err)
	}
	acc, err := wire.DecodeAccept(ev.PrivateData)
	if err != nil {
		q.free_()
		return nil, fmt.Errorf("target %s answered with bad accept data: %w", cfg.Target, err)
	}
	if acc.Version < wire.VersionPush {
		q.free_()
		return nil, fmt.Errorf("target %s chose protocol version %d; this initiator needs %d..%d: upgrade rbdt there", cfg.Target, acc.Version, wire.VersionPush, wire.MaxVersion)
	}
	if int(acc.Depth) > want.Depth || int(acc.SlotSize) > want.MaxIO || int(acc.InlineMax) > want.Inline || acc.Depth < 2 {
		q.free_()
		return nil, fmt.Errorf("target %s granted %d slots of %d bytes, inline %d: not what was asked", cfg.Target, acc.Depth, acc.SlotSize, acc.InlineMax)
	}
	q.depth, q.slotSize, q.inline = int(acc.Depth), int(acc.SlotSize), int(acc.InlineMax)
	q.remoteAddr, q.remoteKey = acc.SlotAddr, acc.SlotRKey
	q.peer = q.ep.RemoteAddr()
	q.slots = make([]Slot, q.depth)
	q.free = make(chan int, q.depth)
	for i := range q.slots {
		// slot i at i × the granted slot size: what the target pushes to
		q.slots[i] = Slot{q: q, index: i, Buf: q.localMR.Bytes()[i*q.slotSize : (i+1)*q.slotSize]}
		if i < q.depth-1 {
			q.free <- i
		}
	}
	q.control = &q.slots[q.depth-1]
	q.lastReply.Store(time.Now().UnixNano())
	go q.loop()
	go q.keepalive()
	go q.watchCM()
	return q, nil
}

// SetBatchEnd sets a function the loop goroutine runs after each batch of
// completions, once every Done of the batch ran (nil: none).
func (q *Queue) SetBatchEnd(f func()) {
	if f == nil {
		q.batchEnd.Store(nil)
		return
	}
	q.batchEnd.Store(&f)
}

// Depth is the number of data slots (the granted depth less the control slot).
func (q *Queue) Depth() int { return q.depth - 1 }

// SlotSize is the largest READ or WRITE of one command.
func (q *Queue) SlotSize() int { return q.slotSize }

// Inline is the largest WRITE that travels in the command message.
func (q *Queue) Inline() int { return q.inline }

// Index is the queue's number in its session.
func (q *Queue) Index() int { return q.index }

// Acquire takes a free data slot, waiting while all are busy.
func (q *Queue) Acquire(ctx context.Context) (*Slot, error) {
	select {
	case i := <-q.free:
		return q.take(i), nil
	default:
	}
	q.stats.AddStallNoSlot()
	select {
	case i := <-q.free:
		return q.take(i), nil
	case <-q.stopped:
		return nil, q.err()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TryAcquire takes a free data slot if there is one.
func (q *Queue) TryAcquire() *Slot {
	select {
	case i := <-q.free:
		return q.take(i)
	default:
		return nil
	}
}

func (q *Queue) take(i int) *Slot {
	s := &q.slots[i]
	s.state.Store(slotHeld)
	return s
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

// drop ends the connection; commands in flight complete with ESHUTDOWN.
func (q *Queue) drop(why string) {
	q.dropOnce.Do(func() {
		if why != "closed" {
			q.log.Warn("connection to the target ends", "reason", why)
		}
		q.why.Store(why)
		q.dead.Store(true)
		q.ep.Disconnect()
		q.ep.Wakeup()
	})
}

// Dead reports whether the connection is gone, and why.
func (q *Queue) Dead() (bool, string) {
	why, _ := q.why.Load().(string)
	return q.dead.Load(), why
}

// Done is closed when the queue's loop has stopped.
func (q *Queue) Done() <-chan struct{} { return q.stopped }

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
	q.ring.Free()
	if q.local != nil {
		q.local.Close()
	}
}
