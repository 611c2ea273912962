package memt

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"rbd/internal/verbs"
)

// Endpoint is one end of a Conn, a transport.Endpoint.
type Endpoint struct {
	net    *Network
	c      *Conn
	side   Side
	caps   verbs.QPCaps
	qpn    uint32
	local  netip.AddrPort
	remote netip.AddrPort

	// guarded by c.mu
	mrs    map[uint32]*verbs.MR // by lkey
	rmrs   map[uint32]*verbs.MR // by rkey
	recvs  fifo[verbs.RecvWR]
	wcs    fifo[verbs.WC]
	armed  int // armNone, armAny, armSolicited
	closed bool

	ev        chan struct{} // one token per armed event
	woken     chan struct{} // closed by Wakeup and Close
	wakeOnce  sync.Once
	cm        chan verbs.CMEvent
	done      chan struct{} // closed by Close
	closeOnce sync.Once
}

const (
	armNone = iota
	armAny
	armSolicited
)

func (n *Network) newEndpoint(c *Conn, s Side, caps verbs.QPCaps, local, remote netip.AddrPort) *Endpoint {
	return &Endpoint{net: n, c: c, side: s, caps: caps, qpn: n.qpns.Add(1), local: local, remote: remote,
		mrs: map[uint32]*verbs.MR{}, rmrs: map[uint32]*verbs.MR{},
		ev: make(chan struct{}, 1), woken: make(chan struct{}), cm: make(chan verbs.CMEvent, 16), done: make(chan struct{})}
}

// Conn is the endpoint's connection (its faults).
func (e *Endpoint) Conn() *Conn { return e.c }

// Side says which end of its connection the endpoint is.
func (e *Endpoint) Side() Side { return e.side }

// LocalAddr is the endpoint's own address.
func (e *Endpoint) LocalAddr() netip.AddrPort { return e.local }

// RemoteAddr is the peer's address.
func (e *Endpoint) RemoteAddr() netip.AddrPort { return e.remote }

// MaxInlineData is what the capabilities asked for.
func (e *Endpoint) MaxInlineData() int { return e.caps.MaxInlineData }

// Register registers the whole of buf with keys of the network's own: lkey
// and rkey differ, so that one used for the other is an error.
func (e *Endpoint) Register(buf *verbs.Buffer, access verbs.Access) (*verbs.MR, error) {
	k := e.net.keys.Add(1)
	mr, err := verbs.NewSoftMR(buf, 2*k, 2*k+1, access)
	if err != nil {
		return nil, err
	}
	e.c.mu.Lock()
	defer e.c.mu.Unlock()
	if e.closed {
		mr.Close()
		return nil, verbs.ErrClosed
	}
	e.mrs[mr.LKey] = mr
	e.rmrs[mr.RKey] = mr
	return mr, nil
}

// localLocked resolves a local SGE (write: the region must allow local write).
func (e *Endpoint) localLocked(s verbs.SGE, write bool) ([]byte, bool) {
	mr := e.mrs[s.LKey]
	if mr == nil || write && mr.Access&verbs.AccessLocalWrite == 0 {
		return nil, false
	}
	return within(mr, s.Addr, int(s.Length))
}

// remoteLocked resolves n bytes at addr in the region of rkey, with access.
func (e *Endpoint) remoteLocked(addr uint64, rkey uint32, n int, access verbs.Access) ([]byte, bool) {
	mr := e.rmrs[rkey]
	if mr == nil || mr.Access&access == 0 {
		return nil, false
	}
	return within(mr, addr, n)
}

func within(mr *verbs.MR, addr uint64, n int) ([]byte, bool) {
	b := mr.Bytes()
	base := mr.Addr()
	if addr < base || addr-base > uint64(len(b)) || uint64(n) > uint64(len(b))-(addr-base) {
		return nil, false
	}
	o := int(addr - base)
	return b[o : o+n : o+n], true
}

func postError(op string, errno syscall.Errno) error { return &verbs.Error{Op: op, Errno: errno} }

// PostRecv queues receives (flushed at once if the connection failed).
func (e *Endpoint) PostRecv(wrs []verbs.RecvWR) (int, error) {
	c := e.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.closed {
		return 0, verbs.ErrClosed
	}
	for i := range wrs {
		if int(wrs[i].NumSGE) > verbs.MaxSGE || e.caps.MaxRecvSGE > 0 && int(wrs[i].NumSGE) > e.caps.MaxRecvSGE {
			return i, postError("ibv_post_recv", syscall.EINVAL)
		}
		if e.caps.MaxRecvWR > 0 && e.recvs.len() >= e.caps.MaxRecvWR {
			return i, postError("ibv_post_recv", syscall.ENOMEM)
		}
		e.recvs.push(wrs[i])
	}
	if c.state == stateError {
		c.flushLocked()
	} else if c.state == stateUp {
		c.pumpLocked() // a SEND may have waited for a receive
	}
	return len(wrs), nil
}

