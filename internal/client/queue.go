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

// ErrReconnecting is the error of a command submitted while its queue fails
// I/O fast (QueueConfig.FastIOFailTimeout).
var ErrReconnecting = errors.New("client: reconnecting")

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
	// Reconnecting a queue whose connection died: the first attempt after
	// ReconnectDelay (default 2 s), then with the delay doubling up to
	// ReconnectDelayMax (default 10 s), for at most CtrlLossTimeout since the
	// loss (default 600 s; negative: forever); commands wait meanwhile and
	// are sent again, in order, on the new connection. After the limit they
	// fail with ESHUTDOWN and the queue is finished. NoReconnect: fail at
	// once instead.
	ReconnectDelay, ReconnectDelayMax time.Duration
	CtrlLossTimeout                   time.Duration
	NoReconnect                       bool
	// FastIOFailTimeout (like NVMe-oF's fast_io_fail_tmo; 0: off): once a
	// queue has been reconnecting this long, the commands waiting for it
	// fail with ESHUTDOWN, and new ones fail at once, while it goes on
	// reconnecting until CtrlLossTimeout; a new connection ends that.
	FastIOFailTimeout time.Duration
}

// Reconnect defaults (like NVMe-oF's reconnect_delay and ctrl_loss_tmo).
const (
	DefaultReconnectDelay    = 2 * time.Second
	DefaultReconnectDelayMax = 10 * time.Second
	DefaultCtrlLossTimeout   = 600 * time.Second
)

// Completion is the outcome of a command, handed to its Done function in the
// queue's loop goroutine (Done must not block).
type Completion struct {
	Status wire.Status
	// Data is where a READ's data is: the slot's buffer (the target pushed
	// it there), or for OPEN the receive buffer of the reply, valid until
	// Release.
	Data []byte
	ring *ring.Ring
	recv int // receive context holding Data, or -1
}

// Release gives a reply's receive buffer back to the queue; it must be called
// in the Done function (a no-op when the data is in the slot).
func (c *Completion) Release() {
	if c.recv >= 0 && c.ring != nil {
		c.ring.Repost(c.recv)
		c.recv = -1
	}
}

// Slot is a command context of a queue: a registered local buffer of the slot
// size, which the target's slot of the same index serves. A slot belongs to
// its holder between Acquire and Release. The slot and its command outlive
// the connection: a command in flight when a connection dies is sent again on
// the next one.
type Slot struct {
	q     *Queue
	index int
	// Buf is the slot's local buffer: fill it before a WRITE; a READ's data
	// lands here.
	Buf []byte

	// command in flight
	state atomic.Int32
	gen   uint16
	seq   uint64 // submission order, for resending in order
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
	slotSent // command sent (or waiting for a connection to be sent on), owed a reply
)

// Queue states (State).
const (
	StateConnected    = "connected"
	StateReconnecting = "reconnecting"
	StateFailed       = "failed"
	StateClosed       = "closed"
)

// QueueState describes a queue's connection for a person.
type QueueState struct {
	State   string
	Attempt int       // reconnecting: the attempt under way (1, 2, ...)
	Since   time.Time // connected, reconnecting or failed since
	LastErr string    // reconnecting or failed: why the connection ended, or the last attempt failed
}

// Queue is one queue of a session: its request state (slots, their registered
// local buffers, pending commands), which lives as long as the queue, and its
// connection (endpoint, message ring, loop goroutine), which is replaced
// when it dies. Acquire, Submit and Release are safe for concurrent use.
type Queue struct {
	sess  *Session
	index int
	log   *slog.Logger
	stats *stats.Counters

	// the grant of the first connection; every later one must match it
	depth, slotSize, inline int

	local   *verbs.Buffer
	slots   []Slot
	free    chan int
	control *Slot // the last slot: OPEN, KEEPALIVE, DISCONNECT
	ctlMu   sync.Mutex

	// stageMu guards Stage's batch, posted by Kick: several NBD readers
	// (the kernel's socket and NBD socket clients) may stage on one queue.
	stageMu    sync.Mutex
	staged     []verbs.SendWR
	stagedConn *qconn

	// subMu orders marking commands sent (prepare, shared) against
	// publishing a new connection with its resends, and against the final
	// failAll (exclusive), which sets ended.
	subMu sync.RWMutex
	ended bool
	// failFast: reconnecting for longer than FastIOFailTimeout; commands
	// fail at once (set and cleared under subMu)
	failFast bool
	seq      atomic.Uint64

	conn     atomic.Pointer[qconn]
	batchEnd atomic.Pointer[func()]
	inflight atomic.Int32
	state    atomic.Pointer[QueueState]
	closing  atomic.Bool
	stop     chan struct{} // closed by close: ends a reconnect wait
	stopOnce sync.Once
	stopped  chan struct{} // the queue is finished: failed or closed
	why      atomic.Value
}

