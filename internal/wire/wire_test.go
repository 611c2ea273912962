package wire

import (
	"bytes"
	"errors"
	"strings"
	"syscall"
	"testing"
)

func TestConnectRoundTrip(t *testing.T) {
	c := Connect{MinVersion: 1, MaxVersion: 3, QueueDepth: 128, MaxIO: 256 << 10, InlineMax: 4096}
	b := make([]byte, 56) // transports pad connect private data to 56 bytes
	c.Encode(b)
	got, err := DecodeConnect(b)
	if err != nil || got != c {
		t.Fatalf("round trip: want %+v, got %+v (%v)", c, got, err)
	}
}

func TestDecodeConnectErrors(t *testing.T) {
	good := make([]byte, ConnectSize)
	(&Connect{MinVersion: 1, MaxVersion: 1, QueueDepth: 1, MaxIO: 4096}).Encode(good)
	for _, tc := range []struct {
		name string
		mut  func(b []byte) []byte
		want error
	}{
		{"short", func(b []byte) []byte { return b[:10] }, ErrShort},
		{"magic", func(b []byte) []byte { b[0] = 'X'; return b }, ErrMagic},
		{"reserved", func(b []byte) []byte { b[6] = 1; return b }, ErrReserved},
		{"no version", func(b []byte) []byte { b[4], b[5] = 0, 0; return b }, ErrInvalid},
		{"inverted versions", func(b []byte) []byte { b[4], b[5] = 3, 2; return b }, ErrInvalid},
		{"zero depth", func(b []byte) []byte { b[8], b[9] = 0, 0; return b }, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeConnect(tc.mut(bytes.Clone(good)))
			if !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, err)
			}
		})
	}
}

func TestConnectV2RoundTrip(t *testing.T) {
	c := Connect{MinVersion: 2, MaxVersion: 2, QueueDepth: 64, MaxIO: 256 << 10, InlineMax: 4096, RegionKey: 0x1234, RegionAddr: 0x7f0000000000}
	b := make([]byte, 56)
	if n := c.Encode(b); n != ConnectSizeV2 {
		t.Fatalf("encoded %d bytes, want %d", n, ConnectSizeV2)
	}
	got, err := DecodeConnect(b)
	if err != nil || got != c {
		t.Fatalf("round trip: want %+v, got %+v (%v)", c, got, err)
	}
	// a version-1 request (20 bytes, padded) carries no region
	(&Connect{MinVersion: 1, MaxVersion: 1, QueueDepth: 1, MaxIO: 4096}).Encode(b[:ConnectSize])
	clear(b[ConnectSize:])
	if got, err := DecodeConnect(b); err != nil || got.HasRegion() {
		t.Fatalf("v1 request: %+v %v", got, err)
	}
	wrap := Connect{MinVersion: 2, MaxVersion: 2, QueueDepth: 2, MaxIO: 1 << 20, RegionKey: 1, RegionAddr: ^uint64(0) - 4096}
	wrap.Encode(b)
	if _, err := DecodeConnect(b); !errors.Is(err, ErrInvalid) {
		t.Fatalf("wrapping region: want ErrInvalid, got %v", err)
	}
}

