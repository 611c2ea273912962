package verbs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"
	"unsafe"
)

// CMEventType is enum rdma_cm_event_type.
type CMEventType int

const (
	EventAddrResolved   CMEventType = 0
	EventAddrError      CMEventType = 1
	EventRouteResolved  CMEventType = 2
	EventRouteError     CMEventType = 3
	EventConnectRequest CMEventType = 4
	EventConnectResp    CMEventType = 5
	EventConnectError   CMEventType = 6
	EventUnreachable    CMEventType = 7
	EventRejected       CMEventType = 8
	EventEstablished    CMEventType = 9
	EventDisconnected   CMEventType = 10
	EventDeviceRemoval  CMEventType = 11
	EventAddrChange     CMEventType = 14
	EventTimewaitExit   CMEventType = 15
)

func (t CMEventType) String() string {
	if !cgoAvailable {
		return fmt.Sprintf("CM event %d", int(t))
	}
	return cEventString(t)
}

// CMEvent is an rdma_cm event, copied out of librdmacm and already acknowledged.
type CMEvent struct {
	Type   CMEventType
	Status int // errno (negative) or transport reject reason
	// PrivateData of a connect request, accept or reject.
	PrivateData []byte
	// The peer's RDMA READ limits (connect request, established).
	ResponderResources uint8
	InitiatorDepth     uint8
}

type rawCMEvent struct {
	Type               CMEventType
	Status             int
	PrivateData        []byte
	ResponderResources uint8
	InitiatorDepth     uint8
	id, listenID       unsafe.Pointer
}

// EventChannel is an rdma_cm event channel; its fd is non-blocking and waited
// on with Go's netpoller.
type EventChannel struct {
	lt  lifetime
	ch  unsafe.Pointer
	pfd *pollFD
}

func newEventChannel() (*EventChannel, error) {
	if !cgoAvailable {
		return nil, errNoCgo
	}
	ch, fd, err := cCreateEventChannel()
	if err != nil {
		return nil, err
	}
	pfd, err := newPollFD(fd, "rdma_event_channel")
	if err != nil {
		cDestroyEventChannel(ch)
		return nil, err
	}
	return &EventChannel{ch: ch, pfd: pfd}, nil
}

// next waits for the next event.
func (ec *EventChannel) next(ctx context.Context) (rawCMEvent, error) {
	var ev rawCMEvent
	var gerr error
	err := ec.pfd.read(ctx, func() bool {
		if !ec.lt.acquire() {
			gerr = ErrClosed
			return true
		}
		e, err := cGetCMEvent(ec.ch)
		ec.lt.release()
		if err == syscall.EAGAIN || err == syscall.EWOULDBLOCK {
			return false
		}
		if err != nil {
			gerr = newError("rdma_get_cm_event", err.(syscall.Errno))
			return true
		}
		ev = e
		return true
	})
	if err == nil {
		err = gerr
	}
	return ev, err
}

// Close wakes waiters (they get ErrClosed) and destroys the channel.
func (ec *EventChannel) Close() error {
	ec.pfd.close()
	if !ec.lt.close() {
		return nil
	}
	defer ec.lt.unlock()
	cDestroyEventChannel(ec.ch)
	return nil
}

// CMID is an rdma_cm identifier (struct rdma_cm_id) with an event channel of
// its own, so that each connection sees only its own events.
type CMID struct {
	lt  lifetime
	id  unsafe.Pointer
	ec  *EventChannel
	qp  *QP
	ctx *Context
}

func newCMID() (*CMID, error) {
	ec, err := newEventChannel()
	if err != nil {
		return nil, err
	}
	id, err := cCreateID(ec.ch)
	if err != nil {
		ec.Close()
		return nil, err
	}
	return &CMID{id: id, ec: ec}, nil
}

// Context is the device the identifier is bound to (after address resolution,
// or for a connect request); it belongs to librdmacm.
func (id *CMID) Context() *Context {
	if id.ctx == nil {
		if !id.lt.acquire() {
			return &Context{}
		}
		defer id.lt.release()
		if p := cIDVerbs(id.id); p != nil {
			id.ctx = &Context{ctx: p}
		} else {
			return &Context{}
		}
	}
	return id.ctx
}

