package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// connVariants are the Conn configurations every stream test runs with.
var connVariants = []struct {
	name string
	opts *ConnOptions
}{
	{"default", nil},
	{"tiny buffer", &ConnOptions{ReadBufferSize: RequestSize}},
	{"netpoller", &ConnOptions{Netpoller: true}},
	{"blocking", &ConnOptions{blocking: true}},
}

// fakeKernel is the kernel's end of a socketpair: it writes requests and
// reads replies with blocking system calls.
type fakeKernel struct {
	f *os.File
}

func newTestConn(t *testing.T, opts *ConnOptions) (*Conn, *fakeKernel) {
	t.Helper()
	kern, c, err := NewSocketPair(opts)
	if err != nil {
		t.Fatalf("NewSocketPair: %v", err)
	}
	t.Cleanup(func() {
		c.Close()
		kern.Close()
	})
	return c, &fakeKernel{f: kern}
}

func (k *fakeKernel) send(r Request, payload []byte) error {
	b := make([]byte, RequestSize+len(payload))
	r.Encode(b)
	copy(b[RequestSize:], payload)
	_, err := k.f.Write(b)
	return err
}

// recv reads one reply; dataLen says how much payload follows a successful
// reply for a handle.
func (k *fakeKernel) recv(dataLen func(handle uint64) int) (Reply, []byte, error) {
	var hdr [ReplySize]byte
	if _, err := io.ReadFull(k.f, hdr[:]); err != nil {
		return Reply{}, nil, err
	}
	r, err := DecodeReply(hdr[:])
	if err != nil {
		return Reply{}, nil, err
	}
	if r.Error != 0 {
		return r, nil, nil
	}
	data := make([]byte, dataLen(r.Handle))
	if _, err := io.ReadFull(k.f, data); err != nil {
		return r, nil, err
	}
	return r, data, nil
}