func TestNegotiateConnect(t *testing.T) {
	region := func(c Connect) Connect { c.RegionKey, c.RegionAddr = 1, 4096; return c }
	for _, tc := range []struct {
		name string
		c    Connect
		want uint8
		ok   bool
		why  string
	}{
		{"v1 only", Connect{MinVersion: 1, MaxVersion: 1}, 1, true, ""},
		{"v1..2 without region falls back", Connect{MinVersion: 1, MaxVersion: 2}, 1, true, ""},
		{"v1..2 with region", region(Connect{MinVersion: 1, MaxVersion: 2}), 2, true, ""},
		{"v2 with region", region(Connect{MinVersion: 2, MaxVersion: 2}), 2, true, ""},
		{"v2..3 with region", region(Connect{MinVersion: 2, MaxVersion: 3}), 3, true, ""},
		{"v2..9 with region", region(Connect{MinVersion: 2, MaxVersion: 9}), 3, true, ""},
		{"v1..3 without region falls back", Connect{MinVersion: 1, MaxVersion: 3}, 1, true, ""},
		{"v2 without region", Connect{MinVersion: 2, MaxVersion: 2}, 0, false, "slot region"},
		{"too new", region(Connect{MinVersion: 4, MaxVersion: 5}), 0, false, "versions 1..3, the initiator 4..5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, ok, why := NegotiateConnect(&tc.c)
			if v != tc.want || ok != tc.ok || !strings.Contains(why, tc.why) {
				t.Fatalf("want %d %v %q, got %d %v %q", tc.want, tc.ok, tc.why, v, ok, why)
			}
		})
	}
}

func TestNegotiate(t *testing.T) {
	for _, tc := range []struct {
		min, max uint8
		want     uint8
		ok       bool
	}{
		{1, 1, 1, true},
		{1, 9, MaxVersion, true},
		{MaxVersion + 1, MaxVersion + 3, 0, false},
	} {
		v, ok := Negotiate(tc.min, tc.max)
		if v != tc.want || ok != tc.ok {
			t.Errorf("Negotiate(%d, %d): want %d %v, got %d %v", tc.min, tc.max, tc.want, tc.ok, v, ok)
		}
	}
}

func TestAcceptRoundTrip(t *testing.T) {
	a := Accept{Version: 1, Depth: 64, SlotSize: 1 << 18, InlineMax: 4096, SlotRKey: 0xdeadbeef, SlotAddr: 0x7f0000001000}
	b := make([]byte, 196)
	a.Encode(b)
	got, err := DecodeAccept(b)
	if err != nil || got != a {
		t.Fatalf("round trip: want %+v, got %+v (%v)", a, got, err)
	}
	a.SlotAddr = ^uint64(0) - 100 // slots would wrap around the address space
	a.Encode(b)
	if _, err := DecodeAccept(b); !errors.Is(err, ErrInvalid) {
		t.Fatalf("wrapping slots: want ErrInvalid, got %v", err)
	}
}

func TestReject(t *testing.T) {
	r := Reject{MinVersion: 1, MaxVersion: 2, Reason: RejectVersion, Message: "this target speaks versions 1..2\x01"}
	b := make([]byte, 148)
	n := r.Encode(b)
	got, ok := DecodeReject(b) // with the transport's zero padding
	if !ok || got.Reason != RejectVersion || got.Message != "this target speaks versions 1..2?" || got.MaxVersion != 2 {
		t.Fatalf("reject: got %+v %v (len %d)", got, ok, n)
	}
	r.Message = strings.Repeat("x", 500)
	if n := r.Encode(b); n != RejectHdr+MaxRejectMessage {
		t.Fatalf("long message: encoded %d bytes", n)
	}
	if _, ok := DecodeReject([]byte("something else entirely")); ok {
		t.Fatal("foreign reject decoded as rbd's")
	}
}

func TestRequestRoundTrip(t *testing.T) {
	for _, r := range []Request{
		{Op: OpRead, Slot: 3, Length: 4096, Handle: 1, Offset: 16 << 40},
		{Op: OpWrite, Flags: FlagFUA | FlagInline, Length: 512, Handle: ^uint64(0), Offset: 0},
		{Op: OpWriteZeroes, Flags: FlagNoUnmap, Length: 1 << 31, Offset: 1 << 20},
		{Op: OpFlush}, {Op: OpKeepAlive, Handle: 9}, {Op: OpDisconnect}, {Op: OpOpen, Length: 40},
	} {
		b := make([]byte, HeaderSize)
		r.Encode(b)
		got, err := DecodeRequest(b)
		if err != nil || got != r {
			t.Errorf("round trip: want %+v, got %+v (%v)", r, got, err)
		}
	}
}

