package transport

import (
	"context"
	"net/netip"

	"rbd/internal/verbs"
)

// RDMA is the transport over internal/verbs (rdma_cm and libibverbs): a
// Dialer and a Network.
type RDMA struct{}

var (
	_ Dialer  = RDMA{}
	_ Network = RDMA{}
)

// Open resolves dst over rdma_cm and builds the endpoint on the device that
// reaches it.
func (RDMA) Open(ctx context.Context, src, dst netip.AddrPort, caps verbs.QPCaps) (Endpoint, error) {
	id, err := verbs.Resolve(ctx, src, dst)
	if err != nil {
		return nil, err
	}
	ep, err := verbs.NewEndpoint(id, verbs.EndpointConfig{QP: caps})
	if err != nil {
		id.Close()
		return nil, err
	}
	return &rdmaEndpoint{ep}, nil
}

// Listen binds addr on rdma_cm.
func (RDMA) Listen(addr netip.AddrPort) (Listener, error) {
	ln, err := verbs.Listen(addr, 64)
	if err != nil {
		return nil, err
	}
	return rdmaListener{ln}, nil
}

type rdmaListener struct{ ln *verbs.Listener }

func (l rdmaListener) Accept(ctx context.Context) (Request, error) {
	r, err := l.ln.Accept(ctx)
	if err != nil {
		return nil, err
	}
	return &rdmaRequest{r: r}, nil
}
func (l rdmaListener) Addr() netip.AddrPort { return l.ln.Addr() }
func (l rdmaListener) Close() error         { return l.ln.Close() }

type rdmaRequest struct {
	r  *verbs.ConnRequest
	ep *verbs.Endpoint // once Endpoint succeeded
}

func (r *rdmaRequest) PrivateData() []byte        { return r.r.PrivateData }
func (r *rdmaRequest) ResponderResources() uint8  { return r.r.ResponderResources }
func (r *rdmaRequest) RemoteAddr() netip.AddrPort { return r.r.ID.RemoteAddr() }

// Reject refuses the request; after Endpoint it closes the endpoint first,
// keeping the identifier to reject with.
func (r *rdmaRequest) Reject(pd []byte) error {
	if r.ep != nil {
		r.ep.ID = nil
		r.ep.Close()
		r.ep = nil
	}
	return r.r.Reject(pd)
}

func (r *rdmaRequest) Endpoint(caps verbs.QPCaps) (Endpoint, error) {
	ep, err := verbs.NewEndpoint(r.r.ID, verbs.EndpointConfig{QP: caps})
	if err != nil {
		return nil, err
	}
	r.ep = ep
	return &rdmaEndpoint{ep}, nil
}

// rdmaEndpoint adapts a verbs.Endpoint.
type rdmaEndpoint struct{ ep *verbs.Endpoint }

func (e *rdmaEndpoint) Register(b *verbs.Buffer, a verbs.Access) (*verbs.MR, error) {
	return e.ep.Register(b, a)
}
func (e *rdmaEndpoint) PostSend(w []verbs.SendWR) (int, error) { return e.ep.QP.PostSend(w) }
func (e *rdmaEndpoint) PostRecv(w []verbs.RecvWR) (int, error) { return e.ep.QP.PostRecv(w) }
func (e *rdmaEndpoint) MaxInlineData() int                     { return e.ep.QP.Caps.MaxInlineData }
func (e *rdmaEndpoint) Poll(wcs []verbs.WC) (int, error)       { return e.ep.CQ.Poll(wcs) }
func (e *rdmaEndpoint) Arm(solicitedOnly bool) error           { return e.ep.CQ.ArmFor(solicitedOnly) }
func (e *rdmaEndpoint) WaitEvent(ctx context.Context) error    { return e.ep.CQ.WaitEvent(ctx) }
func (e *rdmaEndpoint) WaitEventThread() error                 { return e.ep.CQ.WaitEventThread() }

// SolicitedEvents: InfiniBand and RoCE devices signal solicited receives
// (rxe does); iWARP is taken not to, as Linux 6.1's siw signals a receive
// only to a CQ armed for every completion.
func (e *rdmaEndpoint) SolicitedEvents() bool {
	_, t := e.ep.ID.Context().Kind()
	return t == verbs.TransportIB
}
func (e *rdmaEndpoint) Connect(ctx context.Context, p verbs.ConnParam) (verbs.CMEvent, error) {
	return e.ep.ID.Connect(ctx, p)
}
func (e *rdmaEndpoint) Accept(ctx context.Context, p verbs.ConnParam) error {
	return e.ep.ID.Accept(ctx, p)
}
func (e *rdmaEndpoint) NextEvent(ctx context.Context) (verbs.CMEvent, error) {
	return e.ep.ID.NextEvent(ctx)
}
func (e *rdmaEndpoint) RemoteAddr() netip.AddrPort { return e.ep.ID.RemoteAddr() }
func (e *rdmaEndpoint) Disconnect() error          { return e.ep.ID.Disconnect() }
func (e *rdmaEndpoint) Wakeup()                    { e.ep.Wakeup() }
func (e *rdmaEndpoint) Close() error               { return e.ep.Close() }
