package target

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"time"

	"rbd/internal/api"
	"rbd/internal/auth"
	"rbd/internal/stats"
	"rbd/internal/transport"
	"rbd/internal/verbs"
	"rbd/internal/wire"
)

// Config is what a Server serves and how.
type Config struct {
	Listen  []netip.AddrPort
	Exports []ExportConfig

	// Limits granted to each connection (an initiator gets at most these).
	MaxQueueDepth int // slots and credits per connection (default 128)
	MaxSlotSize   int // bytes, a multiple of 4096 (default 256 KiB)
	MaxInline     int // bytes of inline data (default 4096; 0 disables)
	MaxConns      int // connections at once (default 256)
	// Limits per initiator address (one host must not lock the target's
	// memory or deny the others): connections at once (default 64),
	// handshakes in progress, from the connect request until the OPEN
	// succeeded (default 16), and registered (pinned) slot memory in bytes
	// (default 2 GiB). Negative: no limit.
	MaxConnsPerPeer, MaxHandshakesPerPeer int
	MaxPinnedPerPeer                      int64
	// Transport is what the server listens on (default: RDMA over rdma_cm).
	Transport transport.Network
	// IdleTimeout: a version-2 connection whose initiator sent nothing for
	// this long is dropped, freeing its session's claim and memory (its
	// initiator sends a KEEPALIVE every 5 s even when idle; default 60 s;
	// negative: never). OpenTimeout: a connection that has not OPENed this
	// long after accept is dropped (default 30 s).
	IdleTimeout, OpenTimeout time.Duration
	// BeforeIO, if set, runs before each backend READ or WRITE (tests: a
	// stalled backend).
	BeforeIO func(op wire.Op, offset uint64)
	// Workers per connection doing backend I/O that may block (default: the
	// queue depth, at most 64).
	Workers int
	// InlineIO: a READ or WRITE runs right where its request was polled,
	// with no hand-off to a worker, while the backend's average time per
	// READ or WRITE stays below this (default 200 µs; negative: always in
	// workers). FLUSH, TRIM and WRITE_ZEROES always go to a worker.
	InlineIO time.Duration
	// Spin: how long a connection's loop polls an empty completion queue
	// before it sleeps (default 0: at once).
	Spin time.Duration

	Log *slog.Logger
}

// Defaults.
const (
	DefaultQueueDepth  = 128
	DefaultSlotSize    = 256 << 10
	DefaultInline      = 4096
	DefaultMaxConns    = 256
	DefaultInlineIO    = 200 * time.Microsecond
	DefaultIdleTimeout = 60 * time.Second
	DefaultOpenTimeout = 30 * time.Second
	// Per-peer limits.
	DefaultMaxConnsPerPeer      = 64
	DefaultMaxHandshakesPerPeer = 16
	DefaultMaxPinnedPerPeer     = 2 << 30
	maxWorkers                  = 64
	// maxRDMARead bounds the RDMA READs a connection serves at once.
	maxRDMARead = 16
)

