package client

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"syscall"

	"rbd/internal/auth"
	"rbd/internal/stats"
	"rbd/internal/transport"
	"rbd/internal/verbs"
	"rbd/internal/wire"
)

// Config says what to connect to and how.
type Config struct {
	Target netip.AddrPort // the target's rdma_cm address (port 65000 by default)
	Source netip.AddrPort // optional source address (picks the local RDMA device)
	Export string         // the export's name on the target (/dev/ram0)
	Queues int            // connections (default 1)
	Queue  QueueConfig
	// ReadOnly asks for read-only access.
	ReadOnly bool
	// Session reuses a session id (a reconnecting initiator); zero: a new one
	// (128 bits from the system's random source).
	Session wire.SessionID
	// Key, if set, authenticates every connection with the export's
	// pre-shared key (protocol version 3), and the target must prove it
	// holds it too; a target that cannot is refused.
	Key   auth.Key
	Log   *slog.Logger
	Stats *stats.Counters
	// Transport makes the queues' connections (default: RDMA over rdma_cm).
	Transport transport.Dialer
}

// Defaults of QueueConfig.
const (
	DefaultDepth  = 128
	DefaultMaxIO  = 256 << 10
	DefaultInline = 4096
)

// Session is an open export on a target: its geometry and its queues.
type Session struct {
	cfg    Config
	log    *slog.Logger
	ID     wire.SessionID
	Export wire.OpenReply // size, block sizes, capabilities
	Stats  *stats.Counters

	mu     sync.Mutex
	queues []*Queue
	closed bool
}

// Dial connects every queue of a new session and opens the export on each.
func Dial(ctx context.Context, cfg Config) (*Session, error) {
	if cfg.Queues <= 0 {
		cfg.Queues = 1
	}
	if cfg.Queue.Depth <= 0 {
		cfg.Queue.Depth = DefaultDepth
	}
	if cfg.Queue.Depth < 2 || cfg.Queue.Depth > 4096 {
		return nil, fmt.Errorf("client: queue depth %d: want 2..4096", cfg.Queue.Depth)
	}
	if cfg.Queue.MaxIO <= 0 {
		cfg.Queue.MaxIO = DefaultMaxIO
	}
	if cfg.Queue.Inline < 0 {
		cfg.Queue.Inline = 0
	}
	if cfg.Queue.KeepAlive <= 0 {
		cfg.Queue.KeepAlive = DefaultKeepAlive
	}
	if cfg.Queue.KeepAliveTimeout <= 0 {
		cfg.Queue.KeepAliveTimeout = DefaultKeepAliveTimeout
	}
	if cfg.Queue.ReconnectDelay <= 0 {
		cfg.Queue.ReconnectDelay = DefaultReconnectDelay
	}
	if cfg.Queue.ReconnectDelayMax < cfg.Queue.ReconnectDelay {
		cfg.Queue.ReconnectDelayMax = max(DefaultReconnectDelayMax, cfg.Queue.ReconnectDelay)
	}
	if cfg.Queue.CtrlLossTimeout == 0 {
		cfg.Queue.CtrlLossTimeout = DefaultCtrlLossTimeout
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Stats == nil {
		cfg.Stats = stats.NewCounters()
	}
	if cfg.Transport == nil {
		cfg.Transport = transport.RDMA{}
	}
	if cfg.Session == (wire.SessionID{}) {
		rand.Read(cfg.Session[:])
	}
	if !cfg.Target.IsValid() {
		return nil, errors.New("client: no target address")
	}
	s := &Session{cfg: cfg, log: cfg.Log.With("target", cfg.Target, "export", cfg.Export), ID: cfg.Session, Stats: cfg.Stats}
	for i := range cfg.Queues {
		q, err := dialQueue(ctx, s, i)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.mu.Lock()
		s.queues = append(s.queues, q)
		s.mu.Unlock()
		rep, err := q.open(ctx, q.conn.Load())
		if err != nil {
			s.Close()
			return nil, err
		}
		if i == 0 {
			s.Export = rep
		} else if rep.Size != s.Export.Size || rep.LogicalBlockSize != s.Export.LogicalBlockSize {
			s.Close()
			return nil, fmt.Errorf("client: queue %d sees another geometry than queue 0", i)
		}
	}
	return s, nil
}

// ExportError is an OPEN the target refused, with its reason. Keyed says
// whether the OPEN carried a proof (with StatusAccess: a wrong key, or none
// on the target; without: the export requires one).
type ExportError struct {
	Export  string
	Status  wire.Status
	Message string
	Keyed   bool
}

func (e *ExportError) Error() string {
	if e.Message != "" {
		return "target: " + e.Message
	}
	return fmt.Sprintf("target refused export %s: %v", e.Export, e.Status)
}

func (e *ExportError) Unwrap() error { return e.Status.Err() }

// AuthError: the target did not prove that it holds the export's key.
type AuthError struct {
	Target netip.AddrPort
	Export string
}

func (e *AuthError) Error() string {
	return fmt.Sprintf("target %s did not prove that it holds the key for %s: it is not the target the key belongs to, or its key differs; refusing it", e.Target, e.Export)
}

// open OPENs connection c of the queue on the export, under the session's id
// and the queue's index.
func (q *Queue) open(ctx context.Context, c *qconn) (wire.OpenReply, error) {
	s := q.sess
	o := wire.Open{Session: s.ID, Queue: uint16(q.index), Queues: uint16(s.cfg.Queues), ExportName: s.cfg.Export}
	if s.cfg.ReadOnly {
		o.Flags |= wire.OpenReadOnly
	}
	keyed := !s.cfg.Key.IsZero()
	if keyed {
		// the answer to this connection's challenge (the accept's nonce)
		o.Flags |= wire.OpenAuth
		o.Nonce = auth.Nonce()
		o.MAC = auth.InitiatorProof(s.cfg.Key, c.nonce, &o)
	}
	buf := make([]byte, wire.MinDataArea)
	m, err := o.Encode(buf)
	if err != nil {
		return wire.OpenReply{}, err
	}
	st, data, err := q.control_(ctx, c, wire.OpOpen, 0, buf[:m])
	if err != nil {
		return wire.OpenReply{}, fmt.Errorf("OPEN of %s on %s: %w", s.cfg.Export, s.cfg.Target, err)
	}
	rep, derr := wire.DecodeOpenReply(data, st == wire.StatusOK)
	if st != wire.StatusOK {
		return rep, &ExportError{Export: s.cfg.Export, Status: st, Message: rep.Message, Keyed: keyed}
	}
	if derr != nil {
		return rep, fmt.Errorf("target %s: bad OPEN reply: %w", s.cfg.Target, derr)
	}
	if keyed && (rep.Flags&wire.OpenReplyAuth == 0 || !auth.CheckTarget(s.cfg.Key, c.nonce, &o, data, rep.MAC)) {
		return rep, &AuthError{Target: s.cfg.Target, Export: s.cfg.Export}
	}
	if !keyed && rep.Flags&wire.OpenReplyAuth != 0 {
		return rep, fmt.Errorf("target %s: OPEN reply carries a proof that was not asked for", s.cfg.Target)
	}
	return rep, nil
}

// Queues are the session's connections.
func (s *Session) Queues() []*Queue {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Queue(nil), s.queues...)
}

