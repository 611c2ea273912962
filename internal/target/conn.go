package target

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"rbd/internal/backend"
	"rbd/internal/ring"
	"rbd/internal/stats"
	"rbd/internal/transport"
	"rbd/internal/verbs"
	"rbd/internal/wire"
)

// conn is one RC connection of a session. Its loop goroutine (receive.go)
// owns the CQ and handles each request where it polls: a short I/O runs right
// there and its reply joins the batch's single post; a request that may block
// (FLUSH, DISCONNECT, and any I/O while the backend has been slow) goes to a
// worker, which posts its own reply. A receive context is given back when
// its reply's send completes.
type conn struct {
	srv  *Server
	log  *slog.Logger
	peer netip.AddrPort
	ep   transport.Endpoint
	ring *ring.Ring

	version                 uint8
	depth, slotSize, inline int
	nctx                    int // receive contexts: 2 × depth
	slots                   *verbs.Buffer
	slotMR                  *verbs.MR
	slotBusy                []atomic.Bool
	ctxs                    []reqCtx
	peerKey                 uint32 // version 2: the initiator's slot region
	peerAddr                uint64
	inlineIO                time.Duration // run I/O in the loop while it is faster than this
	ioNanos                 atomic.Int64  // moving average of a backend I/O
	work                    chan int
	workers                 sync.WaitGroup
	outstanding             atomic.Int32
	// requests whose replies are not posted yet (outstanding ends earlier,
	// when the credit comes back); a DISCONNECT waits, in a worker, for those
	// before it: quiet is signalled when unposted falls to 1 or the
	// connection dies
	unposted  atomic.Int32
	quietMu   sync.Mutex
	quiet     *sync.Cond
	quietWait atomic.Int32 // DISCONNECTs waiting
	// replies deferred to the batch's post (loop only): they stop being
	// outstanding after it
	repliesDeferred int

	// authentication (version 3): this connection's challenge, sent in the
	// accept; authed once an OPEN proved the export's key; openRefused once
	// an OPEN was refused for authentication (a second OPEN is a violation:
	// no guessing on one challenge)
	nonce       [wire.NonceSize]byte
	authed      bool
	openRefused bool
	// claim is the connection's part of its peer's limits
	claim *peerClaim

	// set by the loop when OPEN succeeds
	sess  *session
	be    *backend.Backend
	queue uint16
	caps  uint32

	// replaces is the connection of the same session and queue that this
	// one's OPEN replaced: the OPEN is answered only once it has finished
	// (fencing: none of its writes can land after a resent one).
	replaces *conn
	finished chan struct{} // closed when serve has stopped its loop and workers

	draining atomic.Bool  // the target stops: no new requests run
	lastMsg  atomic.Int64 // unix nanos of the initiator's last message (or the accept)
	opened   atomic.Bool  // OPEN succeeded
	dropOnce sync.Once
	dead     atomic.Bool
	why      atomic.Value // string: why the connection was dropped
}

// reqCtx is the state of the request in receive context i, with the work
// requests of its reply built in place (no allocation per request).
type reqCtx struct {
	req      wire.Request
	payload  int
	start    stats.Stamp
	slotHeld bool // the command owns slot req.Slot until its reply
	wrs      [2]verbs.SendWR
}

// Work request IDs of sends: the reply of context i is sendBit|i; a pushed
// READ's RDMA WRITE is pushBit|i (unsignaled: it completes only on error).
const (
	sendBit = 1 << 32
	pushBit = 1 << 33
)

// connParams are what the handshake granted.
type connParams struct {
	version                 uint8
	depth, slotSize, inline int
	peerKey                 uint32
	peerAddr                uint64
}

