package memt

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"rbd/internal/transport"
	"rbd/internal/verbs"
)

// Options configure a Network.
type Options struct {
	// Seed seeds the random choices of fault injection (Conn.Reorder): the
	// connection made k-th (from 0) draws from a generator seeded with
	// (Seed, k).
	Seed uint64
	// RNRError: a SEND that finds no receive posted fails the connection with
	// verbs.WCRNRRetryExcErr at once (rnr_retry below 7). Default: it waits
	// for the peer's next PostRecv (rnr_retry = 7, "infinite").
	RNRError bool
	// InitiatorAddr is the address an endpoint dialed with no source address
	// appears from (default 192.0.2.1); each dialed endpoint gets a port of
	// its own.
	InitiatorAddr netip.Addr
	// OnConnect, if set, is called with each new connection when its connect
	// request is made, before the listener sees it: the place to set faults
	// (DropAfter, Hold, ...) on every connection of a network. It must not
	// block or call back into the network's endpoints.
	OnConnect func(*Conn)
}

// Network is an in-memory RDMA fabric: Listen binds any address, Open makes
// endpoints that connect to what is bound there.
type Network struct {
	opts Options

	mu        sync.Mutex
	listeners map[netip.AddrPort]*listener
	conns     []*Conn
	nextPort  uint16

	keys  atomic.Uint32
	qpns  atomic.Uint32
	ports atomic.Uint32
	nconn atomic.Uint64

	stats counters
}

var (
	_ transport.Dialer   = (*Network)(nil)
	_ transport.Network  = (*Network)(nil)
	_ transport.Endpoint = (*Endpoint)(nil)
)

// New makes a network.
func New(opts Options) *Network {
	if !opts.InitiatorAddr.IsValid() {
		opts.InitiatorAddr = netip.MustParseAddr("192.0.2.1")
	}
	return &Network{opts: opts, listeners: map[netip.AddrPort]*listener{}, nextPort: 40000}
}

// Conns lists the connections made so far (connected or not, live or not),
// in the order their connect requests were made.
func (n *Network) Conns() []*Conn {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Conn(nil), n.conns...)
}

// Stats are the network's counters, over every connection.
func (n *Network) Stats() Stats { return n.stats.snapshot() }

// ---- listening

type listener struct {
	net   *Network
	addr  netip.AddrPort
	reqs  chan *request
	done  chan struct{}
	close sync.Once
}

// Listen binds addr (port 0: a free port of the network).
func (n *Network) Listen(addr netip.AddrPort) (transport.Listener, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if addr.Port() == 0 {
		for {
			n.nextPort++
			a := netip.AddrPortFrom(addr.Addr(), n.nextPort)
			if n.listeners[a] == nil {
				addr = a
				break
			}
		}
	}
	if n.listeners[addr] != nil {
		return nil, fmt.Errorf("memt: listen on %s: %w", addr, syscall.EADDRINUSE)
	}
	l := &listener{net: n, addr: addr, reqs: make(chan *request, 64), done: make(chan struct{})}
	n.listeners[addr] = l
	return l, nil
}

func (l *listener) Addr() netip.AddrPort { return l.addr }

