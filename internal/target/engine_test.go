package target_test

// Host tests of the two engines together: a client.Session talks to a
// target.Server over the in-memory transport (internal/transport/memt), with
// an image file as the backend.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"rbd/internal/client"
	"rbd/internal/clienttest"
	"rbd/internal/target"
	"rbd/internal/transport/memt"
	"rbd/internal/verbs"
	"rbd/internal/wire"
)

var targetAddr = netip.MustParseAddrPort("10.0.0.1:65000")

const imageSize = 8 << 20

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// image makes a sparse image file of size bytes.
func image(t testing.TB, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

// serve runs a target on net at targetAddr.
func serve(t testing.TB, net *memt.Network, mut func(*target.Config), exports ...target.ExportConfig) *target.Server {
	t.Helper()
	cfg := target.Config{Listen: []netip.AddrPort{targetAddr}, Exports: exports, Transport: net, Log: quiet()}
	if mut != nil {
		mut(&cfg)
	}
	srv, err := target.NewServer(cfg)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return srv
}

func dial(t testing.TB, net *memt.Network, export string, queues int, mut ...func(*client.Config)) *client.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := client.Config{Target: targetAddr, Export: export, Queues: queues, Transport: net, Log: quiet(),
		Queue: client.QueueConfig{Depth: 16, MaxIO: 256 << 10, Inline: 4096}}
	for _, m := range mut {
		m(&cfg)
	}
	s, err := client.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// do runs one command on q and waits; for a READ it returns the data.
var do = clienttest.Do

func random(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func fileAt(t testing.TB, path string, off, n int) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b[off : off+n]
}

// TestReadWrite writes random data and reads it back, on the wire and in the
// image file; small writes travel inline (no RDMA WRITE from the initiator),
// and READ data is pushed by the target: the initiator posts no RDMA READ.
func TestReadWrite(t *testing.T) {
	net := memt.New(memt.Options{})
	img := image(t, imageSize)
	serve(t, net, nil, target.ExportConfig{Path: img})
	sess := dial(t, net, img, 1)
	q := sess.Queues()[0]
	if q.SlotSize() != 256<<10 || q.Inline() != 4096 {
		t.Fatalf("granted slot %d inline %d", q.SlotSize(), q.Inline())
	}
	conn := net.Conns()[0]
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name   string
		off, n int
		inline bool
	}{
		{"4K inline", 0, 4 << 10, true},
		{"4K at 1M", 1 << 20, 4 << 10, true},
		{"512 inline", 8192, 512, true},
		{"8K", 64 << 10, 8 << 10, false},
		{"128K", 2 << 20, 128 << 10, false},
		{"slot size", 4 << 20, q.SlotSize(), false},
		{"slot size at the end", imageSize - q.SlotSize(), q.SlotSize(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := random(rng, tc.n)
			i0, t0 := conn.Stats(memt.Initiator), conn.Stats(memt.Target)
			if _, st := do(t, q, wire.OpWrite, 0, uint64(tc.off), data, 0); st != wire.StatusOK {
				t.Fatalf("WRITE: %v", st)
			}
			i1 := conn.Stats(memt.Initiator)
			if w := i1.RDMAWrites - i0.RDMAWrites; tc.inline && w != 0 || !tc.inline && w != 1 {
				t.Errorf("WRITE of %d bytes: %d RDMA WRITEs from the initiator (inline %v)", tc.n, w, tc.inline)
			}
			if !bytes.Equal(fileAt(t, img, tc.off, tc.n), data) {
				t.Fatal("the image file does not hold what was written")
			}
			got, st := do(t, q, wire.OpRead, 0, uint64(tc.off), nil, tc.n)
			if st != wire.StatusOK {
				t.Fatalf("READ: %v", st)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("READ returned other data than written")
			}
			i2, t2 := conn.Stats(memt.Initiator), conn.Stats(memt.Target)
			if r := i2.RDMAReads; r != 0 {
				t.Errorf("the initiator posted %d RDMA READs (version 2 pushes)", r)
			}
			if w := t2.RDMAWrites - t0.RDMAWrites; w != 1 {
				t.Errorf("READ: the target pushed with %d RDMA WRITEs, want 1", w)
			}
			if s := i2.Sends - i0.Sends; s != 2 {
				t.Errorf("%d SENDs from the initiator for a WRITE and a READ", s)
			}
		})
	}
}

