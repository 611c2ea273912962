package target_test

// Host tests of authentication, allow lists and per-peer limits: the real
// client and target over memt, and hand-made peers (rawpeer_test.go) for
// what the real client never sends: replayed and reflected proofs, an OPEN
// of an old protocol version, a second OPEN after a refusal.

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"rbd/internal/auth"
	"rbd/internal/client"
	"rbd/internal/target"
	"rbd/internal/transport/memt"
	"rbd/internal/wire"
)

func testKey(t testing.TB, hex string) auth.Key {
	t.Helper()
	k, err := auth.ParseKey([]byte(hex))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var (
	keyHex   = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	otherHex = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
)

func tryDial(net *memt.Network, to netip.AddrPort, export string, queues int, mut ...func(*client.Config)) (*client.Session, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := client.Config{Target: to, Export: export, Queues: queues, Transport: net, Log: quiet(),
		Queue: client.QueueConfig{Depth: 8, MaxIO: 64 << 10, Inline: 4096, NoReconnect: true}}
	for _, m := range mut {
		m(&cfg)
	}
	return client.Dial(ctx, cfg)
}

func withKey(k auth.Key) func(*client.Config) { return func(c *client.Config) { c.Key = k } }

func withSource(a string) func(*client.Config) {
	return func(c *client.Config) { c.Source = netip.AddrPortFrom(netip.MustParseAddr(a), 0) }
}

// verify writes a block and reads it back on the session's first queue.
func verify(t *testing.T, s *client.Session) {
	t.Helper()
	q := s.Queues()[0]
	data := bytes.Repeat([]byte("rbd!"), 1024)
	if _, st := do(t, q, wire.OpWrite, 0, 4096, data, 0); st != wire.StatusOK {
		t.Fatalf("WRITE: %v", st)
	}
	got, st := do(t, q, wire.OpRead, 0, 4096, nil, 4096)
	if st != wire.StatusOK || !bytes.Equal(got, data) {
		t.Fatalf("READ: %v, data equal %v", st, bytes.Equal(got, data))
	}
}

// TestAuth: the real client against keyed, optionally keyed and unkeyed
// exports, with the right key, a wrong one and none.
func TestAuth(t *testing.T) {
	net := memt.New(memt.Options{})
	key, other := testKey(t, keyHex), testKey(t, otherHex)
	required, optional, none := image(t, imageSize), image(t, imageSize), image(t, imageSize)
	srv := serve(t, net, nil,
		target.ExportConfig{Path: required, Key: key, Shared: true},
		target.ExportConfig{Path: optional, Key: key, RequireAuth: new(false), Shared: true},
		target.ExportConfig{Path: none, Shared: true})
	for _, tc := range []struct {
		name   string
		export string
		key    auth.Key
		status wire.Status // 0: the session works
		msg    string
	}{
		{"required, right key", required, key, 0, ""},
		{"required, wrong key", required, other, wire.StatusAccess, "authentication for export " + required + " failed"},
		{"required, no key", required, auth.Key{}, wire.StatusAccess, "requires authentication"},
		{"optional, no key", optional, auth.Key{}, 0, ""},
		{"optional, right key", optional, key, 0, ""},
		{"optional, wrong key", optional, other, wire.StatusAccess, "failed"},
		{"no key on the target", none, key, wire.StatusAccess, "has no key on this target"},
		{"none, no key", none, auth.Key{}, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := tryDial(net, targetAddr, tc.export, 2, withKey(tc.key))
			if tc.status == 0 {
				if err != nil {
					t.Fatalf("Dial: %v", err)
				}
				defer s.Close()
				verify(t, s)
				return
			}
			if err == nil {
				s.Close()
				t.Fatal("Dial succeeded, want a refusal")
			}
			var ee *client.ExportError
			if !errors.As(err, &ee) || ee.Status != tc.status || !strings.Contains(ee.Message, tc.msg) || ee.Keyed != !tc.key.IsZero() {
				t.Fatalf("Dial: %v (%#v), want status %v with %q", err, ee, tc.status, tc.msg)
			}
		})
	}
	u := srv.Usage()
	if u.Refused[target.RefusedAuthFailed] != 3 || u.Refused[target.RefusedAuthRequired] != 1 {
		t.Errorf("refusals %v: want 3 auth_failed, 1 auth_required", u.Refused)
	}
	// a refused connection goes at once, and nothing is left claimed
	deadline := time.Now().Add(5 * time.Second)
	for len(srv.Usage().Peers) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if p := srv.Usage().Peers; len(p) != 0 {
		t.Errorf("peers still hold %+v", p)
	}
}

