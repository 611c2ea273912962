package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hsExports are the exports of the handshake tests.
var hsExports = map[string]Export{
	"disk": {Description: "a RAM disk", Size: 1 << 30, Flags: FlagSendFlush | FlagSendFUA | FlagSendDF,
		MinBlock: 512, PrefBlock: 4096, MaxBlock: 32 << 20},
	"":      {Name: "disk", Description: "a RAM disk", Size: 1 << 30, Flags: FlagSendFlush},
	"plain": {Size: 12345, Flags: FlagReadOnly},
	"bad":   {Size: 4096, MinBlock: 3},
}

func hsLookup(name string) (Export, bool) {
	e, ok := hsExports[name]
	return e, ok
}

func hsList() []string { return []string{"disk", "plain"} }

// hsSentinel is what a test server writes after a successful handshake, so
// that the client can check that the handshake's replies had exactly the
// lengths it expected.
const hsSentinel = "TRANSMISSION"

// hsClient is the client side of the handshake, for the tests.
type hsClient struct {
	t testing.TB
	c net.Conn
}

// greet reads and checks the greeting and sends the client flags.
func (cl *hsClient) greet(flags uint32) {
	cl.t.Helper()
	var g [greetingSize]byte
	if _, err := io.ReadFull(cl.c, g[:]); err != nil {
		cl.t.Fatalf("reading greeting: %v", err)
	}
	if m := binary.BigEndian.Uint64(g[0:]); m != HandshakeMagic {
		cl.t.Fatalf("greeting magic %#x", m)
	}
	if m := binary.BigEndian.Uint64(g[8:]); m != OptionMagic {
		cl.t.Fatalf("greeting option magic %#x", m)
	}
	if f := binary.BigEndian.Uint16(g[16:]); f != HandshakeFlagFixedNewstyle|HandshakeFlagNoZeroes {
		cl.t.Fatalf("handshake flags %#x", f)
	}
	cl.write(binary.BigEndian.AppendUint32(nil, flags))
}

func (cl *hsClient) write(b []byte) {
	cl.t.Helper()
	if _, err := cl.c.Write(b); err != nil {
		cl.t.Fatalf("write: %v", err)
	}
}

// opt sends an option with its data.
func (cl *hsClient) opt(opt uint32, data []byte) {
	cl.t.Helper()
	cl.write(hsOption(opt, data))
}

func hsOption(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, OptionMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// hsGoData is the data of NBD_OPT_GO or NBD_OPT_INFO.
func hsGoData(name string, reqs ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(reqs)))
	for _, r := range reqs {
		b = binary.BigEndian.AppendUint16(b, r)
	}
	return b
}

type hsReply struct {
	opt, typ uint32
	data     []byte
}