func (l *listener) Accept(ctx context.Context) (transport.Request, error) {
	select {
	case r := <-l.reqs:
		return r, nil
	case <-l.done:
		return nil, verbs.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close unbinds the address; connect requests not yet accepted are refused
// as if nothing listened.
func (l *listener) Close() error {
	l.close.Do(func() {
		l.net.mu.Lock()
		if l.net.listeners[l.addr] == l {
			delete(l.net.listeners, l.addr)
		}
		l.net.mu.Unlock()
		close(l.done)
		for {
			select {
			case r := <-l.reqs:
				r.answer(connResult{err: noListener(r.dst)})
			default:
				return
			}
		}
	})
	return nil
}

// lookup finds the listener for dst: bound to it exactly, or to the
// unspecified address of its family and port.
func (n *Network) lookup(dst netip.AddrPort) *listener {
	n.mu.Lock()
	defer n.mu.Unlock()
	if l := n.listeners[dst]; l != nil {
		return l
	}
	any := netip.IPv4Unspecified()
	if dst.Addr().Is6() && !dst.Addr().Is4In6() {
		any = netip.IPv6Unspecified()
	}
	return n.listeners[netip.AddrPortFrom(any, dst.Port())]
}

// IB CM reject reasons (verbs keeps its constants unexported).
const (
	rejInvalidServiceID = 8  // nothing listens: RejectedError.NoListener
	rejConsumerDefined  = 28 // the application rejected
)

func noListener(dst netip.AddrPort) error {
	return &verbs.RejectedError{Status: rejInvalidServiceID, Remote: dst}
}

// ---- connection set-up

type connResult struct {
	ev  verbs.CMEvent
	err error
}

type request struct {
	c      *Conn
	dst    netip.AddrPort
	pd     []byte
	rr     uint8
	remote netip.AddrPort
	res    chan connResult // one answer
	once   sync.Once
}

func (r *request) answer(res connResult) { r.once.Do(func() { r.res <- res }) }

func (r *request) PrivateData() []byte        { return r.pd }
func (r *request) ResponderResources() uint8  { return r.rr }
func (r *request) RemoteAddr() netip.AddrPort { return r.remote }

func (r *request) Endpoint(caps verbs.QPCaps) (transport.Endpoint, error) {
	c := r.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ep[Target] != nil {
		return nil, fmt.Errorf("memt: request already has its endpoint: %w", syscall.EINVAL)
	}
	e := c.net.newEndpoint(c, Target, caps, r.dst, r.remote)
	c.ep[Target] = e
	return e, nil
}

func (r *request) Reject(pd []byte) error {
	if len(pd) > verbs.MaxRejectPrivateData {
		pd = pd[:verbs.MaxRejectPrivateData]
	}
	c := r.c
	c.mu.Lock()
	e := c.ep[Target]
	if c.state == stateConnecting {
		c.state = stateRejected
	}
	c.mu.Unlock()
	if e != nil {
		e.Close()
	}
	r.answer(connResult{err: &verbs.RejectedError{Status: rejConsumerDefined, PrivateData: append([]byte(nil), pd...), Remote: r.dst}})
	return nil
}

// Open makes an endpoint towards dst (nothing is checked until Connect, as
// with rdma_cm, where a missing listener is a reject of the connect).
func (n *Network) Open(ctx context.Context, src, dst netip.AddrPort, caps verbs.QPCaps) (transport.Endpoint, error) {
	if !dst.IsValid() {
		return nil, fmt.Errorf("memt: open: no destination address: %w", syscall.EINVAL)
	}
	if !src.IsValid() || src.Port() == 0 {
		a := n.opts.InitiatorAddr
		if src.IsValid() {
			a = src.Addr()
		}
		src = netip.AddrPortFrom(a, uint16(50000+n.ports.Add(1)%15000))
	}
	k := n.nconn.Add(1) - 1
	c := &Conn{net: n, seq: k, rng: rand.New(rand.NewPCG(n.opts.Seed, k)), dropAfter: -1}
	c.mu.Lock()
	e := n.newEndpoint(c, Initiator, caps, src, dst)
	c.ep[Initiator] = e
	c.mu.Unlock()
	return e, nil
}

// ---- connections

// Side names an end of a connection.
type Side int

const (
	Initiator Side = 0 // the dialed endpoint
	Target    Side = 1 // the accepted endpoint
)

func (s Side) String() string {
	if s == Initiator {
		return "initiator"
	}
	return "target"
}

type connState int

const (
	stateIdle       connState = iota // dialed endpoint not yet connecting
	stateConnecting                  // connect request made
	stateUp                          // established
	stateError                       // disconnected or failed: everything flushes
	stateRejected                    // the request was rejected, or the dialer gave up
)
