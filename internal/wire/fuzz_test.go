package wire

import (
	"bytes"
	"testing"
)

// Each decoder must return an error or a value that encodes back to the same
// bytes; it must never panic.

func FuzzDecodeConnect(f *testing.F) {
	b := make([]byte, 56)
	(&Connect{MinVersion: 1, MaxVersion: 1, QueueDepth: 128, MaxIO: 1 << 18, InlineMax: 4096}).Encode(b)
	f.Add(b)
	f.Add([]byte("RBDC"))
	v2 := make([]byte, 56)
	(&Connect{MinVersion: 2, MaxVersion: 2, QueueDepth: 128, MaxIO: 1 << 18, InlineMax: 4096, RegionKey: 7, RegionAddr: 1 << 30}).Encode(v2)
	f.Add(v2)
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := DecodeConnect(in)
		if err != nil {
			return
		}
		out := make([]byte, ConnectSizeV2)
		n := c.Encode(out)
		if !bytes.Equal(out[:n], in[:n]) {
			t.Fatalf("re-encoded %x, input %x", out[:n], in[:n])
		}
		if _, ok, why := NegotiateConnect(&c); !ok && why == "" {
			t.Fatal("refused without a reason")
		}
	})
}

func FuzzDecodeAccept(f *testing.F) {
	b := make([]byte, AcceptSize)
	(&Accept{Version: 1, Depth: 2, SlotSize: 4096, SlotRKey: 1, SlotAddr: 4096}).Encode(b)
	f.Add(b)
	v3 := make([]byte, AcceptSizeV3)
	(&Accept{Version: 3, Depth: 2, SlotSize: 4096, SlotRKey: 1, SlotAddr: 4096, Nonce: [NonceSize]byte{1, 2}}).Encode(v3)
	f.Add(v3)
	f.Add(v3[:AcceptSize]) // a version-3 accept without its nonce
	f.Fuzz(func(t *testing.T, in []byte) {
		a, err := DecodeAccept(in)
		if err != nil {
			return
		}
		out := make([]byte, AcceptSizeV3)
		n := a.Encode(out)
		if !bytes.Equal(out[:n], in[:n]) {
			t.Fatalf("re-encoded %x, input %x", out[:n], in[:n])
		}
	})
}

func FuzzDecodeReject(f *testing.F) {
	b := make([]byte, 148)
	n := (&Reject{MinVersion: 1, MaxVersion: 1, Reason: RejectTooMany, Message: "full"}).Encode(b)
	f.Add(b[:n])
	f.Fuzz(func(t *testing.T, in []byte) {
		r, ok := DecodeReject(in)
		if !ok {
			return
		}
		out := make([]byte, RejectHdr+MaxRejectMessage)
		r.Encode(out)
		if len(r.Message) > MaxRejectMessage*3 {
			t.Fatalf("message of %d bytes", len(r.Message))
		}
	})
}

func FuzzDecodeRequest(f *testing.F) {
	b := make([]byte, HeaderSize)
	(&Request{Op: OpWrite, Flags: FlagFUA, Slot: 1, Length: 4096, Handle: 5, Offset: 8192}).Encode(b)
	f.Add(b)
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := DecodeRequest(in)
		if err != nil {
			return
		}
		out := make([]byte, HeaderSize)
		r.Encode(out)
		if !bytes.Equal(out, in[:HeaderSize]) {
			t.Fatalf("re-encoded %x, input %x", out, in[:HeaderSize])
		}
	})
}

func FuzzDecodeReply(f *testing.F) {
	b := make([]byte, HeaderSize)
	(&Reply{Op: OpRead, Flags: FlagInline, Handle: 5, Length: 512}).Encode(b)
	f.Add(b)
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := DecodeReply(in)
		if err != nil {
			return
		}
		out := make([]byte, HeaderSize)
		r.Encode(out)
		if !bytes.Equal(out, in[:HeaderSize]) {
			t.Fatalf("re-encoded %x, input %x", out, in[:HeaderSize])
		}
	})
}

func FuzzDecodeOpen(f *testing.F) {
	b := make([]byte, 256)
	n, _ := (&Open{Queue: 0, Queues: 2, ExportName: "/dev/ram0"}).Encode(b)
	f.Add(b[:n])
	n, _ = (&Open{Queue: 1, Queues: 2, Flags: OpenAuth | OpenReadOnly, ExportName: "/dev/vg0/db", Nonce: [NonceSize]byte{7}, MAC: [MACSize]byte{9}}).Encode(b)
	f.Add(b[:n])
	f.Add(b[:n-1]) // the proof cut short
	f.Fuzz(func(t *testing.T, in []byte) {
		o, err := DecodeOpen(in)
		if err != nil {
			return
		}
		out := make([]byte, len(in)+64)
		m, err := o.Encode(out)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", o, err)
		}
		if !bytes.Equal(out[:m], in[:m]) {
			t.Fatalf("re-encoded %x, input %x", out[:m], in[:m])
		}
	})
}

func FuzzDecodeOpenReply(f *testing.F) {
	b := make([]byte, 256)
	n, _ := (&OpenReply{Size: 1 << 30, LogicalBlockSize: 512, Caps: CapFlush, Message: "hi"}).Encode(b)
	f.Add(b[:n], true)
	n, _ = (&OpenReply{Size: 1 << 30, LogicalBlockSize: 512, Caps: CapFlush, Flags: OpenReplyAuth, MAC: [MACSize]byte{3}}).Encode(b)
	f.Add(b[:n], true)
	f.Add(b[:n-1], true)
	f.Fuzz(func(t *testing.T, in []byte, ok bool) {
		r, err := DecodeOpenReply(in, ok)
		if err != nil {
			return
		}
		out := make([]byte, MinDataArea*2)
		m, err := r.Encode(out)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", r, err)
		}
		if r.Flags&OpenReplyAuth != 0 && !bytes.Equal(out[m-MACSize:m], r.MAC[:]) {
			t.Fatalf("proof not at the end of the re-encoded reply")
		}
	})
}