func TestDecodeRequestErrors(t *testing.T) {
	good := make([]byte, HeaderSize)
	(&Request{Op: OpRead, Length: 4096}).Encode(good)
	for _, tc := range []struct {
		name string
		mut  func(b []byte) []byte
		want error
	}{
		{"short", func(b []byte) []byte { return b[:31] }, ErrShort},
		{"opcode 0", func(b []byte) []byte { b[0] = 0; return b }, ErrInvalid},
		{"opcode 200", func(b []byte) []byte { b[0] = 200; return b }, ErrInvalid},
		{"unknown flag", func(b []byte) []byte { b[1] = 0x80; return b }, ErrInvalid},
		{"reserved", func(b []byte) []byte { b[30] = 1; return b }, ErrReserved},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeRequest(tc.mut(bytes.Clone(good)))
			if !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, err)
			}
		})
	}
}

func TestReplyRoundTrip(t *testing.T) {
	r := Reply{Op: OpRead, Flags: FlagInline, Status: StatusIO, Handle: 77, Length: 4096}
	b := make([]byte, HeaderSize)
	r.Encode(b)
	got, err := DecodeReply(b)
	if err != nil || got != r {
		t.Fatalf("round trip: want %+v, got %+v (%v)", r, got, err)
	}
	b[21] = 1
	if _, err := DecodeReply(b); !errors.Is(err, ErrReserved) {
		t.Fatalf("reserved: want ErrReserved, got %v", err)
	}
}

func TestStatus(t *testing.T) {
	if StatusOf(nil) != StatusOK || StatusOK.Err() != nil {
		t.Fatal("ok status")
	}
	if s := StatusOf(&wrapErr{syscall.ENOSPC}); s != StatusNoSpace {
		t.Fatalf("wrapped ENOSPC: got %v", s)
	}
	if s := StatusOf(errors.New("plain")); s != StatusIO {
		t.Fatalf("plain error: got %v", s)
	}
	if !errors.Is(StatusROFS.Err(), syscall.EROFS) {
		t.Fatal("EROFS")
	}
}

type wrapErr struct{ e error }

func (w *wrapErr) Error() string { return "wrapped: " + w.e.Error() }
func (w *wrapErr) Unwrap() error { return w.e }

func TestOpenRoundTrip(t *testing.T) {
	o := Open{Session: SessionID{1, 2, 3}, Queue: 1, Queues: 4, Flags: OpenReadOnly, ExportName: "/dev/ram0"}
	b := make([]byte, MinDataArea)
	n, err := o.Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeOpen(b[:n])
	if err != nil || got != o {
		t.Fatalf("round trip: want %+v, got %+v (%v)", o, got, err)
	}
	for _, bad := range []Open{
		{Queue: 0, Queues: 1, ExportName: ""},
		{Queue: 0, Queues: 1, ExportName: strings.Repeat("a", MaxExportName+1)},
	} {
		if _, err := bad.Encode(b); err == nil {
			t.Errorf("Encode %q: want error", bad.ExportName)
		}
	}
	o.Queue = 4 // queue out of range
	n, _ = o.Encode(b)
	if _, err := DecodeOpen(b[:n]); !errors.Is(err, ErrInvalid) {
		t.Fatalf("queue 4 of 4: want ErrInvalid, got %v", err)
	}
	o.Queue = 0
	n, _ = o.Encode(b)
	if _, err := DecodeOpen(b[:n-1]); !errors.Is(err, ErrShort) {
		t.Fatalf("truncated name: want ErrShort, got %v", err)
	}
}