// Port is the device port the identifier uses.
func (id *CMID) Port() int {
	if !id.lt.acquire() {
		return 0
	}
	defer id.lt.release()
	return cIDPort(id.id)
}

// LocalAddr and RemoteAddr are the identifier's IP endpoints.
func (id *CMID) LocalAddr() netip.AddrPort {
	if !id.lt.acquire() {
		return netip.AddrPort{}
	}
	defer id.lt.release()
	l, _ := cIDAddrs(id.id)
	return l
}

func (id *CMID) RemoteAddr() netip.AddrPort {
	if !id.lt.acquire() {
		return netip.AddrPort{}
	}
	defer id.lt.release()
	_, r := cIDAddrs(id.id)
	return r
}

// QP is the identifier's queue pair (nil before CreateQP).
func (id *CMID) QP() *QP { return id.qp }

// NextEvent waits for the identifier's next event (DISCONNECTED once connected).
func (id *CMID) NextEvent(ctx context.Context) (CMEvent, error) {
	ev, err := id.ec.next(ctx)
	if err != nil {
		return CMEvent{}, err
	}
	return ev.public(), nil
}

func (ev rawCMEvent) public() CMEvent {
	return CMEvent{Type: ev.Type, Status: ev.Status, PrivateData: ev.PrivateData,
		ResponderResources: ev.ResponderResources, InitiatorDepth: ev.InitiatorDepth}
}

// WaitDisconnect returns when the peer disconnects or the connection fails.
// It then disconnects this side too, so that the QP's outstanding work is
// flushed (InfiniBand and RoCE leave the QP usable until the local side
// disconnects).
func (id *CMID) WaitDisconnect(ctx context.Context) error {
	for {
		ev, err := id.NextEvent(ctx)
		if err != nil {
			return err
		}
		if ev.Type.Terminal() {
			id.Disconnect()
			return nil
		}
	}
}

// Terminal reports whether the event ends an established connection.
func (t CMEventType) Terminal() bool {
	switch t {
	case EventDisconnected, EventDeviceRemoval, EventConnectError, EventUnreachable, EventRejected:
		return true
	}
	return false
}

// Disconnect starts an orderly disconnect: outstanding work requests are
// flushed (IBV_WC_WR_FLUSH_ERR) and the peer sees DISCONNECTED.
//
// Disconnect and the QP's destruction exclude each other: librdmacm moves
// the QP to the error state in rdma_disconnect, so the QP is held while it
// runs (once destroyed, only the connection is torn down).
func (id *CMID) Disconnect() error {
	if !id.lt.acquire() {
		return ErrClosed
	}
	defer id.lt.release()
	if qp := id.qp; qp != nil && qp.lt.acquire() {
		defer qp.lt.release()
	}
	return cDisconnect(id.id)
}

// Close destroys the queue pair, the identifier and its event channel; it is
// idempotent and wakes any goroutine waiting for an event.
func (id *CMID) Close() error {
	id.ec.pfd.close()
	if id.qp != nil {
		id.qp.Close()
	}
	if !id.lt.close() {
		return nil
	}
	err := cDestroyID(id.id)
	id.lt.unlock()
	id.ec.Close()
	return err
}

// ---- active side

// Default timeouts of address and route resolution.
const (
	ResolveTimeout = 2 * time.Second
)