func (cl *hsClient) read() hsReply {
	cl.t.Helper()
	var h [optionReplyHdrSize]byte
	if _, err := io.ReadFull(cl.c, h[:]); err != nil {
		cl.t.Fatalf("reading option reply: %v", err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != OptionReplyMagic {
		cl.t.Fatalf("option reply magic %#x", m)
	}
	r := hsReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	n := binary.BigEndian.Uint32(h[16:])
	if n > 1<<20 {
		cl.t.Fatalf("option reply of %d bytes", n)
	}
	r.data = make([]byte, n)
	if _, err := io.ReadFull(cl.c, r.data); err != nil {
		cl.t.Fatalf("reading option reply data: %v", err)
	}
	return r
}

// expect reads a reply and checks its option and type.
func (cl *hsClient) expect(opt, typ uint32) hsReply {
	cl.t.Helper()
	r := cl.read()
	if r.opt != opt || r.typ != typ {
		cl.t.Fatalf("reply to %s is %#x %q, want %#x", OptionName(r.opt), r.typ, r.data, typ)
	}
	if typ&(1<<31) != 0 && len(r.data) == 0 {
		cl.t.Errorf("error reply %#x to %s has no message", typ, OptionName(opt))
	}
	return r
}

// hsInfo is what the NBD_REP_INFO replies to one NBD_OPT_INFO/GO said.
type hsInfo struct {
	size                 uint64
	flags                uint16
	name, desc           *string
	min, pref, max       uint32
	haveExport, haveBlks bool
}

// infos reads NBD_REP_INFO replies up to the NBD_REP_ACK.
func (cl *hsClient) infos(opt uint32) hsInfo {
	cl.t.Helper()
	var in hsInfo
	for {
		r := cl.read()
		if r.opt != opt {
			cl.t.Fatalf("reply for %s, want %s", OptionName(r.opt), OptionName(opt))
		}
		if r.typ == RepAck {
			if len(r.data) != 0 {
				cl.t.Errorf("ACK with %d bytes", len(r.data))
			}
			if !in.haveExport {
				cl.t.Errorf("%s: no NBD_INFO_EXPORT before the ACK", OptionName(opt))
			}
			return in
		}
		if r.typ != RepInfo || len(r.data) < 2 {
			cl.t.Fatalf("reply %#x %q, want NBD_REP_INFO", r.typ, r.data)
		}
		p := r.data[2:]
		switch it := binary.BigEndian.Uint16(r.data); it {
		case InfoExport:
			if len(p) != 10 || in.haveExport {
				cl.t.Fatalf("NBD_INFO_EXPORT %x (again %v)", p, in.haveExport)
			}
			in.haveExport, in.size, in.flags = true, binary.BigEndian.Uint64(p), binary.BigEndian.Uint16(p[8:])
		case InfoName:
			s := string(p)
			in.name = &s
		case InfoDescription:
			s := string(p)
			in.desc = &s
		case InfoBlockSize:
			if len(p) != 12 {
				cl.t.Fatalf("NBD_INFO_BLOCK_SIZE %x", p)
			}
			in.haveBlks = true
			in.min, in.pref, in.max = binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:]), binary.BigEndian.Uint32(p[8:])
		default:
			cl.t.Fatalf("unknown info type %d", it)
		}
	}
}

// sentinel checks that the next bytes from the server are hsSentinel.
func (cl *hsClient) sentinel() {
	cl.t.Helper()
	b := make([]byte, len(hsSentinel))
	if _, err := io.ReadFull(cl.c, b); err != nil || string(b) != hsSentinel {
		cl.t.Fatalf("after the handshake read %q, %v; want %q", b, err, hsSentinel)
	}
}

// closed checks that the server closed the connection.
func (cl *hsClient) closed() {
	cl.t.Helper()
	var b [1]byte
	if n, err := cl.c.Read(b[:]); err == nil {
		cl.t.Fatalf("read %d bytes from a server that should have hung up", n)
	}
}

// goDisk negotiates the export "disk" with NBD_OPT_GO and checks the replies.
func (cl *hsClient) goDisk() {
	cl.t.Helper()
	cl.opt(OptGo, hsGoData("disk"))
	in := cl.infos(OptGo)
	if in.size != 1<<30 || !in.haveBlks {
		cl.t.Fatalf("NBD_OPT_GO disk: %+v", in)
	}
}

type hsResult struct {
	neg Negotiated
	err error
}

// hsStart serves a handshake on one end of a net.Pipe and returns a client
// on the other end. The server closes its end on error, as a caller must, and
// writes hsSentinel after a successful handshake.
func hsStart(t *testing.T, srv *HandshakeServer) (*hsClient, <-chan hsResult) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	deadline := time.Now().Add(20 * time.Second)
	a.SetDeadline(deadline)
	b.SetDeadline(deadline)
	ch := make(chan hsResult, 1)
	go func() {
		neg, err := srv.Serve(b)
		if err != nil {
			b.Close()
		} else {
			b.Write([]byte(hsSentinel))
		}
		ch <- hsResult{neg, err}
	}()
	return &hsClient{t: t, c: a}, ch
}

