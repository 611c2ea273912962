package memt

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"rbd/internal/verbs"
)

// Conn is one connection: a dialed endpoint and (once the listener's side
// made it) the accepted one, with one mutex for both and the faults injected
// on it. Its methods are safe for concurrent use.
//
// A "message" below is one send work request (SEND, RDMA WRITE or RDMA READ)
// of either side; the messages of a direction (those one side sends) execute
// in posting order, one at a time, as soon as nothing holds that direction.
type Conn struct {
	net *Network
	seq uint64

	mu    sync.Mutex
	state connState
	ep    [2]*Endpoint
	req   *request    // the connect request, once made
	q     [2]fifo[op] // messages sent by each side, not yet executed
	rng   *rand.Rand

	// faults
	held      [2]bool // messages sent by this side wait for Release
	frozen    [2]bool // messages to and from this side wait for Thaw
	delay     [2]time.Duration
	reorderP  float64
	reorderW  time.Duration
	waitOther [2]time.Time // this direction waits for the other to deliver, at most until then
	dropAfter int          // drop when this many more messages were delivered (-1: never)
	timer     *time.Timer
	timerAt   time.Time

	delivered atomic.Int64
	stats     [2]counters // by sending side; the network's count too
}

type op struct {
	wr     verbs.SendWR
	due    time.Time // Delay: not before
	inline []byte    // inline data copied at post time (only when queued)
}

// Seq is the connection's number in its network (0 for the first made).
func (c *Conn) Seq() uint64 { return c.seq }

// Endpoint is the given side's endpoint (nil before it exists).
func (c *Conn) Endpoint(s Side) *Endpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ep[s]
}

// Up reports whether the connection is established and not failed.
func (c *Conn) Up() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == stateUp
}

// Delivered is how many messages executed on the connection.
func (c *Conn) Delivered() int64 { return c.delivered.Load() }

// Stats are the counters of what side s sent on this connection.
func (c *Conn) Stats(s Side) Stats { return c.stats[s].snapshot() }

// Drop fails the connection as a broken link does: the outstanding work of
// both sides completes with verbs.WCFlushErr and both see EventDisconnected.
func (c *Conn) Drop() {
	c.mu.Lock()
	c.failLocked()
	c.mu.Unlock()
}

// DropAfter drops the connection when n more messages (of both directions)
// have executed: the next one is flushed instead. n < 0 cancels.
func (c *Conn) DropAfter(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n < 0 {
		c.dropAfter = -1
		return
	}
	c.dropAfter = int(c.delivered.Load()) + n
	c.pumpLocked()
}

// Hold keeps the messages side s sends from executing until Release.
func (c *Conn) Hold(s Side) {
	c.mu.Lock()
	c.held[s] = true
	c.mu.Unlock()
}

// Release lets the messages side s sends (and those held so far) execute.
func (c *Conn) Release(s Side) {
	c.mu.Lock()
	c.held[s] = false
	c.pumpLocked()
	c.mu.Unlock()
}

// Freeze models a hung peer: nothing s sends and nothing sent to it executes
// (the messages wait, their send completions too) until Thaw. Connection
// events still arrive.
func (c *Conn) Freeze(s Side) {
	c.mu.Lock()
	c.frozen[s] = true
	c.mu.Unlock()
}

// Thaw ends Freeze.
func (c *Conn) Thaw(s Side) {
	c.mu.Lock()
	c.frozen[s] = false
	c.pumpLocked()
	c.mu.Unlock()
}

// Delay makes each message side s posts from now on wait d before it
// executes (a timer releases it; order within the direction is kept). 0
// ends it for new messages.
func (c *Conn) Delay(s Side, d time.Duration) {
	c.mu.Lock()
	c.delay[s] = d
	c.mu.Unlock()
}

// Reorder makes each message posted (by either side) hold its direction,
// with probability p drawn from the connection's seeded generator, until the
// other direction has executed a message or window has passed (default
// 200 µs): a reply can then overtake a request posted before it, and the
// reverse, but never a message of its own direction.
func (c *Conn) Reorder(p float64, window time.Duration) {
	if window <= 0 {
		window = 200 * time.Microsecond
	}
	c.mu.Lock()
	c.reorderP, c.reorderW = p, window
	c.mu.Unlock()
}

// ---- execution (c.mu held)

func (c *Conn) blockedLocked(s Side, now *time.Time) bool {
	if c.held[s] || c.frozen[s] || c.frozen[1-s] {
		return true
	}
	if w := c.waitOther[s]; !w.IsZero() {
		if now.IsZero() {
			*now = time.Now()
		}
		if now.Before(w) {
			c.wakeAtLocked(w)
			return true
		}
		c.waitOther[s] = time.Time{}
	}
	return false
}

// pumpLocked executes what both directions can.
func (c *Conn) pumpLocked() {
	for c.pumpDirLocked(Initiator)+c.pumpDirLocked(Target) > 0 {
	}
}