// TestMaintenance: FLUSH, WRITE_ZEROES and TRIM round trips, and their effect.
func TestMaintenance(t *testing.T) {
	net := memt.New(memt.Options{})
	img := image(t, imageSize)
	serve(t, net, nil, target.ExportConfig{Path: img})
	sess := dial(t, net, img, 1)
	q := sess.Queues()[0]
	rng := rand.New(rand.NewPCG(3, 4))
	data := random(rng, 64<<10)
	if _, st := do(t, q, wire.OpWrite, wire.FlagFUA, 0, data, 0); st != wire.StatusOK {
		t.Fatalf("WRITE FUA: %v", st)
	}
	if _, st := do(t, q, wire.OpFlush, 0, 0, nil, 0); st != wire.StatusOK {
		t.Fatalf("FLUSH: %v", st)
	}
	if _, st := do(t, q, wire.OpWriteZeroes, 0, 4096, nil, 8192); st != wire.StatusOK {
		t.Fatalf("WRITE_ZEROES: %v", st)
	}
	want := append([]byte(nil), data...)
	clear(want[4096 : 4096+8192])
	trim := sess.Export.Caps&wire.CapTrim != 0
	_, st := do(t, q, wire.OpTrim, 0, 32<<10, nil, 16<<10)
	switch {
	case trim && st != wire.StatusOK:
		t.Fatalf("TRIM: %v", st)
	case !trim && st != wire.StatusNotSupp:
		t.Fatalf("TRIM on an export without discard: %v, want ENOTSUP", st)
	case trim:
		clear(want[32<<10 : 48<<10]) // a file's discard reads back zeroes
	}
	got, st := do(t, q, wire.OpRead, 0, 0, nil, len(data))
	if st != wire.StatusOK || !bytes.Equal(got, want) {
		t.Fatalf("READ after WRITE_ZEROES/TRIM: %v, data equal %v", st, bytes.Equal(got, want))
	}
	if !bytes.Equal(fileAt(t, img, 0, len(want)), want) {
		t.Fatal("the image file differs")
	}
}

// TestErrors: statuses of commands the target refuses.
func TestErrors(t *testing.T) {
	net := memt.New(memt.Options{})
	img, ro := image(t, imageSize), image(t, imageSize)
	serve(t, net, nil, target.ExportConfig{Path: img}, target.ExportConfig{Path: ro, ReadOnly: true})
	rw := dial(t, net, img, 1).Queues()[0]
	rdo := dial(t, net, ro, 1).Queues()[0]
	for _, tc := range []struct {
		name   string
		q      *client.Queue
		op     wire.Op
		off, n int
		want   wire.Status
	}{
		{"write past the end", rw, wire.OpWrite, imageSize, 4096, wire.StatusNoSpace},
		{"write across the end", rw, wire.OpWrite, imageSize - 4096, 8192, wire.StatusNoSpace},
		{"read past the end", rw, wire.OpRead, imageSize, 4096, wire.StatusInval},
		{"misaligned write", rw, wire.OpWrite, 100, 4096, wire.StatusInval},
		{"misaligned read length", rw, wire.OpRead, 0, 100, wire.StatusInval},
		{"zeroes past the end", rw, wire.OpWriteZeroes, imageSize, 4096, wire.StatusNoSpace},
		{"read-only write", rdo, wire.OpWrite, 0, 4096, wire.StatusROFS},
		{"read-only big write", rdo, wire.OpWrite, 0, 64 << 10, wire.StatusROFS},
		{"read-only zeroes", rdo, wire.OpWriteZeroes, 0, 4096, wire.StatusROFS},
		{"read-only trim", rdo, wire.OpTrim, 0, 4096, wire.StatusROFS},
		{"read-only read", rdo, wire.OpRead, 0, 4096, wire.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var data []byte
			if tc.op == wire.OpWrite {
				data = make([]byte, tc.n)
			}
			if _, st := do(t, tc.q, tc.op, 0, uint64(tc.off), data, tc.n); st != tc.want {
				t.Fatalf("%s: status %v, want %v", tc.op, st, tc.want)
			}
		})
	}
	// the connection survives refused commands
	if _, st := do(t, rw, wire.OpRead, 0, 0, nil, 4096); st != wire.StatusOK {
		t.Fatalf("READ after errors: %v", st)
	}
}

