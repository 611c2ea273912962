package target_test

// The initiator engine (internal/client) against a hostile target over memt
// (rawpeer_test.go): malformed accepts and OPEN replies fail the connect
// with a clear error; malformed, unexpected or missing replies on the data
// path end that connection only, and its command completes once, with an
// error, never with success; a session to an honest target on the same
// network goes on working meanwhile. (Issue 11, item 4, on the in-memory
// transport; the guest version on internal/verbs is still to come.)

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"rbd/internal/client"
	"rbd/internal/target"
	"rbd/internal/transport/memt"
	"rbd/internal/wire"
)

// goodOpen answers an OPEN with a sane geometry, other commands with 0.
func goodOpen(rq wire.Request) []byte {
	rep := wire.OpenReply{Size: imageSize, LogicalBlockSize: 512, PhysicalBlockSize: 512, Caps: wire.CapFlush | wire.CapFUA | wire.CapWriteZeroes}
	b := make([]byte, 4096)
	n, _ := rep.Encode(b)
	return replyMsg(wire.Reply{Op: rq.Op, Handle: rq.Handle}, b[:n])
}

func hostileAccept() wire.Accept {
	return wire.Accept{Version: 3, Depth: 8, SlotSize: 8192, InlineMax: 1024}
}

func hostileDial(net *memt.Network, to netip.AddrPort, mut ...func(*client.Config)) (*client.Session, error) {
	return tryDial(net, to, "/dev/ram0", 1, append([]func(*client.Config){func(c *client.Config) {
		c.Queue.MaxIO = 8192
		c.Queue.KeepAlive, c.Queue.KeepAliveTimeout = 50*time.Millisecond, 200*time.Millisecond
	}}, mut...)...)
}

