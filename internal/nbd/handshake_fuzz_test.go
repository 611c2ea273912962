package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"
)

// hsFuzzConn is a net.Conn whose reads come from a fixed client stream and
// whose writes are kept.
type hsFuzzConn struct {
	r *bytes.Reader
	w bytes.Buffer
}

func (c *hsFuzzConn) Read(b []byte) (int, error) { return c.r.Read(b) }
func (c *hsFuzzConn) Write(b []byte) (int, error) {
	if c.w.Len()+len(b) > 64<<20 {
		return 0, errors.New("hsFuzzConn: too much output")
	}
	return c.w.Write(b)
}
func (c *hsFuzzConn) Close() error                     { return nil }
func (c *hsFuzzConn) LocalAddr() net.Addr              { return nil }
func (c *hsFuzzConn) RemoteAddr() net.Addr             { return nil }
func (c *hsFuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *hsFuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *hsFuzzConn) SetWriteDeadline(time.Time) error { return nil }

// hsFuzzSeeds are client streams (client flags and options) for
// FuzzHandshake; testdata/fuzz/FuzzHandshake holds the same ones.
func hsFuzzSeeds() [][]byte {
	flags := func(f uint32) []byte { return binary.BigEndian.AppendUint32(nil, f) }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	both := ClientFlagFixedNewstyle | ClientFlagNoZeroes
	return [][]byte{
		cat(flags(both), hsOption(OptGo, hsGoData("disk", InfoName, InfoDescription, InfoBlockSize))),
		cat(flags(both), hsOption(OptStructuredReply, nil), hsOption(OptGo, hsGoData(""))),
		cat(flags(ClientFlagFixedNewstyle), hsOption(OptList, nil), hsOption(OptAbort, nil)),
		cat(flags(0), hsOption(OptExportName, []byte("plain"))),
		cat(flags(both), hsOption(OptInfo, hsGoData("nope")), hsOption(OptGo, hsGoData("bad")), hsOption(OptGo, hsGoData("disk"))),
		cat(flags(both), hsOption(OptListMetaContext, []byte("base:allocation")), hsOption(OptGo, []byte{0xff, 0xff, 0xff, 0xff, 0, 0}),
			hsOption(OptStructuredReply, []byte{1}), hsOption(OptExportName, []byte("disk"))),
		cat(flags(both), hsOption(OptInfo, append(hsGoData("disk"), 0)), hsOption(OptGo, hsGoData("disk\x00")), hsOption(OptGo, hsGoData("plain", InfoExport))),
		flags(1 << 7),
	}
}

// FuzzHandshake feeds arbitrary client streams to the handshake server and
// checks that it never panics or hangs, answers each option it reads with
// well-formed replies ending in exactly one final reply, and, when it
// succeeds, has read exactly up to the end of the option that chose the
// export, no further.
func FuzzHandshake(f *testing.F) {
	for _, s := range hsFuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, noSR := range []bool{false, true} {
			hsFuzzOne(t, data, noSR)
		}
	})
}