// pumpDirLocked executes the messages side s sent while it can; it returns
// how many.
func (c *Conn) pumpDirLocked(s Side) int {
	q := &c.q[s]
	n := 0
	var now time.Time
	for q.len() > 0 {
		if c.state != stateUp {
			if c.state == stateError {
				c.flushLocked()
			}
			return n
		}
		if c.blockedLocked(s, &now) {
			return n
		}
		o := q.peek()
		if !o.due.IsZero() {
			if now.IsZero() {
				now = time.Now()
			}
			if now.Before(o.due) {
				c.wakeAtLocked(o.due)
				return n
			}
		}
		peer := c.ep[1-s]
		if o.wr.Op == verbs.OpSend && peer.recvs.len() == 0 {
			if !c.net.opts.RNRError {
				return n // waits for the peer's PostRecv
			}
		}
		if c.dropAfter >= 0 && c.delivered.Load() >= int64(c.dropAfter) {
			c.failLocked()
			return n
		}
		w := *o
		q.pop()
		c.delivered.Add(1)
		c.execLocked(s, &w)
		n++
		if !c.waitOther[1-s].IsZero() {
			c.waitOther[1-s] = time.Time{}
		}
		if c.state != stateUp {
			return n
		}
	}
	return n
}

// wakeAtLocked makes sure a timer pumps the connection at t.
func (c *Conn) wakeAtLocked(t time.Time) {
	if !c.timerAt.IsZero() && !c.timerAt.After(t) {
		return
	}
	c.timerAt = t
	d := time.Until(t)
	if c.timer == nil {
		c.timer = time.AfterFunc(d, c.fire)
	} else {
		c.timer.Reset(d)
	}
}

func (c *Conn) fire() {
	c.mu.Lock()
	c.timerAt = time.Time{}
	c.pumpLocked()
	c.mu.Unlock()
}

// execLocked executes one message of side s.
func (c *Conn) execLocked(s Side, o *op) {
	src, dst := c.ep[s], c.ep[1-s]
	wr := &o.wr
	wc := verbs.WC{ID: wr.ID, QPNum: src.qpn}
	total := 0
	for i := range wr.NumSGE {
		total += int(wr.SGE[i].Length)
	}
	switch wr.Op {
	case verbs.OpSend:
		c.stats[s].add(&c.net.stats, statSend, total)
		wc.Opcode = verbs.WCSend
		if dst.recvs.len() == 0 { // RNRError
			c.failWRLocked(s, wr, verbs.WCRNRRetryExcErr)
			return
		}
		rwr := dst.recvs.peek()
		capacity := 0
		for i := range rwr.NumSGE {
			capacity += int(rwr.SGE[i].Length)
		}
		if total > capacity {
			r := dst.recvs.pop()
			dst.pushWCLocked(verbs.WC{ID: r.ID, Status: verbs.WCLocLenErr, Opcode: verbs.WCRecv, QPNum: dst.qpn}, false)
			c.failWRLocked(s, wr, verbs.WCRemInvReqErr)
			return
		}
		// check every source before writing anything
		if o.inline == nil {
			for i := range wr.NumSGE {
				if _, ok := src.localLocked(wr.SGE[i], false); !ok {
					c.failWRLocked(s, wr, verbs.WCLocProtErr)
					return
				}
			}
		}
		var sinks [verbs.MaxSGE][]byte
		for i := range rwr.NumSGE {
			b, ok := dst.localLocked(rwr.SGE[i], true)
			if !ok {
				r := dst.recvs.pop()
				dst.pushWCLocked(verbs.WC{ID: r.ID, Status: verbs.WCLocProtErr, Opcode: verbs.WCRecv, QPNum: dst.qpn}, false)
				c.failWRLocked(s, wr, verbs.WCRemOpErr)
				return
			}
			sinks[i] = b
		}
		r := dst.recvs.pop()
		k := 0 // sink index
		if o.inline != nil {
			scatter(sinks[:r.NumSGE], &k, o.inline)
		} else {
			for i := range wr.NumSGE {
				b, _ := src.localLocked(wr.SGE[i], false)
				scatter(sinks[:r.NumSGE], &k, b)
			}
		}
		dst.pushWCLocked(verbs.WC{ID: r.ID, Opcode: verbs.WCRecv, ByteLen: uint32(total), QPNum: dst.qpn}, wr.Flags&verbs.Solicited != 0)
	case verbs.OpRDMAWrite:
		c.stats[s].add(&c.net.stats, statWrite, total)
		wc.Opcode = verbs.WCRDMAWrite
		remote, ok := dst.remoteLocked(wr.RemoteAddr, wr.RKey, total, verbs.AccessRemoteWrite)
		if !ok {
			c.failWRLocked(s, wr, verbs.WCRemAccessErr)
			return
		}
		if o.inline != nil {
			copy(remote, o.inline)
			break
		}
		for i := range wr.NumSGE {
			if _, ok := src.localLocked(wr.SGE[i], false); !ok {
				c.failWRLocked(s, wr, verbs.WCLocProtErr)
				return
			}
		}
		for i := range wr.NumSGE {
			b, _ := src.localLocked(wr.SGE[i], false)
			remote = remote[copy(remote, b):]
		}
	case verbs.OpRDMARead:
		c.stats[s].add(&c.net.stats, statRead, total)
		wc.Opcode = verbs.WCRDMARead
		wc.ByteLen = uint32(total)
		remote, ok := dst.remoteLocked(wr.RemoteAddr, wr.RKey, total, verbs.AccessRemoteRead)
		if !ok {
			c.failWRLocked(s, wr, verbs.WCRemAccessErr)
			return
		}
		for i := range wr.NumSGE {
			if _, ok := src.localLocked(wr.SGE[i], true); !ok {
				c.failWRLocked(s, wr, verbs.WCLocProtErr)
				return
			}
		}
		for i := range wr.NumSGE {
			b, _ := src.localLocked(wr.SGE[i], true)
			remote = remote[copy(b, remote):]
		}
	default:
		c.failWRLocked(s, wr, verbs.WCLocQPOpErr)
		return
	}
	if wr.Flags&verbs.Signaled != 0 {
		src.pushWCLocked(wc, false)
	}
}