// PostSend queues sends and executes what can be.
func (e *Endpoint) PostSend(wrs []verbs.SendWR) (int, error) {
	c := e.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.closed {
		return 0, verbs.ErrClosed
	}
	if c.state != stateUp && c.state != stateError {
		return 0, postError("ibv_post_send", syscall.EINVAL) // the QP is not ready to send
	}
	q := &c.q[e.side]
	var now time.Time
	for i := range wrs {
		w := &wrs[i]
		if int(w.NumSGE) > verbs.MaxSGE || e.caps.MaxSendSGE > 0 && int(w.NumSGE) > e.caps.MaxSendSGE {
			return i, postError("ibv_post_send", syscall.EINVAL)
		}
		total := 0
		for k := range w.NumSGE {
			total += int(w.SGE[k].Length)
		}
		if w.Flags&verbs.Inline != 0 && total > e.caps.MaxInlineData {
			return i, postError("ibv_post_send", syscall.EINVAL)
		}
		if e.caps.MaxSendWR > 0 && q.len() >= e.caps.MaxSendWR {
			return i, postError("ibv_post_send", syscall.ENOMEM)
		}
		o := op{wr: *w}
		if d := c.delay[e.side]; d > 0 {
			if now.IsZero() {
				now = time.Now()
			}
			o.due = now.Add(d)
		}
		if c.reorderP > 0 && c.waitOther[e.side].IsZero() && c.waitOther[1-e.side].IsZero() && c.rng.Float64() < c.reorderP {
			if now.IsZero() {
				now = time.Now()
			}
			c.waitOther[e.side] = now.Add(c.reorderW)
		}
		q.push(o)
		c.pumpLocked()
		if q.len() > 0 && w.Flags&verbs.Inline != 0 && c.state == stateUp {
			// it waits: keep its data as the device would, from now
			e.copyInlineLocked(q)
		}
	}
	return len(wrs), nil
}

// copyInlineLocked copies the data of the last queued inline request.
func (e *Endpoint) copyInlineLocked(q *fifo[op]) {
	o := &q.buf[(q.head+q.size-1)%len(q.buf)]
	if o.inline != nil {
		return
	}
	var b []byte
	for k := range o.wr.NumSGE {
		s, ok := e.localLocked(o.wr.SGE[k], false)
		if !ok {
			return // it fails with a protection error when it executes
		}
		b = append(b, s...)
	}
	if b == nil {
		b = []byte{}
	}
	o.inline = b
}

// pushWCLocked adds a completion and signals an armed waiter.
func (e *Endpoint) pushWCLocked(wc verbs.WC, solicited bool) {
	if e.closed {
		return
	}
	e.wcs.push(wc)
	if e.armed == armAny || e.armed == armSolicited && (solicited || wc.Status != verbs.WCSuccess) {
		e.armed = armNone
		select {
		case e.ev <- struct{}{}:
		default:
		}
	}
}

// Poll takes up to len(wcs) completions.
func (e *Endpoint) Poll(wcs []verbs.WC) (int, error) {
	e.c.mu.Lock()
	defer e.c.mu.Unlock()
	if e.closed {
		return 0, verbs.ErrClosed
	}
	n := 0
	for n < len(wcs) && e.wcs.len() > 0 {
		wcs[n] = e.wcs.pop()
		n++
	}
	return n, nil
}

// Arm asks for one event at the next completion (solicitedOnly: the next
// solicited message received, or an error completion).
func (e *Endpoint) Arm(solicitedOnly bool) error {
	e.c.mu.Lock()
	defer e.c.mu.Unlock()
	if e.closed {
		return verbs.ErrClosed
	}
	e.armed = armAny
	if solicitedOnly {
		e.armed = armSolicited
	}
	return nil
}