// TestRefused: nothing listening, and an unknown export.
func TestRefused(t *testing.T) {
	net := memt.New(memt.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := client.Dial(ctx, client.Config{Target: targetAddr, Export: "/x", Transport: net, Log: quiet(),
		Queue: client.QueueConfig{Depth: 4, MaxIO: 4096}})
	var rej *verbs.RejectedError
	if !errors.As(err, &rej) || !rej.NoListener() {
		t.Fatalf("Dial with nothing listening: %v, want a NoListener reject", err)
	}
	img := image(t, imageSize)
	serve(t, net, nil, target.ExportConfig{Path: img})
	_, err = client.Dial(ctx, client.Config{Target: targetAddr, Export: "/nope", Transport: net, Log: quiet(),
		Queue: client.QueueConfig{Depth: 4, MaxIO: 4096}})
	var ee *client.ExportError
	if !errors.As(err, &ee) || ee.Status != wire.StatusNoEnt {
		t.Fatalf("Dial of an unknown export: %v, want ENOENT", err)
	}
}

// TestMultiQueue: a session of several queues, each writing its own range,
// every range read back through another queue.
func TestMultiQueue(t *testing.T) {
	net := memt.New(memt.Options{})
	img := image(t, imageSize)
	srv := serve(t, net, nil, target.ExportConfig{Path: img})
	const nq = 4
	sess := dial(t, net, img, nq)
	qs := sess.Queues()
	if len(qs) != nq {
		t.Fatalf("%d queues", len(qs))
	}
	if ss := srv.Sessions(); len(ss) != 1 || ss[0].Conns != nq {
		t.Fatalf("target sessions: %+v", ss)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	datas := make([][]byte, nq)
	for i := range datas {
		datas[i] = random(rng, 64<<10)
	}
	var wg sync.WaitGroup
	for i, q := range qs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, st := do(t, q, wire.OpWrite, 0, uint64(i)<<20, datas[i], 0); st != wire.StatusOK {
				t.Errorf("queue %d WRITE: %v", i, st)
			}
		}()
	}
	wg.Wait()
	for i := range qs {
		q := qs[(i+1)%nq]
		got, st := do(t, q, wire.OpRead, 0, uint64(i)<<20, nil, len(datas[i]))
		if st != wire.StatusOK || !bytes.Equal(got, datas[i]) {
			t.Fatalf("range %d read through queue %d: %v, equal %v", i, q.Index(), st, bytes.Equal(got, datas[i]))
		}
	}
}

// TestDropCompletesOnce: with reconnecting off, commands run from several
// goroutines while the connection drops; every submitted command completes exactly once, with
// success or ESHUTDOWN (Slot.Submit against the loop's failAll). Repeated
// with different seeds: where the drop falls, and how (after N messages, or
// from another goroutine at a random moment).
func TestDropCompletesOnce(t *testing.T) {
	runs := 200
	if testing.Short() {
		runs = 20
	}
	img := image(t, imageSize)
	var tot, shutdowns int64
	defer func() { t.Logf("%d runs: %d commands, %d completed with ESHUTDOWN", runs, tot, shutdowns) }()
	for seed := range uint64(runs) {
		sub, shut := dropRun(t, img, seed)
		tot += sub
		shutdowns += shut
		if t.Failed() {
			t.Fatalf("seed %d failed", seed)
		}
	}
}