// scatter copies b into sinks from sink *k on, advancing the sinks.
func scatter(sinks [][]byte, k *int, b []byte) {
	for len(b) > 0 && *k < len(sinks) {
		n := copy(sinks[*k], b)
		sinks[*k] = sinks[*k][n:]
		b = b[n:]
		if len(sinks[*k]) == 0 {
			*k++
		}
	}
}

// failWRLocked completes wr of side s with status and fails the connection.
func (c *Conn) failWRLocked(s Side, wr *verbs.SendWR, st verbs.WCStatus) {
	c.stats[s].add(&c.net.stats, statError, 0)
	c.ep[s].pushWCLocked(verbs.WC{ID: wr.ID, Status: st, Opcode: wcOpcode(wr.Op), QPNum: c.ep[s].qpn}, false)
	c.failLocked()
}

func wcOpcode(o verbs.Opcode) verbs.WCOpcode {
	switch o {
	case verbs.OpRDMAWrite:
		return verbs.WCRDMAWrite
	case verbs.OpRDMARead:
		return verbs.WCRDMARead
	}
	return verbs.WCSend
}

// failLocked moves the connection to the error state: everything
// outstanding is flushed and both sides get EventDisconnected. Only an
// established connection fails; idempotent.
func (c *Conn) failLocked() {
	if c.state != stateUp {
		return
	}
	c.state = stateError
	if c.timer != nil {
		c.timer.Stop()
		c.timerAt = time.Time{}
	}
	c.flushLocked()
	for _, e := range c.ep {
		if e != nil {
			e.eventLocked(verbs.CMEvent{Type: verbs.EventDisconnected})
		}
	}
}

// flushLocked completes every queued message and posted receive with
// WCFlushErr.
func (c *Conn) flushLocked() {
	for s, e := range c.ep {
		if e == nil {
			continue
		}
		for c.q[s].len() > 0 {
			o := c.q[s].pop()
			e.pushWCLocked(verbs.WC{ID: o.wr.ID, Status: verbs.WCFlushErr, Opcode: wcOpcode(o.wr.Op), QPNum: e.qpn}, false)
		}
		for e.recvs.len() > 0 {
			r := e.recvs.pop()
			e.pushWCLocked(verbs.WC{ID: r.ID, Status: verbs.WCFlushErr, Opcode: verbs.WCRecv, QPNum: e.qpn}, false)
		}
	}
}

// ---- counters

// Stats count messages by kind.
type Stats struct {
	Sends, RDMAWrites, RDMAReads int64 // messages executed
	Bytes                        int64 // bytes they moved
	Errors                       int64 // work requests that failed (not flushes)
}

const (
	statSend = iota
	statWrite
	statRead
	statError
)

type counters struct {
	n     [4]atomic.Int64
	bytes atomic.Int64
}

func (c *counters) add(also *counters, kind, bytes int) {
	c.n[kind].Add(1)
	c.bytes.Add(int64(bytes))
	if also != nil {
		also.add(nil, kind, bytes)
	}
}

func (c *counters) snapshot() Stats {
	return Stats{Sends: c.n[statSend].Load(), RDMAWrites: c.n[statWrite].Load(), RDMAReads: c.n[statRead].Load(),
		Bytes: c.bytes.Load(), Errors: c.n[statError].Load()}
}

// ---- fifo

// fifo is a ring buffer that grows: no allocation once it is big enough.
type fifo[T any] struct {
	buf        []T
	head, size int
}

func (f *fifo[T]) len() int { return f.size }

func (f *fifo[T]) push(v T) {
	if f.size == len(f.buf) {
		nb := make([]T, max(16, 2*len(f.buf)))
		for i := range f.size {
			nb[i] = f.buf[(f.head+i)%len(f.buf)]
		}
		f.buf, f.head = nb, 0
	}
	f.buf[(f.head+f.size)%len(f.buf)] = v
	f.size++
}

func (f *fifo[T]) peek() *T { return &f.buf[f.head] }

func (f *fifo[T]) pop() T {
	v := f.buf[f.head]
	var zero T
	f.buf[f.head] = zero
	f.head = (f.head + 1) % len(f.buf)
	f.size--
	return v
}