// qconn is one connection of a queue: replaced, with all it holds, when it
// dies. Its ring's send headers are the slots' command headers; the local
// slot buffer is registered again in its protection domain.
type qconn struct {
	q          *Queue
	ep         transport.Endpoint
	ring       *ring.Ring
	mr         *verbs.MR // the queue's local slots, in this connection's PD
	remoteAddr uint64
	remoteKey  uint32
	nonce      [wire.NonceSize]byte // the target's challenge (version 3)
	peer       netip.AddrPort
	lastReply  atomic.Int64
	dead       atomic.Bool
	dropOnce   sync.Once
	why        atomic.Value
	stopped    chan struct{} // its loop ended
}

// Send work request IDs: the command of slot i.
const idSend = 2 << 40

// dialQueue connects one queue (the first connection); OPEN follows.
func dialQueue(ctx context.Context, s *Session, index int) (*Queue, error) {
	cfg := s.cfg
	q := &Queue{sess: s, index: index, log: s.log.With("queue", index), stats: s.Stats,
		stop: make(chan struct{}), stopped: make(chan struct{})}
	want := cfg.Queue
	var err error
	if q.local, err = verbs.AllocBuffer(want.Depth * want.MaxIO); err != nil {
		return nil, err
	}
	c, acc, err := q.dial(ctx)
	if err != nil {
		q.local.Close()
		return nil, err
	}
	q.depth, q.slotSize, q.inline = int(acc.Depth), int(acc.SlotSize), int(acc.InlineMax)
	q.slots = make([]Slot, q.depth)
	q.free = make(chan int, q.depth)
	for i := range q.slots {
		// slot i at i × the granted slot size: what the target pushes to
		q.slots[i] = Slot{q: q, index: i, Buf: q.local.Bytes()[i*q.slotSize : (i+1)*q.slotSize]}
		if i < q.depth-1 {
			q.free <- i
		}
	}
	q.control = &q.slots[q.depth-1]
	q.conn.Store(c)
	q.setState(QueueState{State: StateConnected, Since: time.Now()})
	c.start()
	go q.run(c)
	return q, nil
}

// dial makes a connection: endpoint, ring, the local slots registered in its
// PD (remote write: the target pushes READ data there), connect.
func (q *Queue) dial(ctx context.Context) (*qconn, wire.Accept, error) {
	cfg := q.sess.cfg
	want := cfg.Queue
	c := &qconn{q: q, stopped: make(chan struct{})}
	nrecv := want.Depth + 4 // one reply per command; a few spare
	var acc wire.Accept
	var err error
	c.ep, err = cfg.Transport.Open(ctx, cfg.Source, cfg.Target, verbs.QPCaps{
		MaxSendWR: 2*want.Depth + 8, MaxRecvWR: nrecv, MaxSendSGE: 2, MaxRecvSGE: 2, MaxInlineData: wire.HeaderSize})
	if err != nil {
		return nil, acc, err
	}
	fail := func(err error) (*qconn, wire.Accept, error) {
		c.free()
		return nil, acc, err
	}
	// the target marks its replies solicited: completions of our own sends
	// never wake the loop
	if c.ring, err = ring.New(c.ep, ring.Config{Recvs: nrecv, Area: wire.MinDataArea, Headers: want.Depth,
		Solicited: true, Spin: want.Spin}); err != nil {
		return fail(err)
	}
	if c.mr, err = c.ep.Register(q.local, verbs.AccessLocalWrite|verbs.AccessRemoteWrite); err != nil {
		return fail(err)
	}
	pd := make([]byte, wire.ConnectSizeV2)
	(&wire.Connect{MinVersion: wire.VersionPush, MaxVersion: wire.MaxVersion, QueueDepth: uint16(want.Depth),
		MaxIO: uint32(want.MaxIO), InlineMax: uint32(want.Inline), RegionKey: c.mr.RKey, RegionAddr: c.mr.Addr()}).Encode(pd)
	ev, err := c.ep.Connect(ctx, verbs.ConnParam{PrivateData: pd, RetryCount: 7, RNRRetryCount: 7})
	if err != nil {
		return fail(connectError(cfg.Target, err))
	}
	if acc, err = wire.DecodeAccept(ev.PrivateData); err != nil {
		return fail(fmt.Errorf("target %s answered with bad accept data: %w", cfg.Target, err))
	}
	if acc.Version < wire.VersionPush {
		return fail(fmt.Errorf("target %s chose protocol version %d; this initiator needs %d..%d: upgrade rbdt there", cfg.Target, acc.Version, wire.VersionPush, wire.MaxVersion))
	}
	if !cfg.Key.IsZero() && acc.Version < wire.VersionAuth {
		return fail(&permanentError{fmt.Errorf("target %s speaks protocol version %d, which has no authentication, and a key is given for it: upgrade rbdt there (version %d), or map without a key file", cfg.Target, acc.Version, wire.VersionAuth)})
	}
	if int(acc.Depth) > want.Depth || int(acc.SlotSize) > want.MaxIO || int(acc.InlineMax) > want.Inline || acc.Depth < 2 {
		return fail(fmt.Errorf("target %s granted %d slots of %d bytes, inline %d: not what was asked", cfg.Target, acc.Depth, acc.SlotSize, acc.InlineMax))
	}
	if q.slots != nil && (int(acc.Depth) != q.depth || int(acc.SlotSize) != q.slotSize || int(acc.InlineMax) != q.inline) {
		return fail(&permanentError{fmt.Errorf("target %s now grants %d slots of %d bytes, inline %d, where it granted %d of %d, inline %d: the queue cannot carry its commands over",
			cfg.Target, acc.Depth, acc.SlotSize, acc.InlineMax, q.depth, q.slotSize, q.inline)})
	}
	c.remoteAddr, c.remoteKey = acc.SlotAddr, acc.SlotRKey
	c.nonce = acc.Nonce
	c.peer = c.ep.RemoteAddr()
	c.lastReply.Store(time.Now().UnixNano())
	return c, acc, nil
}