func dropRun(t *testing.T, img string, seed uint64) (submittedN, shutdownN int64) {
	rng := rand.New(rand.NewPCG(seed, 99))
	net := memt.New(memt.Options{Seed: seed})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := target.NewServer(target.Config{Listen: []netip.AddrPort{targetAddr}, Exports: []target.ExportConfig{{Path: img}},
		Transport: net, Log: quiet(), InlineIO: time.Duration(1 - 2*int(seed%2))}) // odd seeds: I/O in workers
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { srv.Serve(ctx); close(served) }()
	defer func() { cancel(); <-served }()
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	defer dcancel()
	sess, err := client.Dial(dctx, client.Config{Target: targetAddr, Export: img, Transport: net, Log: quiet(),
		Queue: client.QueueConfig{Depth: 8, MaxIO: 16 << 10, Inline: 4096, NoReconnect: true}})
	if err != nil {
		t.Fatalf("seed %d: Dial: %v", seed, err)
	}
	defer sess.Close()
	q := sess.Queues()[0]
	conn := net.Conns()[0]
	if seed%3 == 0 {
		conn.Reorder(0.3, 50*time.Microsecond)
	}
	if seed%2 == 0 {
		conn.DropAfter(rng.IntN(400))
	} else {
		d := time.Duration(rng.IntN(3000)) * time.Microsecond
		time.AfterFunc(d, conn.Drop)
	}
	var submitted, completed, twice, badStatus, shutdown atomic.Int64
	defer func() { submittedN, shutdownN = submitted.Load(), shutdown.Load() }()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 1000; k++ {
				s, err := q.Acquire(dctx)
				if err != nil {
					return // the queue is gone
				}
				var once atomic.Bool
				op, n := wire.OpRead, 4096
				switch (g + k) % 3 {
				case 1:
					op = wire.OpWrite
				case 2:
					op, n = wire.OpWrite, 16<<10
				}
				err = s.Submit(op, 0, uint64((g*1000+k)%256)*16<<10, uint32(n), func(s *client.Slot, c client.Completion) {
					if once.Swap(true) {
						twice.Add(1)
					}
					if c.Status == wire.StatusShutdown {
						shutdown.Add(1)
					} else if c.Status != wire.StatusOK {
						badStatus.Add(1)
					}
					completed.Add(1)
					c.Release()
					s.Release()
				})
				if err != nil {
					s.Release()
					return
				}
				submitted.Add(1)
			}
		}()
	}
	wg.Wait()
	select {
	case <-q.Done():
	case <-dctx.Done():
		t.Fatalf("seed %d: the queue did not end after the drop", seed)
	}
	// failAll ran when Done closed: every command completed by now
	if s, c := submitted.Load(), completed.Load(); s != c {
		t.Errorf("seed %d: %d commands submitted, %d completions", seed, s, c)
	}
	if n := twice.Load(); n != 0 {
		t.Errorf("seed %d: %d commands completed twice", seed, n)
	}
	if n := badStatus.Load(); n != 0 {
		t.Errorf("seed %d: %d completions neither OK nor ESHUTDOWN", seed, n)
	}
	if dead, why := q.Dead(); !dead {
		t.Errorf("seed %d: queue not dead after the drop (%s)", seed, why)
	}
	return
}