// pattern returns n deterministic bytes derived from seed.
func pattern(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// memServe serves requests on c from mem until an error or DISC, which it
// returns (DISC as nil). Replies to READs point into mem.
func memServe(c *Conn, mem []byte, seen chan<- Request) error {
	for {
		req, err := c.ReadRequest()
		if err != nil {
			return err
		}
		if seen != nil {
			seen <- req
		}
		end := req.Offset + uint64(req.Length)
		if req.Type != CmdDisc && end > uint64(len(mem)) {
			if err := c.Reply(req.Handle, EINVAL, nil, nil); err != nil {
				return err
			}
			continue
		}
		var data []byte
		switch req.Type {
		case CmdRead:
			data = mem[req.Offset:end]
		case CmdWrite:
			if err := c.ReadPayload(mem[req.Offset:end]); err != nil {
				return err
			}
		case CmdTrim, CmdWriteZeroes:
			clear(mem[req.Offset:end])
		case CmdFlush:
		case CmdDisc:
			return nil
		default:
			if err := c.Reply(req.Handle, EINVAL, nil, nil); err != nil {
				return err
			}
			continue
		}
		if err := c.Reply(req.Handle, 0, data, nil); err != nil {
			return err
		}
	}
}

func TestConnServe(t *testing.T) {
	for _, v := range connVariants {
		t.Run(v.name, func(t *testing.T) {
			c, k := newTestConn(t, v.opts)
			mem := make([]byte, 4<<20)
			served := make(chan error, 1)
			go func() { served <- memServe(c, mem, nil) }()

			big := pattern(1, 1<<20)
			small := pattern(2, 4096)
			steps := []struct {
				req     Request
				payload []byte
				want    []byte // READ reply data
				errno   uint32
			}{
				{req: Request{Type: CmdWrite, Handle: 1, Offset: 0, Length: 4096}, payload: small},
				{req: Request{Type: CmdRead, Handle: 2, Offset: 0, Length: 4096}, want: small},
				{req: Request{Type: CmdWrite, Flags: CmdFlagFUA, Handle: 3, Offset: 1 << 20, Length: 1 << 20}, payload: big},
				{req: Request{Type: CmdRead, Handle: 4, Offset: 1 << 20, Length: 1 << 20}, want: big},
				{req: Request{Type: CmdFlush, Handle: 5}},
				{req: Request{Type: CmdTrim, Handle: 6, Offset: 0, Length: 4096}},
				{req: Request{Type: CmdRead, Handle: 7, Offset: 0, Length: 4096}, want: make([]byte, 4096)},
				{req: Request{Type: CmdRead, Handle: 8, Offset: 4 << 20, Length: 4096}, errno: EINVAL},
				{req: Request{Type: CmdWrite, Handle: 9, Offset: 4 << 20, Length: 512}, payload: small[:512], errno: EINVAL},
				{req: Request{Type: CmdCache, Handle: 10}, errno: EINVAL},
				{req: Request{Type: CmdRead, Handle: 11, Offset: 1 << 20, Length: 8}, want: big[:8]},
			}
			for _, s := range steps {
				if err := k.send(s.req, s.payload); err != nil {
					t.Fatalf("send %v: %v", s.req, err)
				}
				r, data, err := k.recv(func(uint64) int { return len(s.want) })
				if err != nil {
					t.Fatalf("reply to %v: %v", s.req, err)
				}
				if r.Handle != s.req.Handle || r.Error != s.errno {
					t.Fatalf("reply to %v: want handle %d error %d, got handle %d error %d", s.req, s.req.Handle, s.errno, r.Handle, r.Error)
				}
				if !bytes.Equal(data, s.want) {
					t.Fatalf("reply to %v: data differs (%d bytes)", s.req, len(data))
				}
			}
			if err := k.send(Request{Type: CmdDisc, Handle: 99}, nil); err != nil {
				t.Fatalf("send DISC: %v", err)
			}
			if err := <-served; err != nil {
				t.Fatalf("serve after DISC: want nil, got %v", err)
			}
			k.f.Close()
			if _, err := c.ReadRequest(); err != io.EOF {
				t.Fatalf("ReadRequest after DISC and close: want %v, got %v", io.EOF, err)
			}
		})
	}
}

func TestConnOutOfOrderReplies(t *testing.T) {
	for _, v := range connVariants {
		t.Run(v.name, func(t *testing.T) {
			c, k := newTestConn(t, v.opts)
			const n = 32
			go func() {
				for i := range n {
					k.send(Request{Type: CmdRead, Handle: uint64(i), Offset: uint64(i) * 512, Length: 512}, nil)
				}
			}()
			reqs := make([]Request, 0, n)
			for range n {
				r, err := c.ReadRequest()
				if err != nil {
					t.Fatalf("ReadRequest: %v", err)
				}
				reqs = append(reqs, r)
			}
			var done atomic.Int32
			go func() {
				for i := n - 1; i >= 0; i-- {
					r := reqs[i]
					c.Reply(r.Handle, 0, pattern(r.Handle, int(r.Length)), func() { done.Add(1) })
				}
			}()
			var order []uint64
			for range n {
				r, data, err := k.recv(func(uint64) int { return 512 })
				if err != nil {
					t.Fatalf("recv: %v", err)
				}
				if !bytes.Equal(data, pattern(r.Handle, 512)) {
					t.Fatalf("reply %d: data differs", r.Handle)
				}
				order = append(order, r.Handle)
			}
			for i, h := range order {
				if want := uint64(n - 1 - i); h != want {
					t.Fatalf("reply %d: want handle %d, got %d", i, want, h)
				}
			}
			c.Close()
			if got := done.Load(); got != n {
				t.Fatalf("done callbacks: want %d, got %d", n, got)
			}
		})
	}
}

func TestConnConcurrentReplies(t *testing.T) {
	for _, v := range connVariants {
		t.Run(v.name, func(t *testing.T) {
			c, k := newTestConn(t, v.opts)
			const goroutines, per = 16, 200
			size := func(h uint64) int { return int(h%7) * 512 }
			var done atomic.Int64
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Go(func() {
					for i := range per {
						h := uint64(g*per + i)
						var errno uint32
						if h%11 == 0 {
							errno = EIO
						}
						if err := c.Reply(h, errno, pattern(h, size(h)), func() { done.Add(1) }); err != nil {
							t.Errorf("Reply %d: %v", h, err)
							return
						}
					}
				})
			}
			seen := make([]bool, goroutines*per)
			for range goroutines * per {
				r, data, err := k.recv(size)
				if err != nil {
					t.Fatalf("recv: %v", err)
				}
				if r.Handle >= uint64(len(seen)) || seen[r.Handle] {
					t.Fatalf("reply handle %d: unexpected or duplicate", r.Handle)
				}
				seen[r.Handle] = true
				wantErr := uint32(0)
				if r.Handle%11 == 0 {
					wantErr = EIO
				}
				if r.Error != wantErr {
					t.Fatalf("reply %d: want error %d, got %d", r.Handle, wantErr, r.Error)
				}
				if wantErr == 0 && !bytes.Equal(data, pattern(r.Handle, size(r.Handle))) {
					t.Fatalf("reply %d: data differs", r.Handle)
				}
			}
			wg.Wait()
			if err := c.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if got := done.Load(); got != goroutines*per {
				t.Fatalf("done callbacks: want %d, got %d", goroutines*per, got)
			}
		})
	}
}