func TestHandshake(t *testing.T) {
	fixed := ClientFlagFixedNewstyle | ClientFlagNoZeroes
	type tc struct {
		name    string
		srv     HandshakeServer // Lookup defaults to hsLookup
		client  func(cl *hsClient)
		wantErr string // substring of Serve's error; "" for success
		check   func(t *testing.T, n Negotiated)
	}
	diskNeg := func(t *testing.T, n Negotiated) {
		if n.Name != "disk" || n.Export.Size != 1<<30 || n.ExportName {
			t.Errorf("negotiated %+v", n)
		}
	}
	cases := []tc{
		{
			name: "GO default export without requests",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptGo, hsGoData(""))
				in := cl.infos(OptGo)
				if in.size != 1<<30 || in.flags != FlagHasFlags|FlagSendFlush || in.name != nil || in.desc != nil || in.haveBlks {
					t.Errorf("info %+v", in)
				}
				cl.sentinel()
			},
			check: func(t *testing.T, n Negotiated) {
				if n.Name != "" || n.Export.Name != "disk" || n.StructuredReplies || n.ClientFlags != fixed {
					t.Errorf("negotiated %+v", n)
				}
			},
		},
		{
			name: "GO with every request",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptGo, hsGoData("disk", InfoName, InfoDescription, InfoBlockSize, InfoExport, 0x7777))
				in := cl.infos(OptGo)
				// Without structured replies FlagSendDF is dropped.
				if in.size != 1<<30 || in.flags != FlagHasFlags|FlagSendFlush|FlagSendFUA {
					t.Errorf("export info %+v", in)
				}
				if in.name == nil || *in.name != "disk" || in.desc == nil || *in.desc != "a RAM disk" {
					t.Errorf("name %v description %v", in.name, in.desc)
				}
				if !in.haveBlks || in.min != 512 || in.pref != 4096 || in.max != 32<<20 {
					t.Errorf("block sizes %+v", in)
				}
				cl.sentinel()
			},
			check: diskNeg,
		},
		{
			name: "GO export without block sizes or description",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptGo, hsGoData("plain", InfoName, InfoDescription, InfoBlockSize))
				in := cl.infos(OptGo)
				if in.size != 12345 || in.flags != FlagHasFlags|FlagReadOnly || in.name == nil || *in.name != "plain" || in.desc != nil || in.haveBlks {
					t.Errorf("info %+v", in)
				}
				cl.sentinel()
			},
			check: func(t *testing.T, n Negotiated) {
				if n.Name != "plain" || n.Export.Flags != FlagHasFlags|FlagReadOnly {
					t.Errorf("negotiated %+v", n)
				}
			},
		},
		{
			name: "INFO then GO",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptInfo, hsGoData("plain", InfoName))
				if in := cl.infos(OptInfo); in.size != 12345 || *in.name != "plain" {
					t.Errorf("info %+v", in)
				}
				cl.opt(OptInfo, hsGoData("nope"))
				cl.expect(OptInfo, RepErrUnknown)
				cl.goDisk()
				cl.sentinel()
			},
			check: diskNeg,
		},
		{
			name: "GO unknown export then a known one",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptGo, hsGoData("nope", InfoName))
				if r := cl.expect(OptGo, RepErrUnknown); !strings.Contains(string(r.data), `"nope"`) {
					t.Errorf("message %q does not name the export", r.data)
				}
				cl.goDisk()
				cl.sentinel()
			},
			check: diskNeg,
		},
		{
			name: "GO export with bad block sizes is refused",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptGo, hsGoData("bad"))
				if r := cl.expect(OptGo, RepErrPolicy); !strings.Contains(string(r.data), "minimum block size 3") {
					t.Errorf("message %q", r.data)
				}
				cl.goDisk()
				cl.sentinel()
			},
			check: diskNeg,
		},
		{
			name: "structured replies",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptStructuredReply, nil)
				cl.expect(OptStructuredReply, RepAck)
				cl.opt(OptGo, hsGoData("disk"))
				if in := cl.infos(OptGo); in.flags&FlagSendDF == 0 {
					t.Errorf("FlagSendDF dropped with structured replies: %#x", in.flags)
				}
				cl.sentinel()
			},
			check: func(t *testing.T, n Negotiated) {
				if !n.StructuredReplies || n.Export.Flags&FlagSendDF == 0 {
					t.Errorf("negotiated %+v", n)
				}
			},
		},
		{
			name: "structured replies refused by the server",
			srv:  HandshakeServer{NoStructuredReplies: true},
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptStructuredReply, nil)
				cl.expect(OptStructuredReply, RepErrUnsup)
				cl.goDisk()
				cl.sentinel()
			},
			check: func(t *testing.T, n Negotiated) {
				if n.StructuredReplies {
					t.Errorf("negotiated %+v", n)
				}
			},
		},
		{
			name: "structured replies with data",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptStructuredReply, []byte{1})
				cl.expect(OptStructuredReply, RepErrInvalid)
				cl.goDisk()
				cl.sentinel()
			},
			check: func(t *testing.T, n Negotiated) {
				if n.StructuredReplies {
					t.Errorf("negotiated %+v", n)
				}
			},
		},
		{
			name: "LIST then ABORT",
			srv:  HandshakeServer{List: hsList},
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptList, nil)
				var names []string
				for {
					r := cl.read()
					if r.opt != OptList {
						t.Fatalf("reply for %s", OptionName(r.opt))
					}
					if r.typ == RepAck {
						break
					}
					if r.typ != RepServer || len(r.data) < 4 || int(binary.BigEndian.Uint32(r.data)) != len(r.data)-4 {
						t.Fatalf("LIST reply %#x %q", r.typ, r.data)
					}
					names = append(names, string(r.data[4:]))
				}
				if strings.Join(names, ",") != "disk,plain" {
					t.Errorf("LIST said %q", names)
				}
				cl.opt(OptAbort, nil)
				cl.expect(OptAbort, RepAck)
				cl.closed()
			},
			wantErr: "NBD_OPT_ABORT",
		},
		{
			name: "LIST with data",
			srv:  HandshakeServer{List: hsList},
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptList, []byte("x"))
				cl.expect(OptList, RepErrInvalid)
				cl.goDisk()
				cl.sentinel()
			},
			check: diskNeg,
		},
		{
			name: "LIST refused without a list",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptList, nil)
				cl.expect(OptList, RepErrPolicy)
				cl.goDisk()
				cl.sentinel()
			},
			check: diskNeg,
		},
		{
			name: "ABORT with data, then ABORT",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptAbort, []byte("bye"))
				cl.expect(OptAbort, RepErrInvalid)
				cl.opt(OptAbort, nil)
				cl.expect(OptAbort, RepAck)
				cl.closed()
			},
			wantErr: "NBD_OPT_ABORT",
		},
		{
			name: "EXPORT_NAME with NO_ZEROES",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptExportName, []byte("plain"))
				var b [10]byte
				if _, err := io.ReadFull(cl.c, b[:]); err != nil {
					t.Fatal(err)
				}
				if binary.BigEndian.Uint64(b[:]) != 12345 || binary.BigEndian.Uint16(b[8:]) != FlagHasFlags|FlagReadOnly {
					t.Errorf("EXPORT_NAME reply %x", b)
				}
				cl.sentinel()
			},
			check: func(t *testing.T, n Negotiated) {
				if n.Name != "plain" || !n.ExportName || n.Export.Size != 12345 {
					t.Errorf("negotiated %+v", n)
				}
			},
		},
		{
			name: "EXPORT_NAME with zeroes, after other options",
			client: func(cl *hsClient) {
				cl.greet(ClientFlagFixedNewstyle)
				cl.opt(OptStructuredReply, nil)
				cl.expect(OptStructuredReply, RepAck)
				cl.opt(OptExportName, nil)
				b := make([]byte, 10+124)
				if _, err := io.ReadFull(cl.c, b); err != nil {
					t.Fatal(err)
				}
				if binary.BigEndian.Uint64(b) != 1<<30 || !bytes.Equal(b[10:], make([]byte, 124)) {
					t.Errorf("EXPORT_NAME reply %x", b)
				}
				cl.sentinel()
			},
			check: func(t *testing.T, n Negotiated) {
				if n.Name != "" || !n.ExportName || !n.StructuredReplies {
					t.Errorf("negotiated %+v", n)
				}
			},
		},
		{
			name: "EXPORT_NAME from a non-fixed-newstyle client",
			client: func(cl *hsClient) {
				cl.greet(0)
				cl.opt(OptExportName, []byte("disk"))
				b := make([]byte, 10+124)
				if _, err := io.ReadFull(cl.c, b); err != nil {
					t.Fatal(err)
				}
				cl.sentinel()
			},
			check: diskNeg2(true),
		},
		{
			name: "EXPORT_NAME unknown export",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptExportName, []byte("nope"))
				cl.closed()
			},
			wantErr: `NBD_OPT_EXPORT_NAME: unknown export "nope"`,
		},
		{
			name: "EXPORT_NAME export with bad block sizes",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptExportName, []byte("bad"))
				cl.closed()
			},
			wantErr: "NBD_OPT_EXPORT_NAME: nbd: export \"bad\": minimum block size",
		},
		{
			name: "EXPORT_NAME name too long",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				// The server hangs up after the header: the rest of the
				// write may fail.
				cl.c.Write(hsOption(OptExportName, bytes.Repeat([]byte("a"), MaxStringLength+1)))
				cl.closed()
			},
			wantErr: "NBD_OPT_EXPORT_NAME: export name of 4097 bytes is longer than 4096",
		},
		{
			name: "EXPORT_NAME name with NUL",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptExportName, []byte("di\x00sk"))
				cl.closed()
			},
			wantErr: "NBD_OPT_EXPORT_NAME: export name contains a NUL byte",
		},
		{
			name: "unknown client flags",
			client: func(cl *hsClient) {
				cl.greet(fixed | 1<<5)
				cl.closed()
			},
			wantErr: "client flags 0x23 have unknown bits 0x20",
		},
		{
			name: "unsupported options keep the connection",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				for _, o := range []uint32{OptStartTLS, OptListMetaContext, OptSetMetaContext, OptExtendedHeaders, 4, 42, 1 << 31} {
					cl.opt(o, []byte("some data"))
					if r := cl.expect(o, RepErrUnsup); !strings.Contains(string(r.data), OptionName(o)) {
						t.Errorf("message %q does not name %s", r.data, OptionName(o))
					}
				}
				cl.goDisk()
				cl.sentinel()
			},
			check: diskNeg,
		},
		{
			name: "options longer than the limit are skipped",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				big := make([]byte, MaxOptionLength+1)
				cl.opt(OptGo, big)
				cl.expect(OptGo, RepErrTooBig)
				cl.opt(99, make([]byte, 100000))
				cl.expect(99, RepErrUnsup)
				cl.opt(OptInfo, append(hsGoData("disk"), make([]byte, MaxOptionLength)...))
				cl.expect(OptInfo, RepErrTooBig)
				cl.goDisk()
				cl.sentinel()
			},
			check: diskNeg,
		},
		{
			name: "bad option magic",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				b := hsOption(OptGo, hsGoData("disk"))
				b[0] ^= 1
				cl.c.Write(b) // the server hangs up after the header
				cl.closed()
			},
			wantErr: "bad magic",
		},
		{
			name: "client hangs up between options",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.opt(OptStructuredReply, nil)
				cl.expect(OptStructuredReply, RepAck)
				cl.c.Close()
			},
			wantErr: "client closed the connection before choosing an export: EOF",
		},
		{
			name: "client hangs up inside an option",
			client: func(cl *hsClient) {
				cl.greet(fixed)
				cl.write(hsOption(OptGo, hsGoData("disk"))[:20])
				cl.c.Close()
			},
			wantErr: "NBD_OPT_GO: reading 10 bytes of option data: unexpected EOF",
		},
		{
			name: "client hangs up inside the client flags",
			client: func(cl *hsClient) {
				if _, err := io.ReadFull(cl.c, make([]byte, greetingSize)); err != nil {
					t.Fatal(err)
				}
				cl.write([]byte{0, 0})
				cl.c.Close()
			},
			wantErr: "reading the client flags: unexpected EOF",
		},
	}
	// Malformed NBD_OPT_INFO and NBD_OPT_GO data: each is refused with
	// NBD_REP_ERR_INVALID and the handshake goes on.
	nameLen := func(n uint32, rest string) []byte {
		return append(binary.BigEndian.AppendUint32(nil, n), rest...)
	}
	malformed := []struct {
		name, msg string
		data      []byte
	}{
		{"empty", "shorter than 6", nil},
		{"5 bytes", "shorter than 6", []byte{0, 0, 0, 0, 0}},
		{"name length past the end", "does not fit", nameLen(100, "disk\x00\x00")},
		{"name length huge", "does not fit", nameLen(0xffffffff, "disk\x00\x00")},
		{"name length one too many", "does not fit", nameLen(5, "disk\x00\x00")},
		{"more requests than data", "3 information requests need 6 bytes, option has 2", nameLen(4, "disk\x00\x03\x00\x01")},
		{"fewer requests than data", "0 information requests need 0 bytes, option has 2", nameLen(4, "disk\x00\x00\x00\x01")},
		{"odd request bytes", "1 information requests need 2 bytes, option has 3", nameLen(4, "disk\x00\x01\x00\x01\x02")},
		{"name with NUL", "NUL", hsGoData("di\x00sk")},
		{"name too long", "export name of 5000 bytes is longer than 4096", hsGoData(strings.Repeat("a", 5000))},
	}
	for _, m := range malformed {
		for _, o := range []uint32{OptInfo, OptGo} {
			cases = append(cases, tc{
				name: "malformed " + OptionName(o) + " " + m.name,
				client: func(cl *hsClient) {
					cl.greet(fixed)
					cl.opt(o, m.data)
					if r := cl.expect(o, RepErrInvalid); !strings.Contains(string(r.data), m.msg) || !strings.HasPrefix(string(r.data), OptionName(o)) {
						t.Errorf("message %q, want %s and %q", r.data, OptionName(o), m.msg)
					}
					cl.goDisk()
					cl.sentinel()
				},
				check: diskNeg,
			})
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := c.srv
			if srv.Lookup == nil {
				srv.Lookup = hsLookup
			}
			cl, res := hsStart(t, &srv)
			cl.t = t
			c.client(cl)
			r := <-res
			if c.wantErr != "" {
				if r.err == nil || !strings.Contains(r.err.Error(), c.wantErr) {
					t.Fatalf("Serve error %v, want one containing %q", r.err, c.wantErr)
				}
				return
			}
			if r.err != nil {
				t.Fatalf("Serve: %v", r.err)
			}
			if c.check != nil {
				c.check(t, r.neg)
			}
		})
	}
}