// Resolve creates an identifier and resolves dst's address and route, from src
// if valid (the source address picks the device). It fails fast with a
// *ResolveError when no RDMA device serves the route.
func Resolve(ctx context.Context, src, dst netip.AddrPort) (*CMID, error) {
	id, err := newCMID()
	if err != nil {
		return nil, err
	}
	tmo := int(ResolveTimeout / time.Millisecond)
	if d, ok := ctx.Deadline(); ok {
		tmo = max(min(tmo, int(time.Until(d)/time.Millisecond)), 1)
	}
	if err := cResolveAddr(id.id, src, dst, tmo); err != nil {
		id.Close()
		return nil, &ResolveError{Stage: "address", Dst: dst, Err: err}
	}
	if err := id.expect(ctx, EventAddrResolved, "address", dst); err != nil {
		id.Close()
		return nil, err
	}
	if err := cResolveRoute(id.id, tmo); err != nil {
		id.Close()
		return nil, &ResolveError{Stage: "route", Dst: dst, Err: err}
	}
	if err := id.expect(ctx, EventRouteResolved, "route", dst); err != nil {
		id.Close()
		return nil, err
	}
	return id, nil
}

func (id *CMID) expect(ctx context.Context, want CMEventType, stage string, dst netip.AddrPort) error {
	ev, err := id.ec.next(ctx)
	if err != nil {
		return &ResolveError{Stage: stage, Dst: dst, Err: err}
	}
	if ev.Type != want {
		return &ResolveError{Stage: stage, Dst: dst, Event: ev.Type, Err: statusErr(ev.Status)}
	}
	return nil
}

func statusErr(status int) error {
	if status < 0 {
		return syscall.Errno(-status)
	}
	return fmt.Errorf("status %d", status)
}

// ResolveError is a failed address or route resolution.
type ResolveError struct {
	Stage string // "address" or "route"
	Dst   netip.AddrPort
	Event CMEventType // the event that came instead (0 when a call failed)
	Err   error
}

func (e *ResolveError) Error() string {
	s := fmt.Sprintf("verbs: resolving the %s of %s", e.Stage, e.Dst)
	if e.Event != 0 {
		s += ": " + e.Event.String()
	}
	return s + ": " + e.Err.Error()
}

func (e *ResolveError) Unwrap() error { return e.Err }

// Connect connects the identifier (with its QP created) and waits until the
// connection is established. It returns the private data of the peer's accept
// (with its RDMA READ limits); a refusal by the peer is a *RejectedError.
func (id *CMID) Connect(ctx context.Context, p ConnParam) (CMEvent, error) {
	if !id.lt.acquire() {
		return CMEvent{}, ErrClosed
	}
	err := cConnect(id.id, false, &p)
	id.lt.release()
	if errors.Is(err, syscall.ECONNREFUSED) { // iWARP connects TCP at once
		return CMEvent{}, &RejectedError{Status: -int(syscall.ECONNREFUSED), Remote: id.RemoteAddr()}
	}
	if err != nil {
		return CMEvent{}, err
	}
	return id.waitEstablished(ctx)
}

func (id *CMID) waitEstablished(ctx context.Context) (CMEvent, error) {
	for {
		ev, err := id.ec.next(ctx)
		if err != nil {
			return CMEvent{}, err
		}
		switch ev.Type {
		case EventEstablished:
			return ev.public(), nil
		case EventRejected:
			return CMEvent{}, &RejectedError{Status: ev.Status, PrivateData: ev.PrivateData, Remote: id.RemoteAddr()}
		case EventConnectError, EventUnreachable, EventDisconnected, EventDeviceRemoval:
			return CMEvent{}, &ConnectError{Event: ev.Type, Remote: id.RemoteAddr(), Err: statusErr(ev.Status)}
		}
	}
}

// ConnectError is a connection attempt that failed without a reject.
type ConnectError struct {
	Event  CMEventType
	Remote netip.AddrPort
	Err    error
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("verbs: connecting to %s: %s: %v", e.Remote, e.Event, e.Err)
}

func (e *ConnectError) Unwrap() error { return e.Err }

// IB CM reject reasons that matter here.
const (
	rejInvalidServiceID = 8  // nothing listens on the port
	rejConsumerDefined  = 28 // the peer application rejected (with private data)
)

// RejectedError is a connection the peer (or its transport) refused.
type RejectedError struct {
	Status      int // IB CM reject reason, or a negative errno on iWARP
	PrivateData []byte
	Remote      netip.AddrPort
}