// TestConnDataOwnership checks that done runs only after the payload was
// written: the callback scribbles over the buffer, which must not show on
// the wire.
func TestConnDataOwnership(t *testing.T) {
	for _, v := range connVariants {
		t.Run(v.name, func(t *testing.T) {
			c, k := newTestConn(t, v.opts)
			const n, size = 64, 64 << 10
			bufs := make([][]byte, n)
			go func() {
				for i := range n {
					bufs[i] = pattern(uint64(i), size)
					b := bufs[i]
					c.Reply(uint64(i), 0, b, func() { clear(b) })
				}
			}()
			for range n {
				r, data, err := k.recv(func(uint64) int { return size })
				if err != nil {
					t.Fatalf("recv: %v", err)
				}
				if !bytes.Equal(data, pattern(r.Handle, size)) {
					t.Fatalf("reply %d: data changed before it was written", r.Handle)
				}
			}
		})
	}
}

// TestConnPayloadInPieces: a WRITE's header and payload arrive in pieces,
// with pauses between them (the reader must wait inside the payload, and
// between requests, in every mode), and a reply for each gets out.
func TestConnPayloadInPieces(t *testing.T) {
	for _, v := range connVariants {
		t.Run(v.name, func(t *testing.T) {
			c, k := newTestConn(t, v.opts)
			p := pattern(5, 64<<10)
			go func() {
				for h := uint64(1); h <= 3; h++ {
					b := make([]byte, RequestSize+len(p))
					Request{Type: CmdWrite, Handle: h, Length: uint32(len(p))}.Encode(b)
					copy(b[RequestSize:], p)
					for _, cut := range [][2]int{{0, 10}, {10, RequestSize + 1}, {RequestSize + 1, 4096}, {4096, len(b)}} {
						time.Sleep(2 * time.Millisecond)
						if _, err := k.f.Write(b[cut[0]:cut[1]]); err != nil {
							return
						}
					}
				}
			}()
			for h := uint64(1); h <= 3; h++ {
				r, err := c.ReadRequest()
				if err != nil || r.Handle != h || r.Length != uint32(len(p)) {
					t.Fatalf("ReadRequest: want WRITE handle %d, got %v, %v", h, r, err)
				}
				got := make([]byte, len(p))
				if err := c.ReadPayload(got); err != nil {
					t.Fatalf("ReadPayload: %v", err)
				}
				if !bytes.Equal(got, p) {
					t.Fatalf("payload %d differs", h)
				}
				if err := c.Reply(h, 0, nil, nil); err != nil {
					t.Fatalf("Reply: %v", err)
				}
				rep, _, err := k.recv(func(uint64) int { return 0 })
				if err != nil || rep.Handle != h || rep.Error != 0 {
					t.Fatalf("reply: want handle %d, got %+v, %v", h, rep, err)
				}
			}
		})
	}
}