func diskNeg2(exportName bool) func(t *testing.T, n Negotiated) {
	return func(t *testing.T, n Negotiated) {
		if n.Name != "disk" || n.ExportName != exportName || n.ClientFlags != 0 {
			t.Errorf("negotiated %+v", n)
		}
	}
}

func TestHandshakeErrorKinds(t *testing.T) {
	t.Run("abort", func(t *testing.T) {
		cl, res := hsStart(t, &HandshakeServer{Lookup: hsLookup})
		cl.greet(ClientFlagFixedNewstyle)
		cl.opt(OptAbort, nil)
		// The client may hang up without reading the ACK.
		cl.c.Close()
		if r := <-res; !errors.Is(r.err, ErrAbort) {
			t.Fatalf("Serve: %v, want ErrAbort", r.err)
		}
	})
	t.Run("bad magic", func(t *testing.T) {
		cl, res := hsStart(t, &HandshakeServer{Lookup: hsLookup})
		cl.greet(ClientFlagFixedNewstyle)
		cl.write(make([]byte, optionHeaderSize))
		if r := <-res; !errors.Is(r.err, ErrBadMagic) {
			t.Fatalf("Serve: %v, want ErrBadMagic", r.err)
		}
	})
	t.Run("eof", func(t *testing.T) {
		cl, res := hsStart(t, &HandshakeServer{Lookup: hsLookup})
		cl.greet(ClientFlagFixedNewstyle)
		cl.c.Close()
		if r := <-res; !errors.Is(r.err, io.EOF) {
			t.Fatalf("Serve: %v, want io.EOF", r.err)
		}
	})
	t.Run("ServeHandshake", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		res := make(chan error, 1)
		go func() {
			_, err := ServeHandshake(b, hsLookup, nil)
			res <- err
		}()
		cl := &hsClient{t: t, c: a}
		cl.greet(ClientFlagFixedNewstyle)
		cl.opt(OptList, nil)
		cl.expect(OptList, RepErrPolicy)
		cl.goDisk()
		if err := <-res; err != nil {
			t.Fatal(err)
		}
	})
}