func (c *Config) setDefaults() error {
	if c.MaxQueueDepth == 0 {
		c.MaxQueueDepth = DefaultQueueDepth
	}
	if c.MaxSlotSize == 0 {
		c.MaxSlotSize = DefaultSlotSize
	}
	if c.MaxInline < 0 {
		c.MaxInline = 0
	} else if c.MaxInline == 0 {
		c.MaxInline = DefaultInline
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxConnsPerPeer == 0 {
		c.MaxConnsPerPeer = DefaultMaxConnsPerPeer
	}
	if c.MaxHandshakesPerPeer == 0 {
		c.MaxHandshakesPerPeer = DefaultMaxHandshakesPerPeer
	}
	if c.MaxPinnedPerPeer == 0 {
		c.MaxPinnedPerPeer = DefaultMaxPinnedPerPeer
	}
	if c.Transport == nil {
		c.Transport = transport.RDMA{}
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.OpenTimeout <= 0 {
		c.OpenTimeout = DefaultOpenTimeout
	}
	if c.InlineIO == 0 {
		c.InlineIO = DefaultInlineIO
	}
	switch {
	case c.MaxQueueDepth < 1 || c.MaxQueueDepth > 4096:
		return fmt.Errorf("queue depth %d: want 1..4096", c.MaxQueueDepth)
	case c.MaxSlotSize < 4096 || c.MaxSlotSize%4096 != 0 || c.MaxSlotSize > 32<<20:
		return fmt.Errorf("slot size %d: want a multiple of 4096 up to 32 MiB", c.MaxSlotSize)
	case c.MaxInline > 64<<10:
		return fmt.Errorf("inline size %d: want at most 64 KiB", c.MaxInline)
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return nil
}

// Server serves exports to initiators. Its methods are safe for concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	exports *exports

	mu        sync.Mutex
	listeners []transport.Listener
	sessions  map[wire.SessionID]*session
	conns     map[*conn]struct{}
	closing   bool
	wg        sync.WaitGroup
	// handshaking counts connections being set up: they hold their place
	// under MaxConns from the connect request on, not only once established.
	handshaking int
	// peers: per initiator address, what its connections hold (limits)
	peers map[netip.Addr]*peerUse
	// refused counts refusals by reason (metrics)
	refused map[string]uint64
	// OnSession, if set, is told when sessions start and end (metrics).
	OnSession func(s SessionInfo, up bool)
}

// peerUse is what one initiator address holds: connections (from the
// connect request on), handshakes in progress (until OPEN succeeded) and
// registered slot memory.
type peerUse struct {
	conns, handshakes int
	pinned            int64
}

// peerClaim is one connection's part of its peer's peerUse.
type peerClaim struct {
	addr        netip.Addr
	pinned      int64
	handshaking bool
	released    bool
}

// Refusal reasons counted in Server.Usage.
const (
	RefusedConnLimit      = "connection_limit"
	RefusedPeerConns      = "peer_connections"
	RefusedPeerHandshakes = "peer_handshakes"
	RefusedPeerMemory     = "peer_memory"
	RefusedNotAllowed     = "not_allowed"
	RefusedAuthRequired   = "auth_required"
	RefusedAuthFailed     = "auth_failed"
	RefusedOpenTimeout    = "open_timeout"
)

// PeerUsage is what one initiator address holds.
type PeerUsage struct {
	Addr        netip.Addr
	Conns       int
	Handshakes  int
	PinnedBytes int64
}

// Usage is the state of the limits: per peer, and the refusals since start
// by reason (Refused* constants).
type Usage struct {
	Peers   []PeerUsage
	Refused map[string]uint64
}

// Usage reports what each initiator address holds and what was refused.
func (s *Server) Usage() Usage {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := Usage{Refused: map[string]uint64{}}
	for a, p := range s.peers {
		u.Peers = append(u.Peers, PeerUsage{Addr: a, Conns: p.conns, Handshakes: p.handshakes, PinnedBytes: p.pinned})
	}
	sort.Slice(u.Peers, func(i, j int) bool { return u.Peers[i].Addr.Less(u.Peers[j].Addr) })
	for k, v := range s.refused {
		u.Refused[k] = v
	}
	return u
}

func (s *Server) countRefusal(reason string) {
	s.mu.Lock()
	s.refused[reason]++
	s.mu.Unlock()
}

// claimPeer reserves a new connection's place under its address's limits
// (s.mu held); it says which limit refused it, if one did.
func (s *Server) claimPeer(addr netip.Addr, pinned int64) (*peerClaim, string, string) {
	p := s.peers[addr]
	if p == nil {
		p = &peerUse{}
	}
	lim := &s.cfg
	switch {
	case lim.MaxConnsPerPeer > 0 && p.conns >= lim.MaxConnsPerPeer:
		return nil, RefusedPeerConns, fmt.Sprintf("the target serves at most %d connections per initiator address", lim.MaxConnsPerPeer)
	case lim.MaxHandshakesPerPeer > 0 && p.handshakes >= lim.MaxHandshakesPerPeer:
		return nil, RefusedPeerHandshakes, fmt.Sprintf("the target sets up at most %d connections per initiator address at once (not yet OPENed)", lim.MaxHandshakesPerPeer)
	case lim.MaxPinnedPerPeer > 0 && p.pinned+pinned > lim.MaxPinnedPerPeer:
		return nil, RefusedPeerMemory, fmt.Sprintf("the target registers at most %d MiB of slots per initiator address (ask for a smaller queue depth or slot size, or fewer queues)", lim.MaxPinnedPerPeer>>20)
	}
	p.conns++
	p.handshakes++
	p.pinned += pinned
	s.peers[addr] = p
	return &peerClaim{addr: addr, pinned: pinned, handshaking: true}, "", ""
}

// handshakeDone: the connection OPENed; it no longer counts as a handshake.
func (s *Server) handshakeDone(pc *peerClaim) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pc == nil || pc.released || !pc.handshaking {
		return
	}
	pc.handshaking = false
	s.peers[pc.addr].handshakes--
}

// releasePeer gives a connection's place back (once).
func (s *Server) releasePeer(pc *peerClaim) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pc == nil || pc.released {
		return
	}
	pc.released = true
	p := s.peers[pc.addr]
	p.conns--
	p.pinned -= pc.pinned
	if pc.handshaking {
		p.handshakes--
	}
	if p.conns == 0 {
		delete(s.peers, pc.addr)
	}
}

