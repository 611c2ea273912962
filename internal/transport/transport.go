package transport

import (
	"context"
	"net/netip"

	"rbd/internal/verbs"
)

// Endpoint is one RC connection. PostSend, PostRecv, Register, Disconnect,
// Wakeup and Close are safe for concurrent use; Poll, Arm and WaitEvent
// belong to one goroutine (the connection's loop); NextEvent to one other.
type Endpoint interface {
	// Register registers buf in the endpoint's protection domain; Close
	// deregisters it.
	Register(buf *verbs.Buffer, access verbs.Access) (*verbs.MR, error)
	// PostSend and PostRecv post work requests in order; they return how
	// many were posted (on error, those before it).
	PostSend(wrs []verbs.SendWR) (int, error)
	PostRecv(wrs []verbs.RecvWR) (int, error)
	// MaxInlineData is the largest send the queue pair copies inline.
	MaxInlineData() int
	// Poll takes up to len(wcs) completions without waiting.
	Poll(wcs []verbs.WC) (int, error)
	// Arm asks for one event at the next completion (solicitedOnly: the next
	// incoming message its sender marked solicited, or an error).
	Arm(solicitedOnly bool) error
	// SolicitedEvents reports whether the device honours solicitedOnly
	// (Linux 6.1 soft-iWARP does not: it never signals a receive to a CQ
	// armed so); where it does not, Arm(true) must not be used.
	SolicitedEvents() bool
	// WaitEvent waits for the event Arm asked for; verbs.ErrClosed once the
	// endpoint is woken or closed.
	WaitEvent(ctx context.Context) error
	// Connect (dialed endpoints) connects with the given parameters and
	// returns the peer's accept (its private data).
	Connect(ctx context.Context, p verbs.ConnParam) (verbs.CMEvent, error)
	// Accept (accepted endpoints) accepts and waits until established.
	Accept(ctx context.Context, p verbs.ConnParam) error
	// NextEvent returns the next connection event (a terminal one ends the
	// connection); verbs.ErrClosed once the endpoint is closed.
	NextEvent(ctx context.Context) (verbs.CMEvent, error)
	// RemoteAddr is the peer's address.
	RemoteAddr() netip.AddrPort
	// Disconnect ends the connection: outstanding work completes with flush
	// errors and the peer sees a terminal event. Idempotent.
	Disconnect() error
	// Wakeup makes a WaitEvent in progress (and later ones) return
	// verbs.ErrClosed, freeing nothing yet.
	Wakeup()
	// Close releases everything (disconnecting first); idempotent.
	Close() error
}

// Dialer makes endpoints towards a target.
type Dialer interface {
	// Open resolves dst (from src, if valid) and creates an endpoint with
	// the given queue-pair capabilities, not yet connected.
	Open(ctx context.Context, src, dst netip.AddrPort, caps verbs.QPCaps) (Endpoint, error)
}

// Network listens for initiators.
type Network interface {
	Listen(addr netip.AddrPort) (Listener, error)
}

// Listener yields connection requests.
type Listener interface {
	Accept(ctx context.Context) (Request, error)
	Addr() netip.AddrPort
	Close() error
}

// Request is a pending connection: make its Endpoint and Accept on it, or
// Reject it. Until Endpoint succeeds the request owns its resources.
type Request interface {
	PrivateData() []byte
	// ResponderResources is how many RDMA READs the peer wants to keep
	// outstanding towards us.
	ResponderResources() uint8
	RemoteAddr() netip.AddrPort
	// Endpoint creates the connection's endpoint; on failure the request can
	// still be rejected.
	Endpoint(caps verbs.QPCaps) (Endpoint, error)
	// Reject refuses the request with private data and frees it; after
	// Endpoint it closes that endpoint too (the caller then frees only its
	// own buffers registered there).
	Reject(privateData []byte) error
}