func TestOpenReplyRoundTrip(t *testing.T) {
	r := OpenReply{Size: 16 << 40, LogicalBlockSize: 4096, PhysicalBlockSize: 4096,
		Caps: CapFlush | CapTrim | CapMultiConn, MaxDiscard: 1 << 30, Session: SessionID{9}, Message: "ok"}
	b := make([]byte, MinDataArea)
	n, err := r.Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeOpenReply(b[:n], true)
	if err != nil || got != r {
		t.Fatalf("round trip: want %+v, got %+v (%v)", r, got, err)
	}
	r.LogicalBlockSize = 1000
	n, _ = r.Encode(b)
	if _, err := DecodeOpenReply(b[:n], true); !errors.Is(err, ErrInvalid) {
		t.Fatalf("block size 1000: want ErrInvalid, got %v", err)
	}
	if got, err := DecodeOpenReply(b[:n], false); err != nil || got.Message != "ok" {
		t.Fatalf("error reply: %+v %v", got, err)
	}
}

// Version 3: the accept carries the nonce, an authenticated OPEN its nonce
// and proof after the name, the OPEN reply the target's proof after its
// message; each cut short is an error.
func TestAuthFieldsRoundTrip(t *testing.T) {
	acc := Accept{Version: 3, Depth: 4, SlotSize: 8192, SlotRKey: 5, SlotAddr: 1 << 20, Nonce: [NonceSize]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}}
	b := make([]byte, AcceptSizeV3)
	if n := acc.Encode(b); n != AcceptSizeV3 {
		t.Fatalf("v3 accept of %d bytes", n)
	}
	if got, err := DecodeAccept(b); err != nil || got != acc {
		t.Fatalf("accept round trip: %+v %v", got, err)
	}
	if _, err := DecodeAccept(b[:AcceptSize]); !errors.Is(err, ErrShort) {
		t.Fatalf("v3 accept without nonce: %v, want ErrShort", err)
	}
	acc.Version = 2
	if n := acc.Encode(b); n != AcceptSize {
		t.Fatalf("v2 accept of %d bytes", n)
	}
	if got, _ := DecodeAccept(b); got.Nonce != ([NonceSize]byte{}) {
		t.Fatal("a v2 accept carries a nonce")
	}

	o := Open{Session: SessionID{1}, Queue: 1, Queues: 2, Flags: OpenAuth, ExportName: "/dev/vg0/db",
		Nonce: [NonceSize]byte{0xaa}, MAC: [MACSize]byte{0xbb, 31: 0xcc}}
	ob := make([]byte, MinDataArea)
	n, err := o.Encode(ob)
	if err != nil || n != openFixed+len(o.ExportName)+NonceSize+MACSize {
		t.Fatalf("Encode: %d %v", n, err)
	}
	if got, err := DecodeOpen(ob[:n]); err != nil || got != o {
		t.Fatalf("OPEN round trip: %+v %v", got, err)
	}
	if _, err := DecodeOpen(ob[:n-1]); !errors.Is(err, ErrShort) {
		t.Fatalf("truncated proof: %v, want ErrShort", err)
	}
	o.Flags = 4
	n, _ = o.Encode(ob)
	if _, err := DecodeOpen(ob[:n]); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown OPEN flag: %v", err)
	}

	r := OpenReply{Size: 1 << 20, LogicalBlockSize: 512, Flags: OpenReplyAuth, Message: "m", MAC: [MACSize]byte{1, 31: 2}}
	rb := make([]byte, MinDataArea)
	n, err = r.Encode(rb)
	if err != nil || n != openReplyFixed+1+MACSize {
		t.Fatalf("Encode reply: %d %v", n, err)
	}
	if got, err := DecodeOpenReply(rb[:n], true); err != nil || got != r {
		t.Fatalf("reply round trip: %+v %v", got, err)
	}
	if _, err := DecodeOpenReply(rb[:n-1], true); !errors.Is(err, ErrShort) {
		t.Fatalf("truncated reply proof: %v", err)
	}
	r.Flags = 2
	n, _ = r.Encode(rb)
	if _, err := DecodeOpenReply(rb[:n], true); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown reply flag: %v", err)
	}
}