func TestHostileTargetConnect(t *testing.T) {
	for i, tc := range []struct {
		name string
		pd   func(rkey uint32, addr uint64) []byte
		open func(rq wire.Request) []byte
		want string
	}{
		{"accept too short", func(uint32, uint64) []byte { return []byte("RBDA") }, goodOpen, "bad accept data"},
		{"accept bad magic", func(k uint32, a uint64) []byte {
			b := make([]byte, 48)
			acc := hostileAccept()
			acc.SlotRKey, acc.SlotAddr = k, a
			acc.Encode(b)
			b[0] = 'X'
			return b
		}, goodOpen, "not an rbd target"},
		{"version 3 accept without nonce", func(k uint32, a uint64) []byte {
			b := make([]byte, 48)
			acc := hostileAccept()
			acc.SlotRKey, acc.SlotAddr = k, a
			acc.Encode(b)
			return b[:wire.AcceptSize]
		}, goodOpen, "too short"},
		{"version out of range", func(k uint32, a uint64) []byte {
			b := make([]byte, 48)
			acc := wire.Accept{Version: 3, Depth: 8, SlotSize: 8192, SlotRKey: k, SlotAddr: a}
			acc.Encode(b)
			b[4] = 9
			return b
		}, goodOpen, "chose version 9"},
		{"more slots than asked", func(k uint32, a uint64) []byte {
			b := make([]byte, 48)
			acc := wire.Accept{Version: 3, Depth: 64, SlotSize: 8192, SlotRKey: k, SlotAddr: a}
			return b[:acc.Encode(b)]
		}, goodOpen, "not what was asked"},
		{"larger slots than asked", func(k uint32, a uint64) []byte {
			b := make([]byte, 48)
			acc := wire.Accept{Version: 3, Depth: 8, SlotSize: 1 << 20, SlotRKey: k, SlotAddr: a}
			return b[:acc.Encode(b)]
		}, goodOpen, "not what was asked"},
		{"OPEN reply with block size 1000", nil, func(rq wire.Request) []byte {
			rep := wire.OpenReply{Size: 1000 * 64, LogicalBlockSize: 1000}
			b := make([]byte, 4096)
			n, _ := rep.Encode(b)
			return replyMsg(wire.Reply{Op: rq.Op, Handle: rq.Handle}, b[:n])
		}, "bad OPEN reply"},
		{"OPEN reply size not a block multiple", nil, func(rq wire.Request) []byte {
			rep := wire.OpenReply{Size: 4097, LogicalBlockSize: 512}
			b := make([]byte, 4096)
			n, _ := rep.Encode(b)
			return replyMsg(wire.Reply{Op: rq.Op, Handle: rq.Handle}, b[:n])
		}, "bad OPEN reply"},
		{"OPEN reply truncated", nil, func(rq wire.Request) []byte {
			return replyMsg(wire.Reply{Op: rq.Op, Handle: rq.Handle}, make([]byte, 20))
		}, "bad OPEN reply"},
		{"OPEN reply message longer than the reply", nil, func(rq wire.Request) []byte {
			b := make([]byte, 60)
			b[48] = 0xff
			return replyMsg(wire.Reply{Op: rq.Op, Status: wire.StatusIO, Handle: rq.Handle}, b)
		}, "target"},
		{"OPEN reply with a proof not asked for", nil, func(rq wire.Request) []byte {
			rep := wire.OpenReply{Size: imageSize, LogicalBlockSize: 512, Flags: wire.OpenReplyAuth}
			b := make([]byte, 4096)
			n, _ := rep.Encode(b)
			return replyMsg(wire.Reply{Op: rq.Op, Handle: rq.Handle}, b[:n])
		}, "not asked for"},
		{"OPEN reply for another handle", nil, func(rq wire.Request) []byte {
			m := goodOpen(rq)
			m[8] ^= 1
			return m
		}, "OPEN"},
		{"no OPEN reply", nil, func(rq wire.Request) []byte { return nil }, "OPEN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			net := memt.New(memt.Options{})
			to := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 9, byte(i + 1)}), 65000)
			mk := func(k uint32, a uint64) (wire.Accept, []byte) {
				acc := hostileAccept()
				acc.SlotRKey, acc.SlotAddr = k, a
				b := make([]byte, 48)
				return acc, b[:acc.Encode(b)]
			}
			if tc.pd != nil {
				mk = func(k uint32, a uint64) (wire.Accept, []byte) { return wire.Accept{}, tc.pd(k, a) }
			}
			hostileTargetRaw(t, net, to, mk, func(_ wire.Accept, rq wire.Request, _ []byte) [][]byte {
				if rq.Op == wire.OpOpen {
					if m := tc.open(rq); m != nil {
						return [][]byte{m}
					}
				}
				return nil
			})
			start := time.Now()
			s, err := hostileDial(net, to, func(c *client.Config) {})
			if err == nil {
				s.Close()
				t.Fatal("Dial succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Dial: %v, want %q", err, tc.want)
			}
			t.Logf("%v (after %v)", err, time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestHostileTargetReplies: after a good OPEN, the target answers a READ
// badly. The READ completes once, with an error (the connection is dropped
// and, without reconnecting, the queue ends), and an honest target's
// session on the same network keeps working.
func TestHostileTargetReplies(t *testing.T) {
	net := memt.New(memt.Options{})
	img := image(t, imageSize)
	serve(t, net, nil, target.ExportConfig{Path: img})
	honest := dial(t, net, img, 1)
	for i, tc := range []struct {
		name  string
		reply func(rq wire.Request) [][]byte
		why   string // in the queue's reason
	}{
		{"shorter than a header", func(rq wire.Request) [][]byte { return [][]byte{make([]byte, 8)} }, "reply of 8 bytes"},
		{"unknown opcode", func(rq wire.Request) [][]byte {
			m := replyMsg(wire.Reply{Op: rq.Op, Handle: rq.Handle}, nil)
			m[0] = 99
			return [][]byte{m}
		}, "unknown opcode"},
		{"reserved bytes set", func(rq wire.Request) [][]byte {
			m := replyMsg(wire.Reply{Op: rq.Op, Handle: rq.Handle}, nil)
			m[30] = 1
			return [][]byte{m}
		}, "reserved"},
		{"bogus handle", func(rq wire.Request) [][]byte {
			return [][]byte{replyMsg(wire.Reply{Op: rq.Op, Handle: 0xffff}, nil)}
		}, "unknown handle"},
		{"handle with high bits", func(rq wire.Request) [][]byte {
			return [][]byte{replyMsg(wire.Reply{Op: rq.Op, Handle: rq.Handle | 1<<40}, nil)}
		}, "unknown handle"},
		{"stale generation", func(rq wire.Request) [][]byte {
			return [][]byte{replyMsg(wire.Reply{Op: rq.Op, Handle: rq.Handle ^ 1<<16}, nil)}
		}, "not outstanding"},
		{"reply for a request never sent", func(rq wire.Request) [][]byte {
			return [][]byte{replyMsg(wire.Reply{Op: rq.Op, Handle: (rq.Handle &^ 0xffff) | (rq.Handle+3)&0xffff}, nil)}
		}, "not outstanding"},
		{"reply of another op", func(rq wire.Request) [][]byte {
			return [][]byte{replyMsg(wire.Reply{Op: wire.OpWrite, Handle: rq.Handle}, nil)}
		}, "not outstanding"},
		{"READ reply with data bytes", func(rq wire.Request) [][]byte {
			return [][]byte{replyMsg(wire.Reply{Op: rq.Op, Handle: rq.Handle}, make([]byte, 512))}
		}, "carries 512 data bytes"},
		{"length announced, not carried", func(rq wire.Request) [][]byte {
			m := replyMsg(wire.Reply{Op: rq.Op, Handle: rq.Handle}, nil)
			m[16] = 64
			return [][]byte{m}
		}, "announces 64 data bytes"},
		// INLINE on the reply of a slot READ with no data: the data is in the
		// slot either way; the flag is not acted on (the READ completes)
		{"INLINE flag on a slot READ", func(rq wire.Request) [][]byte {
			return [][]byte{replyMsg(wire.Reply{Op: rq.Op, Flags: wire.FlagInline, Handle: rq.Handle}, nil)}
		}, ""},
		{"silence", func(rq wire.Request) [][]byte { return nil }, "did not answer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			to := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 8, byte(i + 1)}), 65000)
			hostileTarget(t, net, to, hostileAccept(), func(_ wire.Accept, rq wire.Request, _ []byte) [][]byte {
				switch rq.Op {
				case wire.OpOpen:
					return [][]byte{goodOpen(rq)}
				case wire.OpRead:
					return tc.reply(rq)
				case wire.OpKeepAlive:
					if tc.why == "did not answer" {
						return nil
					}
				}
				return [][]byte{replyMsg(wire.Reply{Op: rq.Op, Handle: rq.Handle}, nil)}
			})
			s, err := hostileDial(net, to)
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer s.Close()
			q := s.Queues()[0]
			_, st := do(t, q, wire.OpRead, 0, 0, nil, 4096)
			if tc.why == "" { // a flag the initiator does not act on: the READ completes
				return
			}
			if st == wire.StatusOK {
				t.Fatalf("READ answered badly completed with success")
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				if dead, why := q.Dead(); dead {
					if !strings.Contains(why, tc.why) {
						t.Fatalf("queue ended for %q, want %q", why, tc.why)
					}
					t.Logf("READ %v; queue ended: %s", st, why)
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the queue lives on after a bad reply")
				}
				time.Sleep(10 * time.Millisecond)
			}
			verify(t, honest) // the other session is untouched
		})
	}
	if n := honest.Stats.Snapshot().Reconnects; n != 0 {
		t.Errorf("the honest session reconnected %d times", n)
	}
}