// permanentError ends reconnecting: trying again cannot help.
type permanentError struct{ error }

func (e *permanentError) Unwrap() error { return e.error }

// start runs the connection's goroutines: the completion loop, the
// keepalive and the connection-manager watcher.
func (c *qconn) start() {
	go c.loop()
	go c.keepalive()
	go c.watchCM()
}

// free releases the connection, once its loop has stopped (or never ran).
func (c *qconn) free() {
	if c.ep != nil {
		c.ep.Close()
	}
	c.ring.Free()
}

// drop ends the connection; its queue reconnects (or fails).
func (c *qconn) drop(why string) {
	c.dropOnce.Do(func() {
		if why != "closed" {
			c.q.log.Warn("connection to the target ends", "reason", why)
		}
		c.why.Store(why)
		c.dead.Store(true)
		c.ep.Disconnect()
		c.ep.Wakeup()
	})
}

func (c *qconn) reason() string {
	why, _ := c.why.Load().(string)
	return why
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

func (q *Queue) runBatchEnd() {
	if f := q.batchEnd.Load(); f != nil {
		(*f)()
	}
}

// Depth is the number of data slots (the granted depth less the control slot).
func (q *Queue) Depth() int { return q.depth - 1 }

// SlotSize is the largest READ or WRITE of one command.
func (q *Queue) SlotSize() int { return q.slotSize }

// Inline is the largest WRITE that travels in the command message.
func (q *Queue) Inline() int { return q.inline }

// Index is the queue's number in its session.
func (q *Queue) Index() int { return q.index }

// Acquire takes a free data slot, waiting while all are busy; a finished
// queue has none.
func (q *Queue) Acquire(ctx context.Context) (*Slot, error) {
	select {
	case <-q.stopped:
		return nil, q.err()
	default:
	}
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

func (q *Queue) setState(st QueueState) { q.state.Store(&st) }

// State is the queue's connection state.
func (q *Queue) State() QueueState {
	if st := q.state.Load(); st != nil {
		return *st
	}
	return QueueState{State: StateConnected}
}

// Dead reports whether the queue is finished (failed or closed), and why.
func (q *Queue) Dead() (bool, string) {
	select {
	case <-q.stopped:
		why, _ := q.why.Load().(string)
		return true, why
	default:
		return false, ""
	}
}

// Done is closed when the queue is finished: failed for good, or closed.
func (q *Queue) Done() <-chan struct{} { return q.stopped }

// close disconnects (DISCONNECT first when graceful) and frees the queue.
func (q *Queue) close(graceful bool) {
	if graceful {
		if c := q.conn.Load(); c != nil && !c.dead.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			q.control_(ctx, c, wire.OpDisconnect, 0, nil)
			cancel()
		}
	}
	q.closing.Store(true)
	q.stopOnce.Do(func() { close(q.stop) })
	if c := q.conn.Load(); c != nil {
		c.drop("closed")
	}
	<-q.stopped
	q.local.Close()
}