func TestConnPayload(t *testing.T) {
	for _, v := range connVariants {
		t.Run(v.name, func(t *testing.T) {
			c, k := newTestConn(t, v.opts)
			p := pattern(3, 10000)
			go func() {
				k.send(Request{Type: CmdWrite, Handle: 1, Length: 10000}, p)
				k.send(Request{Type: CmdWrite, Handle: 2, Length: 100}, p[:100])
				k.send(Request{Type: CmdFlush, Handle: 3}, nil)
			}()
			// Scatter the first payload over three buffers.
			r, err := c.ReadRequest()
			if err != nil || r.Handle != 1 {
				t.Fatalf("ReadRequest: want handle 1, got %v, %v", r, err)
			}
			got := make([]byte, 10000)
			for _, part := range [][2]int{{0, 1}, {1, 4096}, {4096, 10000}} {
				if err := c.ReadPayload(got[part[0]:part[1]]); err != nil {
					t.Fatalf("ReadPayload %v: %v", part, err)
				}
			}
			if !bytes.Equal(got, p) {
				t.Fatalf("payload differs")
			}
			if err := c.ReadPayload(make([]byte, 1)); err == nil {
				t.Fatalf("ReadPayload past the payload: want error, got nil")
			}
			// Read part of the second payload; ReadRequest skips the rest.
			r, err = c.ReadRequest()
			if err != nil || r.Handle != 2 {
				t.Fatalf("ReadRequest: want handle 2, got %v, %v", r, err)
			}
			if err := c.ReadPayload(got[:10]); err != nil {
				t.Fatalf("ReadPayload: %v", err)
			}
			r, err = c.ReadRequest()
			if err != nil || r.Handle != 3 || r.Type != CmdFlush {
				t.Fatalf("ReadRequest after a partly read payload: want FLUSH handle 3, got %v, %v", r, err)
			}
			if err := c.ReadPayload(got[:1]); err == nil {
				t.Fatalf("ReadPayload for FLUSH: want error, got nil")
			}
		})
	}
}

func TestConnReadErrors(t *testing.T) {
	var req [RequestSize]byte
	Request{Type: CmdWrite, Handle: 1, Length: 4096}.Encode(req[:])
	var bad [RequestSize]byte
	copy(bad[:], req[:])
	bad[0] ^= 0xff
	tests := []struct {
		name string
		in   []byte
		// calls: "req" for ReadRequest, "payload" for ReadPayload(4096)
		calls []string
		want  error
		// sticky: every call fails with want
		sticky bool
	}{
		{"clean EOF", nil, []string{"req"}, io.EOF, false},
		{"EOF in header", req[:10], []string{"req"}, io.ErrUnexpectedEOF, false},
		{"EOF in payload", append(req[:], make([]byte, 100)...), []string{"req", "payload"}, io.ErrUnexpectedEOF, false},
		{"EOF in skipped payload", append(req[:], make([]byte, 100)...), []string{"req", "req"}, io.ErrUnexpectedEOF, false},
		{"EOF after payload", append(req[:], make([]byte, 4096)...), []string{"req", "payload", "req"}, io.EOF, false},
		{"EOF is sticky", nil, []string{"req", "req"}, io.EOF, true},
		{"bad magic", bad[:], []string{"req"}, ErrBadMagic, false},
		{"bad magic is sticky", bad[:], []string{"req", "req", "payload"}, ErrBadMagic, true},
	}
	for _, tt := range tests {
		for _, v := range connVariants {
			t.Run(tt.name+"/"+v.name, func(t *testing.T) {
				c, k := newTestConn(t, v.opts)
				if _, err := k.f.Write(tt.in); err != nil {
					t.Fatalf("write: %v", err)
				}
				k.f.Close()
				var err error
				for i, call := range tt.calls {
					switch call {
					case "req":
						_, err = c.ReadRequest()
					case "payload":
						err = c.ReadPayload(make([]byte, 4096))
					}
					if tt.sticky && !errors.Is(err, tt.want) {
						t.Fatalf("call %d (%s): want %v, got %v", i, call, tt.want, err)
					}
					if !tt.sticky && i < len(tt.calls)-1 && err != nil {
						t.Fatalf("call %d (%s): %v", i, call, err)
					}
				}
				if !errors.Is(err, tt.want) {
					t.Fatalf("last call: want %v, got %v", tt.want, err)
				}
				if tt.want == io.EOF && err != io.EOF {
					t.Fatalf("clean EOF must be io.EOF itself, got %v", err)
				}
			})
		}
	}
}