// TestKeepAliveFrozenTarget: a target that stops answering (frozen, the
// connection still up) makes the queue die after KeepAlive+KeepAliveTimeout,
// its commands completing with ESHUTDOWN.
func TestKeepAliveFrozenTarget(t *testing.T) {
	net := memt.New(memt.Options{})
	img := image(t, imageSize)
	serve(t, net, nil, target.ExportConfig{Path: img})
	const idle, dead = 20 * time.Millisecond, 40 * time.Millisecond
	sess := dial(t, net, img, 1, func(c *client.Config) {
		c.Queue.KeepAlive, c.Queue.KeepAliveTimeout = idle, dead
		c.Queue.NoReconnect = true
	})
	q := sess.Queues()[0]
	if _, st := do(t, q, wire.OpRead, 0, 0, nil, 4096); st != wire.StatusOK {
		t.Fatalf("READ: %v", st)
	}
	// idle: no keepalive drops an idle queue
	time.Sleep(3 * (idle + dead))
	if d, why := q.Dead(); d {
		t.Fatalf("idle queue died: %s", why)
	}
	conn := net.Conns()[0]
	conn.Freeze(memt.Target)
	t0 := time.Now()
	_, st := do(t, q, wire.OpRead, 0, 0, nil, 4096)
	el := time.Since(t0)
	if st != wire.StatusShutdown {
		t.Fatalf("READ to a frozen target: %v, want ESHUTDOWN", st)
	}
	// quiet counts from the last reply or heartbeat (sent while idle, at most
	// about idle before the READ)
	if el < dead-idle/2 || el > 5*time.Second {
		t.Errorf("the queue died after %v, want about %v", el, idle+dead)
	}
	select { // its commands fail first, then the queue is finished
	case <-q.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the queue of a frozen target is not finished")
	}
	if d, why := q.Dead(); !d || !bytes.Contains([]byte(why), []byte("did not answer")) {
		t.Errorf("queue dead %v: %q", d, why)
	}
}

// TestVersion1Initiator: a hand-made connect request over memt, as a
// version-1 initiator sends it, still gets version 1; a version-2-only one
// without a slot region is refused with reason "version".
func TestVersion1Initiator(t *testing.T) {
	net := memt.New(memt.Options{})
	img := image(t, imageSize)
	serve(t, net, nil, target.ExportConfig{Path: img})
	for _, tc := range []struct {
		name     string
		min, max uint8
		region   bool
		want     uint8 // 0: rejected
	}{
		{"v1 only", 1, 1, false, 1},
		{"v1..2 without region", 1, 2, false, 1},
		{"v1..2 with region", 1, 2, true, 2},
		{"v2 without region", 2, 2, false, 0},
		{"v3 only", 3, 3, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			ep, err := net.Open(ctx, netip.AddrPort{}, targetAddr, verbs.QPCaps{MaxSendWR: 8, MaxRecvWR: 8, MaxSendSGE: 2, MaxRecvSGE: 2})
			if err != nil {
				t.Fatal(err)
			}
			defer ep.Close()
			cd := wire.Connect{MinVersion: tc.min, MaxVersion: tc.max, QueueDepth: 4, MaxIO: 8192, InlineMax: 1024}
			if tc.region {
				buf, err := verbs.AllocBuffer(4 * 8192)
				if err != nil {
					t.Fatal(err)
				}
				mr, err := ep.Register(buf, verbs.AccessLocalWrite|verbs.AccessRemoteWrite)
				if err != nil {
					t.Fatal(err)
				}
				cd.RegionKey, cd.RegionAddr = mr.RKey, mr.Addr()
				defer func() { ep.Close(); buf.Close() }()
			}
			pd := make([]byte, wire.ConnectSizeV2)
			n := cd.Encode(pd)
			ev, err := ep.Connect(ctx, verbs.ConnParam{PrivateData: pd[:n], RetryCount: 7, RNRRetryCount: 7})
			if tc.want == 0 {
				var rej *verbs.RejectedError
				if !errors.As(err, &rej) {
					t.Fatalf("Connect: %v, want a reject", err)
				}
				r, ok := wire.DecodeReject(rej.PrivateData)
				if !ok || r.Reason != wire.RejectVersion {
					t.Fatalf("reject %+v (rbd reject %v), want reason version", r, ok)
				}
				return
			}
			if err != nil {
				t.Fatalf("Connect: %v", err)
			}
			acc, err := wire.DecodeAccept(ev.PrivateData)
			if err != nil {
				t.Fatal(err)
			}
			if acc.Version != tc.want || acc.Depth != 4 || acc.SlotSize != 8192 || acc.InlineMax != 1024 {
				t.Fatalf("accept %+v, want version %d, depth 4, slot 8192, inline 1024", acc, tc.want)
			}
		})
	}
}