// allowedAnywhere: some export may be opened from addr (else the connect
// request is refused before any memory is registered for it).
func (s *Server) allowedAnywhere(addr netip.Addr) bool {
	for _, e := range s.exports.list {
		if ok, _ := e.allowed(addr); ok {
			return true
		}
	}
	return false
}

// NewServer checks the configuration and opens the exports. An export that
// cannot be opened now is logged and retried when an initiator asks for it.
func NewServer(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	x, err := newExports(cfg.Exports)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Log, exports: x, sessions: map[wire.SessionID]*session{}, conns: map[*conn]struct{}{},
		peers: map[netip.Addr]*peerUse{}, refused: map[string]uint64{}}
	for _, e := range x.list {
		be, err := e.open()
		if err != nil {
			s.log.Warn("export not available yet", "export", e.Name(), "err", err)
			continue
		}
		s.log.Info("export ready", "export", e.Name(), "size", be.Size(), "block_size", be.LogicalBlockSize(),
			"read_only", e.cfg.ReadOnly, "shared", e.cfg.Shared, "discard", be.CanDiscard(),
			"auth", authMode(e), "key_id", e.cfg.Key.ID(), "allow", len(e.allow))
	}
	return s, nil
}

// Exports lists the exports.
func (s *Server) Exports() []*Export { return s.exports.list }

// Listen binds the configured addresses (rdma_cm). It fails when one cannot be
// bound, for example because no RDMA device serves the address.
func (s *Server) Listen() error {
	for _, a := range s.cfg.Listen {
		ln, err := s.cfg.Transport.Listen(a)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("listen on %s: %w", a, err)
		}
		s.mu.Lock()
		s.listeners = append(s.listeners, ln)
		s.mu.Unlock()
		s.log.Info("listening", "addr", ln.Addr())
	}
	return nil
}

// Addrs are the bound listen addresses.
func (s *Server) Addrs() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []netip.AddrPort
	for _, l := range s.listeners {
		out = append(out, l.Addr())
	}
	return out
}

// Serve accepts connections until ctx ends or Close is called.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	lns := append([]transport.Listener(nil), s.listeners...)
	s.mu.Unlock()
	if len(lns) == 0 {
		return errors.New("rbdt: not listening")
	}
	var wg sync.WaitGroup
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.acceptLoop(ctx, ln)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.reap(ctx)
	}()
	<-ctx.Done()
	s.Close()
	wg.Wait()
	return nil
}