// hsSocketPair returns both ends of an AF_UNIX stream socketpair as
// net.Conns on the netpoller.
func hsSocketPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var cs [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "hs")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs[i] = c
	}
	return cs[0], cs[1]
}

// TestHandshakeNoReadAhead sends the whole handshake and the first
// transmission request in one write, before the server's greeting is even
// read, and checks that Serve leaves the request on the socket.
func TestHandshakeNoReadAhead(t *testing.T) {
	client, server := hsSocketPair(t)
	client.SetDeadline(time.Now().Add(20 * time.Second))
	server.SetDeadline(time.Now().Add(20 * time.Second))
	var msg []byte
	msg = binary.BigEndian.AppendUint32(msg, ClientFlagFixedNewstyle|ClientFlagNoZeroes)
	msg = append(msg, hsOption(OptStructuredReply, nil)...)
	msg = append(msg, hsOption(OptGo, hsGoData("disk", InfoBlockSize))...)
	req := Request{Type: CmdWrite, Handle: 0xfeed, Offset: 4096, Length: 5}
	var rb [RequestSize]byte
	req.Encode(rb[:])
	msg = append(msg, rb[:]...)
	msg = append(msg, "hello"...)
	if _, err := client.Write(msg); err != nil {
		t.Fatal(err)
	}
	neg, err := (&HandshakeServer{Lookup: hsLookup}).Serve(server)
	if err != nil {
		t.Fatal(err)
	}
	if neg.Name != "disk" || !neg.StructuredReplies {
		t.Fatalf("negotiated %+v", neg)
	}
	got := make([]byte, RequestSize+5)
	if _, err := io.ReadFull(server, got); err != nil {
		t.Fatal(err)
	}
	r, err := DecodeRequest(got)
	if err != nil || r != req || string(got[RequestSize:]) != "hello" {
		t.Fatalf("after the handshake: %v %v %q", r, err, got[RequestSize:])
	}
	// The client sees the greeting and the replies, and nothing else.
	cl := &hsClient{t: t, c: client}
	var g [greetingSize]byte
	if _, err := io.ReadFull(client, g[:]); err != nil {
		t.Fatal(err)
	}
	cl.expect(OptStructuredReply, RepAck)
	if in := cl.infos(OptGo); in.min != 512 {
		t.Fatalf("info %+v", in)
	}
	server.Write([]byte(hsSentinel))
	cl.sentinel()
}