func hsFuzzOne(t *testing.T, data []byte, noSR bool) {
	c := &hsFuzzConn{r: bytes.NewReader(data)}
	srv := &HandshakeServer{Lookup: hsLookup, List: hsList, NoStructuredReplies: noSR}
	neg, err := srv.Serve(c)
	consumed := len(data) - c.r.Len()
	out := c.w.Bytes()
	if len(out) < greetingSize || binary.BigEndian.Uint64(out) != HandshakeMagic {
		t.Fatalf("output does not start with the greeting: %x", out)
	}
	if len(data) < 4 {
		if err == nil {
			t.Fatal("handshake succeeded without client flags")
		}
		return
	}
	cflags := binary.BigEndian.Uint32(data)
	if cflags&^(ClientFlagFixedNewstyle|ClientFlagNoZeroes) != 0 {
		if err == nil || consumed != 4 || len(out) != greetingSize {
			t.Fatalf("bad client flags %#x: err %v, consumed %d, output %d bytes", cflags, err, consumed, len(out))
		}
		return
	}
	// Walk the client's options and the server's replies side by side.
	pos, opos := 4, greetingSize
	var last uint32
	ended := false // the last option walked ended the handshake
	for !ended && pos+optionHeaderSize <= consumed {
		if binary.BigEndian.Uint64(data[pos:]) != OptionMagic {
			break
		}
		opt := binary.BigEndian.Uint32(data[pos+8:])
		end := uint64(pos) + optionHeaderSize + uint64(binary.BigEndian.Uint32(data[pos+12:]))
		if end > uint64(consumed) {
			break
		}
		pos, last = int(end), opt
		if opt == OptExportName {
			ended = true
			break
		}
		for {
			if opos+optionReplyHdrSize > len(out) {
				t.Fatalf("no final reply to %s at input offset %d", OptionName(opt), pos)
			}
			if m := binary.BigEndian.Uint64(out[opos:]); m != OptionReplyMagic {
				t.Fatalf("reply magic %#x at output offset %d", m, opos)
			}
			ropt, typ := binary.BigEndian.Uint32(out[opos+8:]), binary.BigEndian.Uint32(out[opos+12:])
			n := int(binary.BigEndian.Uint32(out[opos+16:]))
			if n > 4+MaxStringLength || opos+optionReplyHdrSize+n > len(out) {
				t.Fatalf("reply of %d bytes at output offset %d of %d", n, opos, len(out))
			}
			payload := out[opos+optionReplyHdrSize : opos+optionReplyHdrSize+n]
			opos += optionReplyHdrSize + n
			if ropt != opt {
				t.Fatalf("reply for %s to %s", OptionName(ropt), OptionName(opt))
			}
			if typ == RepAck {
				if n != 0 {
					t.Fatalf("ACK with %d bytes", n)
				}
				ended = opt == OptGo || opt == OptAbort
				break
			}
			if typ&(1<<31) != 0 {
				break
			}
			switch {
			case typ == RepServer && opt == OptList:
				if n < 4 || int(binary.BigEndian.Uint32(payload)) != n-4 {
					t.Fatalf("NBD_REP_SERVER %x", payload)
				}
			case typ == RepInfo && (opt == OptGo || opt == OptInfo):
				if n < 2 {
					t.Fatalf("NBD_REP_INFO %x", payload)
				}
			default:
				t.Fatalf("reply type %#x to %s", typ, OptionName(opt))
			}
		}
	}
	rest := len(out) - opos
	if err != nil {
		if last == OptAbort && ended {
			if !errors.Is(err, ErrAbort) {
				t.Fatalf("ABORT acknowledged, but Serve: %v", err)
			}
		} else if ended && last == OptGo {
			t.Fatalf("GO acknowledged, but Serve: %v", err)
		}
		if rest != 0 {
			t.Fatalf("Serve failed (%v) with %d bytes of unexplained output", err, rest)
		}
		return
	}
	if !ended || (last != OptGo && last != OptExportName) {
		t.Fatalf("Serve succeeded, but the last option walked was %s (ended %v)", OptionName(last), ended)
	}
	if pos != consumed {
		t.Fatalf("Serve read %d bytes, but the handshake ends at %d", consumed, pos)
	}
	if _, ok := hsExports[neg.Name]; !ok || neg.Export.Flags&FlagHasFlags == 0 || neg.ExportName != (last == OptExportName) {
		t.Fatalf("negotiated %+v", neg)
	}
	if noSR && neg.StructuredReplies {
		t.Fatal("structured replies negotiated although refused")
	}
	want := 0
	if last == OptExportName {
		want = 10
		if cflags&ClientFlagNoZeroes == 0 {
			want += exportNameZeroes
		}
	}
	if rest != want {
		t.Fatalf("%d bytes after the last option reply, want %d", rest, want)
	}
}