// reap drops connections whose initiator went silent (IdleTimeout) or never
// OPENed (OpenTimeout): a crashed initiator host must not keep its export's
// writer claim and its pinned slots until rbdt restarts.
func (s *Server) reap(ctx context.Context) {
	tick := min(time.Second, s.cfg.OpenTimeout/4)
	if s.cfg.IdleTimeout > 0 {
		tick = min(tick, s.cfg.IdleTimeout/4)
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		s.mu.Lock()
		conns := make([]*conn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		for _, c := range conns {
			quiet := now.Sub(time.Unix(0, c.lastMsg.Load()))
			switch {
			case !c.opened.Load() && quiet > s.cfg.OpenTimeout:
				c.log.Warn("dropping connection", "reason", "no OPEN", "after", quiet.Round(time.Second))
				s.countRefusal(RefusedOpenTimeout)
				c.drop(fmt.Sprintf("no OPEN within %v of the connection", s.cfg.OpenTimeout))
			case c.opened.Load() && c.version >= wire.VersionPush && s.cfg.IdleTimeout > 0 && quiet > s.cfg.IdleTimeout:
				c.log.Warn("dropping connection", "reason", "initiator silent", "for", quiet.Round(time.Second))
				c.drop(fmt.Sprintf("the initiator sent nothing for %v (idle-timeout)", quiet.Round(time.Second)))
			}
		}
	}
}

func (s *Server) acceptLoop(ctx context.Context, ln transport.Listener) {
	for {
		req, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, verbs.ErrClosed) {
				s.log.Error("accept", "addr", ln.Addr(), "err", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handshake(ctx, req)
		}()
	}
}

func (s *Server) reject(req transport.Request, reason wire.RejectReason, msg string) {
	b := make([]byte, wire.RejectHdr+wire.MaxRejectMessage)
	n := (&wire.Reject{MinVersion: wire.MinVersion, MaxVersion: wire.MaxVersion, Reason: reason, Message: msg}).Encode(b)
	req.Reject(b[:n])
}

// handshake negotiates a new connection, builds its resources and accepts it.
func (s *Server) handshake(ctx context.Context, req transport.Request) {
	peer := req.RemoteAddr()
	log := s.log.With("peer", peer)
	cd, err := wire.DecodeConnect(req.PrivateData())
	if err != nil {
		log.Warn("connect request refused", "err", err)
		s.reject(req, wire.RejectBadRequest, err.Error())
		return
	}
	ver, ok, msg := wire.NegotiateConnect(&cd)
	if !ok {
		log.Warn("connect request refused", "err", msg)
		s.reject(req, wire.RejectVersion, msg)
		return
	}
	if !s.allowedAnywhere(peer.Addr()) {
		log.Warn("connect request refused: address not in any export's allow list")
		s.countRefusal(RefusedNotAllowed)
		s.reject(req, wire.RejectNotAllowed, "this target offers no export to this initiator's address")
		return
	}
	depth := min(int(cd.QueueDepth), s.cfg.MaxQueueDepth)
	slot := min(roundDown(int(min(cd.MaxIO, 1<<30)), 4096), s.cfg.MaxSlotSize)
	if slot < 4096 {
		slot = 4096
	}
	inline := min(int(cd.InlineMax), s.cfg.MaxInline)
	s.mu.Lock()
	n, closing := len(s.conns)+s.handshaking, s.closing
	var claim *peerClaim
	var refused, why string
	switch {
	case closing:
	case n >= s.cfg.MaxConns:
		refused, why = RefusedConnLimit, fmt.Sprintf("the target serves at most %d connections", s.cfg.MaxConns)
	default:
		if claim, refused, why = s.claimPeer(peer.Addr().Unmap(), int64(depth)*int64(slot)); claim != nil {
			s.handshaking++
		}
	}
	if refused != "" {
		s.refused[refused]++
	}
	s.mu.Unlock()
	if closing {
		s.reject(req, wire.RejectShuttingDown, "the target is shutting down")
		return
	}
	if refused != "" {
		log.Warn("connect request refused", "limit", refused, "why", why)
		s.reject(req, wire.RejectTooMany, why)
		return
	}
	counted := true // in s.handshaking, until it moves to s.conns
	defer func() {
		if counted {
			s.mu.Lock()
			s.handshaking--
			s.mu.Unlock()
		}
	}()
	claimed := true // the peer claim, until the connection holds it
	defer func() {
		if claimed {
			s.releasePeer(claim)
		}
	}()
	p := connParams{version: ver, depth: depth, slotSize: slot, inline: inline}
	if ver >= wire.VersionPush {
		p.peerKey, p.peerAddr = cd.RegionKey, cd.RegionAddr
	}
	c, err := newConn(s, req, p)
	if err != nil {
		log.Error("cannot set up connection", "err", err)
		// the cause stays in the log: the peer is not authenticated yet
		s.reject(req, wire.RejectResources, "the target cannot set up the connection now (its log says why)") // closes the endpoint too
		c.freeBuffers()
		return
	}
	c.claim = claim
	acc := wire.Accept{Version: ver, Depth: uint16(depth), SlotSize: uint32(slot), InlineMax: uint32(inline),
		SlotRKey: c.slotMR.RKey, SlotAddr: c.slotMR.Addr()}
	if ver >= wire.VersionAuth {
		c.nonce = auth.Nonce() // this connection's challenge
		acc.Nonce = c.nonce
	}
	pd := make([]byte, wire.AcceptSizeV3)
	pd = pd[:acc.Encode(pd)]
	rd := min(req.ResponderResources(), maxRDMARead)
	actx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := c.ep.Accept(actx, verbs.ConnParam{PrivateData: pd, ResponderResources: rd, InitiatorDepth: 0, RetryCount: 7, RNRRetryCount: 7}); err != nil {
		log.Warn("accept failed", "err", err)
		c.free()
		return
	}
	s.mu.Lock()
	s.handshaking--
	counted = false
	if s.closing {
		s.mu.Unlock()
		c.free()
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	claimed = false // released by c.serve when it ends
	log.Debug("connection established", "depth", depth, "slot_size", slot, "inline", inline, "version", ver)
	c.serve(ctx)
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func roundDown(n, m int) int { return n / m * m }

// Close stops listening, drops every connection and closes the exports.
func (s *Server) Close() error {
	s.closeListeners()
	s.mu.Lock()
	s.closing = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	// Graceful: each connection stops taking requests (a request that
	// arrives now is left unanswered: its initiator sends it again after
	// reconnecting), lets the ones running finish and their replies go out,
	// then disconnects.
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.drain(drainTimeout)
			c.drop("target shutting down")
		}()
	}
	wg.Wait()
	s.wg.Wait()
	var errs []error
	for _, e := range s.exports.list {
		errs = append(errs, e.close())
	}
	return errors.Join(errs...)
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	lns := s.listeners
	s.listeners = nil
	s.mu.Unlock()
	for _, l := range lns {
		l.Close()
	}
}

// ---- sessions

type session struct {
	id       wire.SessionID
	export   *Export
	readOnly bool
	queues   int
	conns    map[uint16]*conn
	// fences: per queue, a replaced connection whose requests may still run;
	// the queue's next OPEN is answered only once it has finished.
	fences map[uint16]*conn
	peer   netip.AddrPort
	since  time.Time
	Stats  *stats.Counters
	// authed: opened with the export's key; every connection that joins or
	// replaces one of its queues must prove the key too.
	authed bool
	// tag names the session in logs, listings and metrics; the id itself is
	// a secret of the initiator and the target and is shown nowhere.
	tag string
}

// SessionTag is the name of a session in logs, listings and metrics: the
// first 6 bytes of SHA-256("rbd session tag" ‖ id) in hex. It tells sessions
// apart without disclosing the id (which would let its holder join it).
func SessionTag(id wire.SessionID) string {
	h := sha256.New()
	h.Write([]byte("rbd session tag\x00"))
	h.Write(id[:])
	return hex.EncodeToString(h.Sum(nil)[:6])
}

func authMode(e *Export) string {
	switch {
	case e.requireAuth():
		return "required"
	case !e.cfg.Key.IsZero():
		return "optional"
	}
	return "none"
}

// SessionInfo describes a session for listings. ID is the session's tag
// (SessionTag), not its secret id.
type SessionInfo struct {
	ID       string          `json:"id"`
	Export   string          `json:"export"`
	Peer     string          `json:"peer"`
	ReadOnly bool            `json:"read_only"`
	Queues   int             `json:"queues"`
	Conns    int             `json:"connections"`
	Since    time.Time       `json:"since"`
	Stats    *stats.Counters `json:"-"`
}

func (ss *session) info() SessionInfo {
	return SessionInfo{ID: ss.tag, Export: ss.export.Name(), Peer: ss.peer.String(), ReadOnly: ss.readOnly,
		Queues: ss.queues, Conns: len(ss.conns), Since: ss.since, Stats: ss.Stats}
}

// Status describes the target: where it listens, its exports and sessions.
func (s *Server) Status() api.TargetStatus {
	st := api.TargetStatus{Role: "target", Listen: s.Addrs(), Sessions: []api.Session{}}
	for _, ss := range s.Sessions() {
		st.Sessions = append(st.Sessions, api.Session{ID: ss.ID, Export: ss.Export, Peer: ss.Peer, ReadOnly: ss.ReadOnly,
			Queues: ss.Queues, Conns: ss.Conns, Since: ss.Since})
	}
	for _, e := range s.exports.list {
		ex := api.Export{Name: e.Name(), ReadOnly: e.cfg.ReadOnly, Shared: e.cfg.Shared, KeyID: e.cfg.Key.ID(), Allow: e.cfg.Allow}
		if m := authMode(e); m != "none" {
			ex.Auth = m
		}
		st.Exports = append(st.Exports, ex)
	}
	return st
}

// Sessions lists the sessions, by export and peer.
func (s *Server) Sessions() []SessionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SessionInfo, 0, len(s.sessions))
	for _, ss := range s.sessions {
		out = append(out, ss.info())
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Export != out[j].Export {
			return out[i].Export < out[j].Export
		}
		return out[i].Peer < out[j].Peer
	})
	return out
}