func TestExportValidate(t *testing.T) {
	for _, c := range []struct {
		e       Export
		wantErr string
	}{
		{Export{}, ""},
		{Export{MinBlock: 512}, ""},
		{Export{MinBlock: 8192}, ""}, // preferred defaults to the minimum
		{Export{MinBlock: 1, PrefBlock: 1, MaxBlock: 1}, ""},
		{Export{MinBlock: 512, PrefBlock: 4096, MaxBlock: 0xffffffff}, ""},
		{Export{MinBlock: 3}, "minimum block size 3"},
		{Export{MinBlock: 128 << 10}, "minimum block size 131072"},
		{Export{PrefBlock: 1000}, "preferred block size 1000"},
		{Export{MinBlock: 4096, PrefBlock: 512}, "preferred block size 512"},
		{Export{MinBlock: 512, MaxBlock: 1000}, "maximum block size 1000"},
		{Export{MinBlock: 4096, MaxBlock: 512}, "maximum block size 512"},
		{Export{Name: strings.Repeat("x", 4097)}, "longer than 4096"},
		{Export{Description: strings.Repeat("x", 4097)}, "longer than 4096"},
	} {
		err := c.e.Validate()
		if (err == nil) != (c.wantErr == "") || err != nil && !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("%+v: Validate() = %v, want %q", c.e, err, c.wantErr)
		}
	}
	if min, pref, max, ok := (Export{MinBlock: 8192}).BlockSizes(); !ok || min != 8192 || pref != 8192 || max != 0xffffffff {
		t.Errorf("BlockSizes = %d %d %d %v", min, pref, max, ok)
	}
	if _, _, _, ok := (Export{}).BlockSizes(); ok {
		t.Error("an export without block sizes has some")
	}
}