// authOpen is an OPEN of export on queue q of n with a proof made with key
// for the challenge of connection r.
func authOpen(r *rawPeer, key auth.Key, sess wire.SessionID, export string, q, n uint16) wire.Open {
	o := wire.Open{Session: sess, Queue: q, Queues: n, Flags: wire.OpenAuth, ExportName: export, Nonce: auth.Nonce()}
	o.MAC = auth.InitiatorProof(key, r.acc.Nonce, &o)
	return o
}

// TestAuthReplay: an OPEN proof is good for the connection whose challenge it
// answers only: replayed on another connection it fails, and the session
// it would have joined keeps its connection. The target's proof checks out
// (what the real client verifies).
func TestAuthReplay(t *testing.T) {
	net := memt.New(memt.Options{})
	key := testKey(t, keyHex)
	img := image(t, imageSize)
	serve(t, net, nil, target.ExportConfig{Path: img, Key: key})
	host := netip.MustParseAddrPort("10.9.0.2:0")
	a, err := rawDial(t, net, host, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	if a.acc.Version != 3 || a.acc.Nonce == ([wire.NonceSize]byte{}) {
		t.Fatalf("accept %+v: want version 3 with a nonce", a.acc)
	}
	var sid wire.SessionID
	copy(sid[:], "0123456789abcdef")
	o := authOpen(a, key, sid, img, 0, 1)
	st, rep, data, err := a.openReply(o)
	if err != nil || st != wire.StatusOK {
		t.Fatalf("OPEN: %v %v %q", st, err, rep.Message)
	}
	if rep.Flags&wire.OpenReplyAuth == 0 || !auth.CheckTarget(key, a.acc.Nonce, &o, data, rep.MAC) {
		t.Fatalf("the target's proof does not check out: flags %#x", rep.Flags)
	}
	// the same bytes on a second connection (same address, as an on-path
	// attacker would send them): its challenge differs
	b, err := rawDial(t, net, host, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	if b.acc.Nonce == a.acc.Nonce {
		t.Fatal("two connections got the same nonce")
	}
	st, rep, _, err = b.openReply(o)
	if err != nil || st != wire.StatusAccess || !strings.Contains(rep.Message, "failed") {
		t.Fatalf("replayed OPEN: %v %v %q, want EACCES", st, err, rep.Message)
	}
	if !b.gone(3 * time.Second) {
		t.Error("the refused connection stays")
	}
	// the first connection was not replaced
	a.send(wire.Request{Op: wire.OpKeepAlive, Handle: 2}, nil)
	if r, _, err := a.reply(); err != nil || r.Status != wire.StatusOK {
		t.Fatalf("KEEPALIVE on the authenticated connection: %+v %v", r, err)
	}
}

// TestAuthProtocolViolations: what an authenticating peer must not do.
func TestAuthProtocolViolations(t *testing.T) {
	net := memt.New(memt.Options{})
	key := testKey(t, keyHex)
	img, open := image(t, imageSize), image(t, imageSize)
	serve(t, net, nil, target.ExportConfig{Path: img, Key: key}, target.ExportConfig{Path: open})
	var sid wire.SessionID
	copy(sid[:], "session-id-16byt")

	t.Run("second OPEN after a refusal", func(t *testing.T) {
		r, err := rawDial(t, net, netip.AddrPort{}, 3, 3)
		if err != nil {
			t.Fatal(err)
		}
		o := authOpen(r, testKey(t, otherHex), sid, img, 0, 1)
		if st, _, _, err := r.openReply(o); err != nil || st != wire.StatusAccess {
			t.Fatalf("wrong key: %v %v", st, err)
		}
		o = authOpen(r, key, sid, img, 0, 1) // right, but too late
		r.open(o)
		if _, _, err := r.reply(); !errors.Is(err, errConnGone) {
			t.Fatalf("second OPEN answered: %v", err)
		}
	})
	t.Run("authenticated OPEN in version 2", func(t *testing.T) {
		r, err := rawDial(t, net, netip.AddrPort{}, 2, 2)
		if err != nil {
			t.Fatal(err)
		}
		o := authOpen(r, key, sid, img, 0, 1) // r's nonce is zero: no challenge in v2
		r.open(o)
		if _, _, err := r.reply(); !errors.Is(err, errConnGone) {
			t.Fatalf("OPEN answered: %v", err)
		}
	})
	t.Run("reflected target proof", func(t *testing.T) {
		// a proof under the target's label for this very challenge (what a
		// peer might hope to get the target to make) is no initiator proof
		r, err := rawDial(t, net, netip.AddrPort{}, 3, 3)
		if err != nil {
			t.Fatal(err)
		}
		o := wire.Open{Session: sid, Queues: 1, Flags: wire.OpenAuth, ExportName: img, Nonce: auth.Nonce()}
		o.MAC = auth.TargetProof(key, r.acc.Nonce, &o, nil)
		if st, rep, _, err := r.openReply(o); err != nil || st != wire.StatusAccess {
			t.Fatalf("reflected proof: %v %v %q", st, err, rep.Message)
		}
	})
	for _, v := range []uint8{1, 2} {
		t.Run("version "+string('0'+v)+" initiator", func(t *testing.T) {
			r, err := rawDial(t, net, netip.AddrPort{}, v, v)
			if err != nil {
				t.Fatal(err)
			}
			if r.acc.Version != v {
				t.Fatalf("accept version %d, want %d", r.acc.Version, v)
			}
			st, rep, _, err := r.openReply(wire.Open{Session: sid, Queues: 1, ExportName: img})
			if err != nil || st != wire.StatusAccess || !strings.Contains(rep.Message, "cannot carry") {
				t.Fatalf("keyed export: %v %v %q, want EACCES naming the version", st, err, rep.Message)
			}
			// an export without a key still serves old initiators
			r2, err := rawDial(t, net, netip.AddrPort{}, v, v)
			if err != nil {
				t.Fatal(err)
			}
			var sid2 wire.SessionID
			copy(sid2[:], "old-initiator-0"+string('0'+v))
			if st, rep, _, err := r2.openReply(wire.Open{Session: sid2, Queues: 1, ExportName: open}); err != nil || st != wire.StatusOK {
				t.Fatalf("unkeyed export: %v %v %q", st, err, rep.Message)
			}
		})
	}
}

// TestAuthSessionBound: a session opened with the key can be joined only by
// connections that prove it too, even on an export where the key is
// optional.
func TestAuthSessionBound(t *testing.T) {
	net := memt.New(memt.Options{})
	key := testKey(t, keyHex)
	img := image(t, imageSize)
	serve(t, net, nil, target.ExportConfig{Path: img, Key: key, RequireAuth: new(false)})
	var sid wire.SessionID
	copy(sid[:], "bound-session-id")
	host := netip.MustParseAddrPort("10.9.0.1:0")
	a, err := rawDial(t, net, host, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	if st, _, _, err := a.openReply(authOpen(a, key, sid, img, 0, 2)); err != nil || st != wire.StatusOK {
		t.Fatalf("OPEN: %v %v", st, err)
	}
	b, err := rawDial(t, net, host, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	st, rep, _, err := b.openReply(wire.Open{Session: sid, Queue: 1, Queues: 2, ExportName: img})
	if err != nil || st != wire.StatusAccess || strings.Contains(rep.Message, sid.String()) {
		t.Fatalf("unauthenticated join: %v %v %q, want EACCES without the session id", st, err, rep.Message)
	}
	c, err := rawDial(t, net, host, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	if st, rep, _, err := c.openReply(authOpen(c, key, sid, img, 1, 2)); err != nil || st != wire.StatusOK {
		t.Fatalf("authenticated join: %v %v %q", st, err, rep.Message)
	}
}

// TestAuthRogueTarget: the real client with a key refuses a target that does
// not prove the key: no proof, its own proof reflected back, a proof
// recorded for another challenge, a target without authentication; and
// accepts one that proves it (the control).
func TestAuthRogueTarget(t *testing.T) {
	key := testKey(t, keyHex)
	geometry := func(sid wire.SessionID, flags uint32) wire.OpenReply {
		return wire.OpenReply{Size: imageSize, LogicalBlockSize: 512, PhysicalBlockSize: 512,
			Caps: wire.CapFlush | wire.CapFUA | wire.CapWriteZeroes, Session: sid, Flags: flags}
	}
	encode := func(r wire.OpenReply) []byte {
		b := make([]byte, 4096)
		n, _ := r.Encode(b)
		return b[:n]
	}
	prove := func(acc wire.Accept, o wire.Open, r wire.OpenReply) []byte {
		r.MAC = auth.TargetProof(key, acc.Nonce, &o, encode(r))
		return encode(r)
	}
	for _, tc := range []struct {
		name    string
		version uint8
		answer  func(acc wire.Accept, o wire.Open) (wire.Status, []byte)
		err     string // "": Dial works
	}{
		{"proves the key", 3, func(acc wire.Accept, o wire.Open) (wire.Status, []byte) {
			return wire.StatusOK, prove(acc, o, geometry(o.Session, wire.OpenReplyAuth))
		}, ""},
		{"no proof", 3, func(acc wire.Accept, o wire.Open) (wire.Status, []byte) {
			return wire.StatusOK, encode(geometry(o.Session, 0))
		}, "did not prove"},
		{"reflected initiator proof", 3, func(acc wire.Accept, o wire.Open) (wire.Status, []byte) {
			r := geometry(o.Session, wire.OpenReplyAuth)
			r.MAC = o.MAC
			return wire.StatusOK, encode(r)
		}, "did not prove"},
		{"proof recorded for another challenge", 3, func(acc wire.Accept, o wire.Open) (wire.Status, []byte) {
			old := o
			old.Nonce = [wire.NonceSize]byte{1, 2, 3} // another connection's initiator nonce
			r := geometry(o.Session, wire.OpenReplyAuth)
			r.MAC = auth.TargetProof(key, acc.Nonce, &old, encode(r))
			return wire.StatusOK, encode(r)
		}, "did not prove"},
		{"geometry changed after the proof", 3, func(acc wire.Accept, o wire.Open) (wire.Status, []byte) {
			r := geometry(o.Session, wire.OpenReplyAuth)
			b := prove(acc, o, r)
			b[16] ^= byte(wire.CapTrim) // a capability, by an on-path attacker
			return wire.StatusOK, b
		}, "did not prove"},
		{"version 2 target", 2, func(acc wire.Accept, o wire.Open) (wire.Status, []byte) {
			return wire.StatusOK, encode(geometry(o.Session, 0))
		}, "no authentication"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			net := memt.New(memt.Options{})
			acc := wire.Accept{Version: tc.version, Depth: 8, SlotSize: 8192, InlineMax: 1024, Nonce: auth.Nonce()}
			rogueTarget(t, net, targetAddr, acc, tc.answer)
			s, err := tryDial(net, targetAddr, "/dev/ram0", 1, withKey(key), func(c *client.Config) { c.Queue.MaxIO = 8192 })
			if tc.err == "" {
				if err != nil {
					t.Fatalf("Dial: %v", err)
				}
				s.Close()
				return
			}
			if err == nil {
				s.Close()
				t.Fatal("Dial succeeded against a rogue target")
			}
			if !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Dial: %v, want %q", err, tc.err)
			}
		})
	}
}

// TestAllowList: per-export allow lists, read-only or read-write per entry;
// an address no export allows is refused at connect, before any memory is
// registered for it.
func TestAllowList(t *testing.T) {
	net := memt.New(memt.Options{})
	x, y := image(t, imageSize), image(t, imageSize)
	srv := serve(t, net, nil,
		target.ExportConfig{Path: x, Allow: []string{"10.1.0.0/16 ro", "10.1.2.3 rw"}},
		target.ExportConfig{Path: y, Allow: []string{"10.2.0.0/16"}})
	for _, tc := range []struct {
		name, src, export string
		want              string // "rw", "ro", or part of the error
	}{
		{"host entry read-write", "10.1.2.3", x, "rw"},
		{"network entry read-only", "10.1.5.5", x, "ro"},
		{"other export's network", "10.2.0.9", y, "rw"},
		{"not in this export's list", "10.1.5.5", y, "is not offered to 10.1.5.5"},
		{"in no list", "10.3.0.1", x, "not allowed from this address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := tryDial(net, targetAddr, tc.export, 1, withSource(tc.src))
			if tc.want != "rw" && tc.want != "ro" {
				if err == nil {
					s.Close()
					t.Fatal("Dial succeeded")
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Dial: %v, want %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer s.Close()
			ro := s.Export.Caps&wire.CapReadOnly != 0
			if ro != (tc.want == "ro") {
				t.Fatalf("read-only %v, want %s", ro, tc.want)
			}
			q := s.Queues()[0]
			_, st := do(t, q, wire.OpWrite, 0, 0, make([]byte, 4096), 0)
			if (tc.want == "ro") != (st == wire.StatusROFS) || (tc.want == "rw") != (st == wire.StatusOK) {
				t.Fatalf("WRITE: %v", st)
			}
		})
	}
	if n := srv.Usage().Refused[target.RefusedNotAllowed]; n != 2 {
		t.Errorf("%d not-allowed refusals, want 2", n)
	}
}

// TestPeerLimits: one address cannot take more than its connections,
// handshakes in progress and slot memory; another address is not affected;
// a connection that never OPENs goes after the OPEN deadline.
func TestPeerLimits(t *testing.T) {
	a := netip.MustParseAddrPort("10.5.0.1:0")
	b := netip.MustParseAddrPort("10.5.0.2:0")
	per := int64(4 * 8192) // a raw peer's slots
	for _, tc := range []struct {
		name   string
		mut    func(*target.Config)
		opened bool   // the first connections OPEN
		first  int    // connections from a that get in
		reason string // why the next is refused
		msg    string
	}{
		{"connections", func(c *target.Config) { c.MaxConnsPerPeer = 2 }, true, 2, target.RefusedPeerConns, "connections per initiator address"},
		{"handshakes", func(c *target.Config) { c.MaxHandshakesPerPeer = 2 }, false, 2, target.RefusedPeerHandshakes, "not yet OPENed"},
		{"pinned memory", func(c *target.Config) { c.MaxPinnedPerPeer = 3 * per }, true, 3, target.RefusedPeerMemory, "of slots per initiator address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			net := memt.New(memt.Options{})
			img := image(t, imageSize)
			srv := serve(t, net, func(c *target.Config) { tc.mut(c); c.OpenTimeout = time.Hour }, target.ExportConfig{Path: img, Shared: true})
			var peers []*rawPeer
			for i := range tc.first {
				r, err := rawDial(t, net, a, 3, 3)
				if err != nil {
					t.Fatalf("connection %d: %v", i, err)
				}
				if tc.opened {
					var sid wire.SessionID
					sid[0] = byte(i + 1)
					if st, rep, _, err := r.openReply(wire.Open{Session: sid, Queues: 1, ExportName: img}); err != nil || st != wire.StatusOK {
						t.Fatalf("OPEN %d: %v %v %q", i, st, err, rep.Message)
					}
				}
				peers = append(peers, r)
			}
			_, err := rawDial(t, net, a, 3, 3)
			if rej := rejectOf(t, err); rej.Reason != wire.RejectTooMany || !strings.Contains(rej.Message, tc.msg) {
				t.Fatalf("reject %+v, want too many with %q", rej, tc.msg)
			}
			if _, err := rawDial(t, net, b, 3, 3); err != nil {
				t.Fatalf("another address: %v", err)
			}
			u := srv.Usage()
			if u.Refused[tc.reason] != 1 {
				t.Errorf("refusals %v, want one %s", u.Refused, tc.reason)
			}
			var ua target.PeerUsage
			for _, p := range u.Peers {
				if p.Addr == a.Addr() {
					ua = p
				}
			}
			hs := 0
			if !tc.opened {
				hs = tc.first
			}
			if ua.Conns != tc.first || ua.Handshakes != hs || ua.PinnedBytes != int64(tc.first)*per {
				t.Errorf("usage of %s: %+v, want %d connections, %d handshakes, %d bytes", a.Addr(), ua, tc.first, hs, int64(tc.first)*per)
			}
			// closing one frees its place
			peers[0].close()
			deadline := time.Now().Add(5 * time.Second)
			for {
				if _, err := rawDial(t, net, a, 3, 3); err == nil {
					break
				} else if time.Now().After(deadline) {
					t.Fatalf("the place was not freed: %v", err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// TestOpenDeadline: a connection that does not OPEN within OpenTimeout is
// dropped and counted, and frees its handshake place.
func TestOpenDeadline(t *testing.T) {
	net := memt.New(memt.Options{})
	img := image(t, imageSize)
	srv := serve(t, net, func(c *target.Config) { c.OpenTimeout = 200 * time.Millisecond; c.MaxHandshakesPerPeer = 1 }, target.ExportConfig{Path: img})
	a := netip.MustParseAddrPort("10.6.0.1:0")
	r, err := rawDial(t, net, a, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rawDial(t, net, a, 3, 3); err == nil {
		t.Fatal("a second handshake from the same address got in")
	}
	if !r.gone(5 * time.Second) {
		t.Fatal("the silent connection was not dropped")
	}
	if n := srv.Usage().Refused[target.RefusedOpenTimeout]; n != 1 {
		t.Errorf("%d open timeouts counted, want 1", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		r2, err := rawDial(t, net, a, 3, 3)
		if err == nil {
			var sid wire.SessionID
			sid[0] = 9
			if st, _, _, err := r2.openReply(wire.Open{Session: sid, Queues: 1, ExportName: img}); err != nil || st != wire.StatusOK {
				t.Fatalf("OPEN after the deadline freed the place: %v %v", st, err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no place after the drop: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStatusShowsAuth: the control socket's status names each export's
// authentication and allow list, and the key only by its id.
func TestStatusShowsAuth(t *testing.T) {
	net := memt.New(memt.Options{})
	key := testKey(t, keyHex)
	a, b := image(t, imageSize), image(t, imageSize)
	srv := serve(t, net, nil, target.ExportConfig{Path: a, Key: key, Allow: []string{"10.0.0.0/8"}}, target.ExportConfig{Path: b})
	byName := map[string]int{}
	st := srv.Status()
	for i, e := range st.Exports {
		byName[e.Name] = i
	}
	ea, eb := st.Exports[byName[a]], st.Exports[byName[b]]
	if ea.Auth != "required" || ea.KeyID != key.ID() || len(ea.Allow) != 1 || strings.Contains(ea.KeyID, keyHex[:8]) {
		t.Errorf("keyed export: %+v", ea)
	}
	if eb.Auth != "" || eb.KeyID != "" || eb.Allow != nil {
		t.Errorf("plain export: %+v", eb)
	}
}

// TestAuthReconnect: an authenticated session's queues reconnect to a
// restarted target with the key (new challenges, new proofs) and go on; a
// target that comes back with another key is refused for good, and the
// queue fails rather than talking to it.
func TestAuthReconnect(t *testing.T) {
	key, other := testKey(t, keyHex), testKey(t, otherHex)
	for _, tc := range []struct {
		name     string
		restart  auth.Key
		recovers bool
	}{
		{"same key", key, true},
		{"another key", other, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			net := memt.New(memt.Options{})
			img := image(t, imageSize)
			start := func(k auth.Key) func() {
				_, stop := serveStoppableExport(t, net, target.ExportConfig{Path: img, Key: k})
				return stop
			}
			stop1 := start(key)
			sess := dial(t, net, img, 2, fastReconnect(5*time.Second), withKey(key))
			verify(t, sess)
			stop1()
			stop2 := start(tc.restart)
			defer stop2()
			q := sess.Queues()[0]
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				st := q.State()
				if tc.recovers && st.State == client.StateConnected && sess.Stats.Snapshot().Reconnects >= 1 {
					verify(t, sess)
					return
				}
				if !tc.recovers && st.State == client.StateFailed {
					if !strings.Contains(st.LastErr, "failed") {
						t.Fatalf("failed for %q, want the key refusal", st.LastErr)
					}
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Fatalf("queue state %+v, want recovered %v", q.State(), tc.recovers)
		})
	}
}
