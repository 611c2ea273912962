package initiator_test

import (
	"encoding/binary"
	"io"
	"testing"

	"rbd/internal/initiator"
	"rbd/internal/nbd"
)

// socketPath is the whole path of NBD requests in one process: an NBD
// client on rbdi's NBD socket, rbdi's device (request decoded, command
// posted; completion, reply queued and written), the in-memory transport
// and the target.
type socketPath struct {
	nc   *nbdClient
	typ  uint16
	req  []byte
	rep  [nbd.ReplySize]byte
	data []byte
	i    int
}

const pathSize, pathBS = 8 << 20, 4096

func newSocketPath(tb testing.TB, typ uint16) *socketPath {
	r := newRig(tb, pathSize)
	_, sock := r.add(tb, initiator.AddRequest{Queues: 1})
	p := &socketPath{nc: dialNBD(tb, sock, r.img), typ: typ, req: make([]byte, nbd.RequestSize+pathBS), data: make([]byte, pathBS)}
	if typ == nbd.CmdWrite {
		copy(p.req[nbd.RequestSize:], random(pathBS))
	}
	return p
}

// one sends a request and reads its reply (QD1).
func (p *socketPath) one(tb testing.TB) {
	n := nbd.RequestSize
	if p.typ == nbd.CmdWrite {
		n += pathBS
	}
	off := uint64(p.i%(pathSize/pathBS)) * pathBS
	nbd.Request{Type: p.typ, Handle: uint64(p.i), Offset: off, Length: pathBS}.Encode(p.req)
	p.i++
	if _, err := p.nc.c.Write(p.req[:n]); err != nil {
		tb.Fatal(err)
	}
	if _, err := io.ReadFull(p.nc.br, p.rep[:]); err != nil {
		tb.Fatal(err)
	}
	if e := binary.BigEndian.Uint32(p.rep[4:]); e != 0 {
		tb.Fatalf("request %d: errno %d", p.i, e)
	}
	if p.typ == nbd.CmdRead {
		if _, err := io.ReadFull(p.nc.br, p.data); err != nil {
			tb.Fatal(err)
		}
	}
}

// -benchmem shows the allocations per request of both daemons together
// (the target's own path: BenchmarkRead4K in internal/target).
func BenchmarkSocketRead4K(b *testing.B)  { benchSocket(b, nbd.CmdRead) }
func BenchmarkSocketWrite4K(b *testing.B) { benchSocket(b, nbd.CmdWrite) }

func benchSocket(b *testing.B, typ uint16) {
	p := newSocketPath(b, typ)
	b.SetBytes(pathBS)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		p.one(b)
	}
}

// TestSocketPathAllocs: a READ or WRITE through rbdi and the target
// allocates nothing on the heap once the path is warm (pooled requests,
// slots, preallocated work requests and replies), in either daemon. The
// daemons' background goroutines may allocate now and then; on average
// over many requests that stays below one.
func TestSocketPathAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	for _, typ := range []uint16{nbd.CmdRead, nbd.CmdWrite} {
		p := newSocketPath(t, typ)
		for range 50 {
			p.one(t) // warm: pools, queues, buffers
		}
		if avg := testing.AllocsPerRun(300, func() { p.one(t) }); avg >= 1 {
			t.Errorf("type %d: %.2f heap allocations per request, want 0", typ, avg)
		}
	}
}