func TestOptionName(t *testing.T) {
	for o, want := range map[uint32]string{OptGo: "NBD_OPT_GO", OptExportName: "NBD_OPT_EXPORT_NAME", 77: "NBD_OPT(77)"} {
		if got := OptionName(o); got != want {
			t.Errorf("OptionName(%d) = %q, want %q", o, got, want)
		}
	}
}

func TestStructuredReplyCodec(t *testing.T) {
	var b [OffsetDataHeaderSize]byte
	EncodeReplyNone(b[:], 0x1122334455667788)
	if got, want := b[:StructuredReplySize], mustHex(t, "668e33ef"+"0001"+"0000"+"1122334455667788"+"00000000"); !bytes.Equal(got, want) {
		t.Errorf("NONE chunk %x, want %x", got, want)
	}
	EncodeOffsetData(b[:], 7, 4096, 512, true)
	if got, want := b[:], mustHex(t, "668e33ef"+"0001"+"0001"+"0000000000000007"+"00000208"+"0000000000001000"); !bytes.Equal(got, want) {
		t.Errorf("OFFSET_DATA header %x, want %x", got, want)
	}
	r, err := DecodeStructuredReply(b[:])
	if err != nil || r != (StructuredReply{Flags: ReplyFlagDone, Type: ReplyTypeOffsetData, Handle: 7, Length: 520}) {
		t.Errorf("decoded %+v, %v", r, err)
	}
	EncodeOffsetData(b[:], 7, 0, 1, false)
	if r, _ := DecodeStructuredReply(b[:]); r.Flags != 0 || r.Length != 9 {
		t.Errorf("not-done chunk %+v", r)
	}
	e := AppendReplyError([]byte("x"), 9, EINVAL, "bad", true)
	if got, want := e, append([]byte("x"), mustHex(t, "668e33ef"+"0001"+"8001"+"0000000000000009"+"00000009"+"00000016"+"0003"+"626164")...); !bytes.Equal(got, want) {
		t.Errorf("ERROR chunk %x, want %x", got, want)
	}
	errno, msg, err := DecodeReplyError(e[1+StructuredReplySize:])
	if errno != EINVAL || msg != "bad" || err != nil {
		t.Errorf("DecodeReplyError = %d %q %v", errno, msg, err)
	}
	if e := AppendReplyError(nil, 1, 0, strings.Repeat("m", 5000), false); binary.BigEndian.Uint32(e[20:]) != EIO ||
		binary.BigEndian.Uint16(e[24:]) != MaxStringLength || len(e) != StructuredReplySize+6+MaxStringLength || binary.BigEndian.Uint16(e[4:]) != 0 {
		t.Errorf("ERROR chunk with errno 0 and a long message: %x...", e[:26])
	}
	if _, _, err := DecodeReplyError([]byte{0, 0, 0, 5, 0, 9, 'a'}); err == nil {
		t.Error("DecodeReplyError accepted a message longer than the payload")
	}
	if _, err := DecodeStructuredReply(b[:10]); err == nil {
		t.Error("DecodeStructuredReply accepted a short buffer")
	}
	b[0] ^= 0xff
	if _, err := DecodeStructuredReply(b[:]); !errors.Is(err, ErrBadMagic) {
		t.Errorf("bad magic: %v", err)
	}
	for _, n := range []uint32{0, MaxOffsetDataLength + 1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("EncodeOffsetData of %d bytes did not panic", n)
				}
			}()
			EncodeOffsetData(b[:], 1, 0, n, true)
		}()
	}
}