func TestConnCloseUnblocks(t *testing.T) {
	for _, v := range connVariants {
		t.Run(v.name, func(t *testing.T) {
			c, k := newTestConn(t, v.opts)
			// The kernel never reads: replies pile up in the socket and
			// the writer blocks in writev.
			var done atomic.Int32
			const n = 64
			replied := make(chan struct{})
			go func() {
				defer close(replied)
				for i := range n {
					if err := c.Reply(uint64(i), 0, make([]byte, 64<<10), func() { done.Add(1) }); err != nil {
						done.Add(1) // refused after Close: released too
					}
				}
			}()
			readErr := make(chan error, 1)
			go func() {
				_, err := c.ReadRequest()
				readErr <- err
			}()
			time.Sleep(50 * time.Millisecond)
			closed := make(chan error, 1)
			go func() { closed <- c.Close() }()
			select {
			case err := <-closed:
				if err != nil {
					t.Fatalf("Close: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("Close did not return")
			}
			if err := <-readErr; err != ErrClosed {
				t.Fatalf("ReadRequest blocked at Close: want %v, got %v", ErrClosed, err)
			}
			<-replied
			if got := done.Load(); got != n {
				t.Fatalf("released replies after Close: want %d, got %d", n, got)
			}
			if err := c.Reply(1, 0, nil, func() { t.Errorf("done called for a refused reply") }); err != ErrClosed {
				t.Fatalf("Reply after Close: want %v, got %v", ErrClosed, err)
			}
			if err := c.ReadPayload(nil); err != ErrClosed {
				t.Fatalf("ReadPayload after Close: want %v, got %v", ErrClosed, err)
			}
			if err := c.Close(); err != nil {
				t.Fatalf("second Close: want nil, got %v", err)
			}
			k.f.Close()
		})
	}
}

func TestConnWriteError(t *testing.T) {
	for _, v := range connVariants {
		t.Run(v.name, func(t *testing.T) {
			c, k := newTestConn(t, v.opts)
			readErr := make(chan error, 1)
			go func() {
				_, err := c.ReadRequest()
				readErr <- err
			}()
			k.f.Close()
			// The reader sees EOF; replies fail with EPIPE.
			if err := <-readErr; err != io.EOF {
				t.Fatalf("ReadRequest after the kernel closed: want %v, got %v", io.EOF, err)
			}
			var failed error
			var done atomic.Int32
			for i := range 1000 {
				if err := c.Reply(uint64(i), 0, make([]byte, 512), func() { done.Add(1) }); err != nil {
					failed = err
					break
				}
				time.Sleep(time.Millisecond)
			}
			if failed == nil {
				t.Fatalf("Reply to a closed peer: want an error eventually, got none")
			}
			if errors.Is(failed, ErrClosed) {
				t.Fatalf("Reply error before Close: want the write error, got %v", failed)
			}
			if err := c.Close(); err != nil {
				t.Fatalf("Close after a write error: %v", err)
			}
			t.Logf("Reply after the peer closed: %v (%d done)", failed, done.Load())
		})
	}
}

func TestConnNoAllocs(t *testing.T) {
	for _, v := range connVariants {
		t.Run(v.name, func(t *testing.T) {
			c, k := newTestConn(t, v.opts)
			var req [RequestSize]byte
			Request{Type: CmdRead, Handle: 7, Length: 4096}.Encode(req[:])
			data := make([]byte, 4096)
			in := make([]byte, ReplySize+len(data))
			var wreq [RequestSize + 4096]byte
			Request{Type: CmdWrite, Handle: 8, Length: 4096}.Encode(wreq[:])
			released := make(chan struct{}, 1)
			done := func() { released <- struct{}{} }
			op := func() {
				if _, err := k.f.Write(req[:]); err != nil {
					panic(err)
				}
				r, err := c.ReadRequest()
				if err != nil {
					panic(err)
				}
				if err := c.Reply(r.Handle, 0, data, done); err != nil {
					panic(err)
				}
				if _, err := io.ReadFull(k.f, in); err != nil {
					panic(err)
				}
				<-released // data is the Conn's until done
				if _, err := k.f.Write(wreq[:]); err != nil {
					panic(err)
				}
				if r, err = c.ReadRequest(); err != nil {
					panic(err)
				}
				if err := c.ReadPayload(data); err != nil {
					panic(err)
				}
				if err := c.Reply(r.Handle, 0, nil, nil); err != nil {
					panic(err)
				}
				if _, err := io.ReadFull(k.f, in[:ReplySize]); err != nil {
					panic(err)
				}
			}
			for range 100 {
				op() // warm up: grow the queues
			}
			if allocs := testing.AllocsPerRun(500, op); allocs > 0.05 {
				t.Fatalf("allocations per READ+WRITE round trip: want 0, got %.2f", allocs)
			}
		})
	}
}

// fakeNetConn is a net.Conn that reads from a byte slice in random-sized
// pieces and discards writes.
type fakeNetConn struct {
	net.Conn
	in  []byte
	rnd *rand.Rand
}

func (f *fakeNetConn) Read(b []byte) (int, error) {
	if len(f.in) == 0 {
		return 0, io.EOF
	}
	n := min(len(b), len(f.in), 1+f.rnd.IntN(64))
	copy(b, f.in[:n])
	f.in = f.in[n:]
	return n, nil
}

func (f *fakeNetConn) Write(b []byte) (int, error) { return len(b), nil }
func (f *fakeNetConn) Close() error                { return nil }

// FuzzConnRead feeds arbitrary streams, arriving in random-sized pieces, to
// the read side. It must never panic, and it must agree with a simple
// reference parser: the same requests, exactly the payload bytes that follow
// each WRITE header (also when only a prefix is read and the rest skipped),
// and io.EOF, io.ErrUnexpectedEOF or ErrBadMagic where the stream ends.
func FuzzConnRead(f *testing.F) {
	var b bytes.Buffer
	for i, r := range []Request{
		{Type: CmdWrite, Handle: 1, Length: 5},
		{Type: CmdRead, Handle: 2, Length: 4096},
		{Type: CmdWrite, Handle: 3, Length: 40},
		{Type: CmdDisc, Handle: 4},
	} {
		var h [RequestSize]byte
		r.Encode(h[:])
		b.Write(h[:])
		if r.Type == CmdWrite {
			b.Write(bytes.Repeat([]byte{byte(i)}, int(r.Length)))
		}
	}
	f.Add(b.Bytes(), uint64(1), uint16(64))
	f.Add(b.Bytes()[:40], uint64(2), uint16(28))
	f.Add(b.Bytes()[:70], uint64(4000), uint16(28))
	f.Add([]byte("garbage"), uint64(3), uint16(0))
	f.Fuzz(func(t *testing.T, in []byte, seed uint64, bufSize uint16) {
		nc := &fakeNetConn{in: in, rnd: rand.New(rand.NewPCG(seed, 0))}
		c := NewConn(nc, &ConnOptions{ReadBufferSize: int(bufSize)})
		defer c.Close()
		dst := make([]byte, 64<<10)
		pos := 0
		for {
			got, err := c.ReadRequest()
			// The reference parser.
			switch rest := len(in) - pos; {
			case rest < 0:
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("at %d, in a skipped payload past the end: want %v, got %v, %v", pos, io.ErrUnexpectedEOF, got, err)
				}
				return
			case rest == 0:
				if err != io.EOF {
					t.Fatalf("at the end: want %v, got %v, %v", io.EOF, got, err)
				}
				return
			case rest < RequestSize:
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("at %d, %d bytes left: want %v, got %v, %v", pos, rest, io.ErrUnexpectedEOF, got, err)
				}
				return
			}
			want, werr := DecodeRequest(in[pos:])
			if werr != nil {
				if !errors.Is(err, ErrBadMagic) {
					t.Fatalf("at %d: want %v, got %v, %v", pos, ErrBadMagic, got, err)
				}
				return
			}
			if err != nil || got != want {
				t.Fatalf("at %d: want %v, got %v, %v", pos, want, got, err)
			}
			pos += RequestSize
			if want.Type != CmdWrite {
				continue
			}
			// Read a prefix of the payload; ReadRequest skips the rest.
			k := min(int(want.Length), len(dst), int(seed%5000))
			err = c.ReadPayload(dst[:k])
			if pos+k > len(in) {
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("payload at %d of %d bytes past the end: want %v, got %v", pos, k, io.ErrUnexpectedEOF, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("payload at %d of %d bytes: %v", pos, k, err)
			}
			if !bytes.Equal(dst[:k], in[pos:pos+k]) {
				t.Fatalf("payload at %d: want %x, got %x", pos, in[pos:pos+k], dst[:k])
			}
			pos += int(want.Length)
		}
	})
}

// BenchmarkConnRoundTrip measures READ round trips through a socketpair at
// queue depths 1 and 32, replies sent from the reading goroutine.
func BenchmarkConnRoundTrip(b *testing.B) {
	for _, depth := range []int{1, 32} {
		for _, v := range connVariants {
			b.Run(fmt.Sprintf("qd%d/%s", depth, v.name), func(b *testing.B) {
				benchRoundTrip(b, v.opts, depth)
			})
		}
	}
}

func benchRoundTrip(b *testing.B, opts *ConnOptions, depth int) {
	kern, c, err := NewSocketPair(opts)
	if err != nil {
		b.Fatal(err)
	}
	defer kern.Close()
	defer c.Close()
	data := make([]byte, 4096)
	go func() {
		for {
			r, err := c.ReadRequest()
			if err != nil {
				return
			}
			if c.Reply(r.Handle, 0, data, nil) != nil {
				return
			}
		}
	}()
	var reqs bytes.Buffer
	for i := range depth {
		var h [RequestSize]byte
		Request{Type: CmdRead, Handle: uint64(i), Length: 4096}.Encode(h[:])
		reqs.Write(h[:])
	}
	in := make([]byte, depth*(ReplySize+4096))
	b.SetBytes(int64(depth) * 4096)
	b.ResetTimer()
	for range b.N {
		if _, err := kern.Write(reqs.Bytes()); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(kern, in); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*depth), "ns/req")
}

func TestConnReplyV(t *testing.T) {
	c, k := newTestConn(t, nil)
	data := pattern(7, 3*4096+512)
	pieces := [][]byte{data[:4096], data[4096:4096], data[4096 : 3*4096], data[3*4096:]}
	done := make(chan struct{})
	if err := c.ReplyV(7, 0, pieces, func() { close(done) }); err != nil {
		t.Fatal(err)
	}
	r, got, err := k.recv(func(uint64) int { return len(data) })
	if err != nil {
		t.Fatal(err)
	}
	if r.Handle != 7 || r.Error != 0 || !bytes.Equal(got, data) {
		t.Fatalf("ReplyV: handle %d error %d, data equal %v", r.Handle, r.Error, bytes.Equal(got, data))
	}
	<-done
	// an error reply carries no data
	if err := c.ReplyV(8, EIO, pieces, nil); err != nil {
		t.Fatal(err)
	}
	r, got, err = k.recv(func(uint64) int { return 0 })
	if err != nil || r.Error != EIO || len(got) != 0 {
		t.Fatalf("error ReplyV: %+v %d bytes %v", r, len(got), err)
	}
}