// NoListener reports whether nothing was listening on the port.
func (e *RejectedError) NoListener() bool {
	return e.Status == rejInvalidServiceID ||
		(e.Status == -int(syscall.ECONNREFUSED) && len(e.PrivateData) == 0)
}

func (e *RejectedError) Error() string {
	if e.NoListener() {
		return fmt.Sprintf("verbs: connecting to %s: connection refused: nothing listens on that port", e.Remote)
	}
	return fmt.Sprintf("verbs: connecting to %s: rejected by the peer (status %d)", e.Remote, e.Status)
}

// Unwrap makes a refused connection match syscall.ECONNREFUSED.
func (e *RejectedError) Unwrap() error { return syscall.ECONNREFUSED }

// ---- passive side

// Listener accepts rdma_cm connection requests on one address.
type Listener struct {
	id *CMID
}

// Listen binds to addr and listens. The address family is the one asked for:
// "0.0.0.0:65000" takes IPv4 initiators (a dual-stack "[::]" listener rejects
// IPv4 initiators on iWARP), "[::]:65000" IPv6 ones.
func Listen(addr netip.AddrPort, backlog int) (*Listener, error) {
	id, err := newCMID()
	if err != nil {
		return nil, err
	}
	if err := cBindAddr(id.id, addr); err != nil {
		id.Close()
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	if err := cListen(id.id, backlog); err != nil {
		id.Close()
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return &Listener{id: id}, nil
}

// Addr is the address the listener is bound to.
func (l *Listener) Addr() netip.AddrPort { return l.id.LocalAddr() }

// ConnRequest is a pending connection: create the QP on ID, then ID.Accept, or
// Reject. Until then the request owns ID.
type ConnRequest struct {
	ID          *CMID
	PrivateData []byte
	// The peer's RDMA READ wishes, seen from this side (rdma_cm swaps them):
	// ResponderResources is how many RDMA READs the peer wants to keep
	// outstanding towards us (accept with at most that many responder
	// resources), InitiatorDepth how many it serves for us.
	ResponderResources uint8
	InitiatorDepth     uint8
}

// Accept waits for the next connection request. The new identifier is moved
// to an event channel of its own.
func (l *Listener) Accept(ctx context.Context) (*ConnRequest, error) {
	for {
		ev, err := l.id.ec.next(ctx)
		if err != nil {
			return nil, err
		}
		if ev.Type != EventConnectRequest || ev.id == nil {
			continue // ADDR_CHANGE and the like concern the listener only
		}
		ec, err := newEventChannel()
		if err != nil {
			cReject(ev.id, nil)
			cDestroyID(ev.id)
			return nil, err
		}
		if err := cMigrateID(ev.id, ec.ch); err != nil {
			cReject(ev.id, nil)
			cDestroyID(ev.id)
			ec.Close()
			return nil, err
		}
		return &ConnRequest{
			ID:                 &CMID{id: ev.id, ec: ec},
			PrivateData:        ev.PrivateData,
			ResponderResources: ev.ResponderResources,
			InitiatorDepth:     ev.InitiatorDepth,
		}, nil
	}
}

// Reject refuses the request with private data (the reason) and frees its
// identifier.
func (r *ConnRequest) Reject(privateData []byte) error {
	if len(privateData) > MaxRejectPrivateData {
		privateData = privateData[:MaxRejectPrivateData]
	}
	var err error
	if r.ID.lt.acquire() {
		err = cReject(r.ID.id, privateData)
		r.ID.lt.release()
	}
	r.ID.Close()
	return err
}

// Accept accepts the connection (the QP must exist) and waits until it is
// established.
func (id *CMID) Accept(ctx context.Context, p ConnParam) error {
	if id.qp == nil {
		return errors.New("verbs: accept: create the queue pair first")
	}
	if !id.lt.acquire() {
		return ErrClosed
	}
	err := cConnect(id.id, true, &p)
	id.lt.release()
	if err != nil {
		return err
	}
	_, err = id.waitEstablished(ctx)
	return err
}

// Close stops listening; it is idempotent.
func (l *Listener) Close() error { return l.id.Close() }