// newConn builds the connection's endpoint, slots and ring. On error the
// returned conn (never nil) holds only buffers: reject the request (which
// closes the endpoint), then freeBuffers.
func newConn(s *Server, req transport.Request, p connParams) (*conn, error) {
	c := &conn{srv: s, peer: req.RemoteAddr(), version: p.version, depth: p.depth, slotSize: p.slotSize, inline: p.inline,
		nctx: 2 * p.depth, peerKey: p.peerKey, peerAddr: p.peerAddr, inlineIO: s.cfg.InlineIO, finished: make(chan struct{})}
	c.quiet = sync.NewCond(&c.quietMu)
	c.log = s.log.With("peer", c.peer)
	var err error
	// each request may need a pushed WRITE and its reply
	if c.ep, err = req.Endpoint(verbs.QPCaps{MaxSendWR: 2*c.nctx + 4, MaxRecvWR: c.nctx, MaxSendSGE: 2, MaxRecvSGE: 2,
		MaxInlineData: wire.HeaderSize}); err != nil {
		return c, err
	}
	if c.slots, err = verbs.AllocBuffer(c.depth * c.slotSize); err != nil {
		return c, err
	}
	if c.slotMR, err = c.ep.Register(c.slots, verbs.AccessLocalWrite|verbs.AccessRemoteWrite|verbs.AccessRemoteRead); err != nil {
		return c, err
	}
	// Version 2 initiators mark every message solicited: the loop sleeps
	// through the completions of its own replies.
	if c.ring, err = ring.New(c.ep, ring.Config{Recvs: c.nctx, Area: c.inline, Headers: c.nctx,
		Solicited: c.version >= wire.VersionPush, Spin: s.cfg.Spin}); err != nil {
		return c, err
	}
	c.lastMsg.Store(time.Now().UnixNano())
	c.slotBusy = make([]atomic.Bool, c.depth)
	c.ctxs = make([]reqCtx, c.nctx)
	c.work = make(chan int, c.nctx)
	return c, nil
}

func (c *conn) slot(s int) []byte {
	return c.slotMR.Bytes()[s*c.slotSize : (s+1)*c.slotSize]
}

// free releases everything; only after the loop and the workers stopped.
func (c *conn) free() {
	if c.ep != nil {
		c.ep.Close()
	}
	c.freeBuffers()
}

// freeBuffers releases the ring's and the slots' memory, once the endpoint
// is closed.
func (c *conn) freeBuffers() {
	c.ring.Free()
	if c.slots != nil {
		c.slots.Close()
	}
}

// drop ends the connection: the QP is flushed and the loop wakes up. It may
// be called from any goroutine, any number of times. It is the only caller of
// Disconnect, and dead is set only once Disconnect returned: the loop stops
// (and free destroys the QP) only after that, because librdmacm's
// rdma_disconnect uses the QP that rdma_destroy_qp frees.
func (c *conn) drop(why string) {
	c.dropOnce.Do(func() {
		c.why.Store(why)
		c.ep.Disconnect()
		c.dead.Store(true)
		c.ep.Wakeup()
		c.signalQuiet()
	})
}

// signalQuiet wakes the DISCONNECTs waiting for the requests before them.
func (c *conn) signalQuiet() {
	if c.quietWait.Load() == 0 {
		return
	}
	c.quietMu.Lock()
	c.quiet.Broadcast()
	c.quietMu.Unlock()
}

// awaitQuiet waits until the calling request is the only one outstanding,
// or the connection is dead.
func (c *conn) awaitQuiet() {
	c.quietMu.Lock()
	c.quietWait.Add(1)
	for c.unposted.Load() > 1 && !c.dead.Load() {
		c.quiet.Wait()
	}
	c.quietWait.Add(-1)
	c.quietMu.Unlock()
}

// drain stops the connection taking requests and waits (at most timeout)
// until those running have finished and their replies were posted; a moment
// more lets the replies leave before the caller disconnects.
func (c *conn) drain(timeout time.Duration) {
	c.draining.Store(true)
	deadline := time.Now().Add(timeout)
	for c.unposted.Load() > 0 && !c.dead.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
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

// guard turns a panic while handling a peer's message into the end of that
// connection: a bug must not take the other sessions down with it.
func (c *conn) guard(where string) {
	if p := recover(); p != nil {
		c.log.Error("internal error; dropping the connection", "where", where, "panic", p, "stack", string(debug.Stack()))
		c.drop(fmt.Sprintf("internal error in %s: %v", where, p))
	}
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
				c.execute(i, false)
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
			ev, err := c.ep.NextEvent(evctx)
			if err != nil {
				return
			}
			if ev.Type.Terminal() {
				c.drop("initiator disconnected")
				return
			}
		}
	}()
	c.loop()
	close(c.work)
	c.workers.Wait()
	close(c.finished)
	c.srv.leave(c)
	why, _ := c.why.Load().(string)
	c.log.Debug("connection closed", "reason", why)
	c.free()
	c.srv.releasePeer(c.claim)
}