// Config is the session's configuration (with defaults filled in).
func (s *Session) Config() Config { return s.cfg }

// Close ends every queue: DISCONNECT (each answered once its earlier requests
// are), then the connections go. It is idempotent.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	qs := s.queues
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, q := range qs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q.close(true)
		}()
	}
	wg.Wait()
	return nil
}

// TargetError explains why connecting to a target failed, for a person.
type TargetError struct {
	Target netip.AddrPort
	Reason string
	Err    error
}

func (e *TargetError) Error() string { return e.Reason }
func (e *TargetError) Unwrap() error { return e.Err }

// connectError turns a failed rdma_cm connect into a message that names the
// cause and the fix.
func connectError(t netip.AddrPort, err error) error {
	var rej *verbs.RejectedError
	if errors.As(err, &rej) {
		if r, ok := wire.DecodeReject(rej.PrivateData); ok {
			return &TargetError{t, fmt.Sprintf("target %s refused the connection: %s: %s", t, r.Reason, r.Message), err}
		}
		if rej.NoListener() {
			return &TargetError{t, fmt.Sprintf("target %s is not listening: no rbdt (or nothing) on RDMA port %d there; start rbdt on the target (systemctl start rbdt) or check the port", t.Addr(), t.Port()), err}
		}
	}
	var ce *verbs.ConnectError
	if errors.As(err, &ce) {
		if errors.Is(err, syscall.ETIMEDOUT) || ce.Event == verbs.EventUnreachable {
			return &TargetError{t, fmt.Sprintf("target %s does not answer (connection timed out): is the address right and the RDMA link up?", t), err}
		}
	}
	return &TargetError{t, fmt.Sprintf("connecting to target %s: %v", t, err), err}
}