// WaitEvent waits for the armed event; verbs.ErrClosed once woken or closed.
func (e *Endpoint) WaitEvent(ctx context.Context) error {
	select {
	case <-e.woken:
		return verbs.ErrClosed
	default:
	}
	select {
	case <-e.ev:
		return nil
	case <-e.woken:
		return verbs.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Wakeup makes WaitEvent return verbs.ErrClosed, now and from now on.
func (e *Endpoint) Wakeup() { e.wakeOnce.Do(func() { close(e.woken) }) }

// eventLocked queues a connection event.
func (e *Endpoint) eventLocked(ev verbs.CMEvent) {
	if e.closed {
		return
	}
	select {
	case e.cm <- ev:
	default: // 16 events nobody reads: drop the rest
	}
}

// NextEvent returns the next connection event; verbs.ErrClosed once closed.
func (e *Endpoint) NextEvent(ctx context.Context) (verbs.CMEvent, error) {
	select {
	case ev := <-e.cm:
		return ev, nil
	case <-e.done:
		return verbs.CMEvent{}, verbs.ErrClosed
	case <-ctx.Done():
		return verbs.CMEvent{}, ctx.Err()
	}
}

// Connect sends the connect request to the listener bound to the remote
// address and waits for its accept; nothing bound there is a
// *verbs.RejectedError whose NoListener is true.
func (e *Endpoint) Connect(ctx context.Context, p verbs.ConnParam) (verbs.CMEvent, error) {
	if e.side != Initiator {
		return verbs.CMEvent{}, fmt.Errorf("memt: connect on an accepted endpoint: %w", syscall.EINVAL)
	}
	if len(p.PrivateData) > verbs.MaxConnectPrivateData {
		return verbs.CMEvent{}, fmt.Errorf("memt: connect private data of %d bytes: %w", len(p.PrivateData), syscall.EINVAL)
	}
	c := e.c
	c.mu.Lock()
	if e.closed {
		c.mu.Unlock()
		return verbs.CMEvent{}, verbs.ErrClosed
	}
	if c.state != stateIdle {
		c.mu.Unlock()
		return verbs.CMEvent{}, fmt.Errorf("memt: connect twice: %w", syscall.EISCONN)
	}
	c.state = stateConnecting
	c.mu.Unlock()
	l := e.net.lookup(e.remote)
	if l == nil {
		c.abort()
		return verbs.CMEvent{}, noListener(e.remote)
	}
	r := &request{c: c, dst: l.addr, pd: append([]byte(nil), p.PrivateData...), rr: p.InitiatorDepth,
		remote: e.local, res: make(chan connResult, 1)}
	c.mu.Lock()
	c.req = r
	c.mu.Unlock()
	e.net.mu.Lock()
	e.net.conns = append(e.net.conns, c)
	e.net.mu.Unlock()
	if f := e.net.opts.OnConnect; f != nil {
		f(c)
	}
	select {
	case l.reqs <- r:
	case <-l.done:
		c.abort()
		return verbs.CMEvent{}, noListener(e.remote)
	case <-ctx.Done():
		c.abort()
		return verbs.CMEvent{}, ctx.Err()
	}
	select {
	case res := <-r.res:
		if res.err != nil {
			c.abort()
		}
		return res.ev, res.err
	case <-ctx.Done():
		c.mu.Lock()
		up := c.state == stateUp
		if up {
			c.failLocked()
		} else {
			c.state = stateRejected
		}
		c.mu.Unlock()
		return verbs.CMEvent{}, ctx.Err()
	case <-e.done:
		return verbs.CMEvent{}, verbs.ErrClosed
	}
}

// abort ends a connection attempt that did not get through.
func (c *Conn) abort() {
	c.mu.Lock()
	if c.state == stateConnecting {
		c.state = stateRejected
	}
	c.mu.Unlock()
}

// Accept establishes the connection and hands the dialer p's private data.
func (e *Endpoint) Accept(ctx context.Context, p verbs.ConnParam) error {
	if e.side != Target {
		return fmt.Errorf("memt: accept on a dialed endpoint: %w", syscall.EINVAL)
	}
	if len(p.PrivateData) > verbs.MaxAcceptPrivateData {
		return fmt.Errorf("memt: accept private data of %d bytes: %w", len(p.PrivateData), syscall.EINVAL)
	}
	c := e.c
	c.mu.Lock()
	if e.closed {
		c.mu.Unlock()
		return verbs.ErrClosed
	}
	if c.state != stateConnecting {
		c.mu.Unlock()
		return &verbs.ConnectError{Event: verbs.EventConnectError, Remote: e.remote, Err: syscall.ECONNABORTED}
	}
	c.state = stateUp
	c.pumpLocked()
	r := c.req
	c.mu.Unlock()
	r.answer(connResult{ev: verbs.CMEvent{Type: verbs.EventEstablished, PrivateData: append([]byte(nil), p.PrivateData...),
		ResponderResources: p.ResponderResources, InitiatorDepth: p.InitiatorDepth}})
	return nil
}

// Disconnect fails the connection (flushing both sides, EventDisconnected to
// both); idempotent.
func (e *Endpoint) Disconnect() error {
	e.c.Drop()
	return nil
}

// Close disconnects, wakes every waiter, and deregisters the endpoint's
// regions; idempotent.
func (e *Endpoint) Close() error {
	e.closeOnce.Do(func() {
		c := e.c
		c.mu.Lock()
		c.failLocked()
		if c.state == stateConnecting && e.side == Initiator || c.state == stateIdle {
			c.state = stateRejected
		}
		e.closed = true
		mrs := e.mrs
		e.mrs, e.rmrs = map[uint32]*verbs.MR{}, map[uint32]*verbs.MR{}
		c.mu.Unlock()
		e.Wakeup()
		close(e.done)
		for _, mr := range mrs {
			mr.Close()
		}
	})
	return nil
}