// ---- benchmarks: client Submit → target → completion, over memt

func BenchmarkRead4K(b *testing.B)  { benchIO(b, wire.OpRead, 4096) }
func BenchmarkWrite4K(b *testing.B) { benchIO(b, wire.OpWrite, 4096) }

func benchIO(b *testing.B, op wire.Op, n int) {
	for _, qd := range []int{1, 32} {
		b.Run(fmt.Sprintf("QD%d", qd), func(b *testing.B) {
			net := memt.New(memt.Options{})
			img := image(b, imageSize)
			serve(b, net, nil, target.ExportConfig{Path: img})
			sess := dial(b, net, img, 1, func(c *client.Config) { c.Queue.Depth = qd + 1 })
			q := sess.Queues()[0]
			ctx := context.Background()
			slots := make([]*client.Slot, qd)
			for i := range slots {
				s, err := q.Acquire(ctx)
				if err != nil {
					b.Fatal(err)
				}
				slots[i] = s
			}
			var left, issued, failed atomic.Int64
			finished := make(chan struct{}, 1)
			var done func(*client.Slot, client.Completion)
			done = func(s *client.Slot, c client.Completion) {
				if c.Status != wire.StatusOK {
					failed.Add(1)
				}
				if issued.Add(1) <= int64(b.N) { // closed loop: the slot goes again
					if err := s.Submit(op, 0, uint64(s.Index())*uint64(n), uint32(n), done); err != nil {
						failed.Add(1)
					}
				}
				if left.Add(-1) == 0 {
					finished <- struct{}{}
				}
			}
			b.SetBytes(int64(n))
			b.ReportAllocs()
			b.ResetTimer()
			left.Store(int64(b.N))
			first := min(qd, b.N)
			issued.Store(int64(first))
			for i := range first {
				s := slots[i]
				if err := s.Submit(op, 0, uint64(s.Index())*uint64(n), uint32(n), done); err != nil {
					b.Fatal(err)
				}
			}
			<-finished
			b.StopTimer()
			if f := failed.Load(); f != 0 {
				b.Fatalf("%d commands failed", f)
			}
			for _, s := range slots {
				s.Release()
			}
		})
	}
}

// TestDisconnectWaitsForEarlier: a DISCONNECT is answered only once the
// requests before it are (it waits in a worker, without spinning): a WRITE
// that the backend holds for 300 ms completes with success, and its data is
// in the image, although the session was closed while it ran.
func TestDisconnectWaitsForEarlier(t *testing.T) {
	net := memt.New(memt.Options{})
	img := image(t, imageSize)
	started := make(chan struct{}, 1)
	serve(t, net, func(c *target.Config) {
		c.InlineIO = -1 // every READ and WRITE in a worker
		c.BeforeIO = func(op wire.Op, off uint64) {
			if op == wire.OpWrite {
				started <- struct{}{}
				time.Sleep(300 * time.Millisecond)
			}
		}
	}, target.ExportConfig{Path: img})
	sess := dial(t, net, img, 1)
	q := sess.Queues()[0]
	s, err := q.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	data := random(rand.New(rand.NewPCG(5, 6)), 8192)
	copy(s.Buf, data)
	got := make(chan wire.Status, 1)
	if err := s.Submit(wire.OpWrite, 0, 0, uint32(len(data)), func(_ *client.Slot, c client.Completion) {
		c.Release()
		got <- c.Status
	}); err != nil {
		t.Fatal(err)
	}
	<-started
	t0 := time.Now()
	sess.Close() // DISCONNECT while the WRITE runs
	select {
	case st := <-got:
		if st != wire.StatusOK {
			t.Fatalf("the WRITE before DISCONNECT: %v", st)
		}
	default:
		t.Fatalf("Close returned (after %v) before the WRITE before its DISCONNECT completed", time.Since(t0))
	}
	s.Release()
	if !bytes.Equal(fileAt(t, img, 0, len(data)), data) {
		t.Fatal("the WRITE's data is not in the image")
	}
}