// openError is an OPEN refused with a status and a message for the initiator.
type openError struct {
	status wire.Status
	msg    string
}

func (e *openError) Error() string { return e.msg }

// open binds connection c to a session on the export an OPEN names: the
// initiator's address must be allowed, and its proof right where the export
// has a key. Messages to the initiator name nothing of other initiators and
// no backend error: the peer may not be authenticated.
func (s *Server) open(c *conn, o wire.Open) (*session, error) {
	exp, err := s.exports.lookup(o.ExportName)
	if err != nil {
		return nil, &openError{wire.StatusNoEnt, err.Error()}
	}
	ok, entryRO := exp.allowed(c.peer.Addr())
	if !ok {
		s.countRefusal(RefusedNotAllowed)
		return nil, &openError{wire.StatusPerm, fmt.Sprintf("export %s is not offered to %s (the export's allow list on the target)", exp.Name(), c.peer.Addr())}
	}
	authed := false
	key := exp.cfg.Key
	switch {
	case o.Flags&wire.OpenAuth != 0 && key.IsZero():
		s.countRefusal(RefusedAuthFailed)
		return nil, &openError{wire.StatusAccess, fmt.Sprintf("export %s has no key on this target: map it without a key file, or give it a key_file in rbdt's configuration", exp.Name())}
	case o.Flags&wire.OpenAuth != 0:
		if !auth.CheckInitiator(key, c.nonce, &o) {
			s.countRefusal(RefusedAuthFailed)
			c.log.Warn("authentication failed", "export", exp.Name(), "key_id", key.ID())
			return nil, &openError{wire.StatusAccess, fmt.Sprintf("authentication for export %s failed: the initiator's key is not the export's key", exp.Name())}
		}
		authed = true
	case exp.requireAuth():
		s.countRefusal(RefusedAuthRequired)
		if c.version < wire.VersionAuth {
			return nil, &openError{wire.StatusAccess, fmt.Sprintf("export %s requires authentication, which protocol version %d cannot carry: upgrade rbdi and give it the export's key (--key-file)", exp.Name(), c.version)}
		}
		return nil, &openError{wire.StatusAccess, fmt.Sprintf("export %s requires authentication: give the initiator the export's key (--key-file)", exp.Name())}
	}
	ro := o.Flags&wire.OpenReadOnly != 0 || exp.cfg.ReadOnly || entryRO
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil, &openError{wire.StatusShutdown, "the target is shutting down"}
	}
	ss := s.sessions[o.Session]
	if ss == nil {
		exp.mu.Lock()
		if !ro && !exp.cfg.Shared && exp.writer != nil {
			exp.mu.Unlock()
			return nil, &openError{wire.StatusBusy, fmt.Sprintf("export %s is in use read-write by another initiator; export it with ,shared to allow several", exp.Name())}
		}
		if _, err := exp.openLocked(); err != nil {
			exp.mu.Unlock()
			s.log.Warn("export cannot be opened", "export", exp.Name(), "err", err)
			return nil, &openError{wire.StatusOf(err), fmt.Sprintf("export %s cannot be opened on the target (the target's log says why)", exp.Name())}
		}
		ss = &session{id: o.Session, export: exp, readOnly: ro, queues: int(o.Queues), conns: map[uint16]*conn{}, fences: map[uint16]*conn{},
			peer: c.peer, since: time.Now(), Stats: stats.NewCounters(), authed: authed, tag: SessionTag(o.Session)}
		if !ro && !exp.cfg.Shared {
			exp.writer = ss
		}
		exp.users++
		exp.mu.Unlock()
		s.sessions[o.Session] = ss
		s.log.Info("session opened", "session", ss.tag, "export", exp.Name(), "peer", c.peer, "read_only", ro, "queues", ss.queues, "authenticated", authed)
		if s.OnSession != nil {
			s.OnSession(ss.info(), true)
		}
	} else if c.peer.Addr() != ss.peer.Addr() {
		// a session id alone is no credential: joining needs the same host
		return nil, &openError{wire.StatusPerm, "the session belongs to another initiator"}
	} else if ss.authed && !authed {
		// bound to the key it was opened with
		s.refused[RefusedAuthRequired]++
		return nil, &openError{wire.StatusAccess, "the session was opened with the export's key: every connection of it must authenticate"}
	} else if ss.export != exp || ss.readOnly != ro || ss.queues != int(o.Queues) {
		return nil, &openError{wire.StatusInval, fmt.Sprintf("connection does not match its session (export %s, %d queues, read-only %v)", ss.export.Name(), ss.queues, ss.readOnly)}
	}
	if old := ss.conns[o.Queue]; old != nil && old != c {
		s.log.Info("queue replaced by a new connection", "session", ss.tag, "queue", o.Queue, "old_peer", old.peer)
		delete(ss.conns, o.Queue)
		go old.drop("replaced by a new connection of its session")
		ss.fences[o.Queue] = old
	}
	c.replaces = ss.fences[o.Queue]
	ss.conns[o.Queue] = c
	c.queue = o.Queue
	c.authed = authed
	return ss, nil
}

// fenced waits until the connection that c's OPEN replaced has finished its
// requests (at most fenceTimeout). When it has not, c leaves its session
// again and the OPEN is refused with EBUSY: the initiator tries again.
func (s *Server) fenced(c *conn, ss *session) bool {
	old := c.replaces
	if old == nil {
		return true
	}
	c.replaces = nil
	select {
	case <-old.finished:
		s.mu.Lock()
		if ss.fences[c.queue] == old {
			delete(ss.fences, c.queue)
		}
		s.mu.Unlock()
		return true
	case <-time.After(fenceTimeout):
	}
	s.mu.Lock()
	if ss.conns[c.queue] == c {
		delete(ss.conns, c.queue)
	}
	s.mu.Unlock()
	return false
}

// drainTimeout bounds how long a stopping target waits for a connection's
// requests to finish.
const drainTimeout = 10 * time.Second

// fenceTimeout bounds how long a replacing OPEN waits for the old
// connection's requests.
const fenceTimeout = 20 * time.Second

// leave removes c from its session; the last connection ends the session.
func (s *Server) leave(c *conn) {
	ss := c.sess
	if ss == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss.conns[c.queue] == c {
		delete(ss.conns, c.queue)
	}
	if len(ss.conns) > 0 || s.sessions[ss.id] != ss {
		return
	}
	delete(s.sessions, ss.id)
	exp := ss.export
	exp.mu.Lock()
	if exp.writer == ss {
		exp.writer = nil
	}
	exp.users--
	exp.mu.Unlock()
	s.log.Info("session closed", "session", ss.tag, "export", exp.Name(), "peer", ss.peer)
	if s.OnSession != nil {
		s.OnSession(ss.info(), false)
	}
}
