package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"rbd/internal/backend"
	"rbd/internal/client"
	"rbd/internal/clienttest"
	"rbd/internal/target"
	"rbd/internal/wire"
)

// startTarget runs an in-process target on this run's address and a free port.
func startTarget(t *testing.T, exports ...target.ExportConfig) (*target.Server, netip.AddrPort) {
	t.Helper()
	srv, ap, _ := startTargetConfig(t, target.Config{Exports: exports})
	return srv, ap
}

// startTargetConfig is startTarget with a whole configuration; the target's
// log is kept (and printed when the test fails, or with -v).
func startTargetConfig(t *testing.T, cfg target.Config) (*target.Server, netip.AddrPort, *rogueLog) {
	t.Helper()
	_, addr, _ := env(t)
	rl := &rogueLog{}
	cfg.Listen = []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr(addr), 0)}
	cfg.Log = slog.New(slog.NewTextHandler(rl, &slog.HandlerOptions{Level: slog.LevelDebug}))
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
		if t.Failed() || testing.Verbose() {
			t.Logf("target log:\n%s", rl.String())
		}
	})
	return srv, srv.Addrs()[0], rl
}

func dialSession(t *testing.T, to netip.AddrPort, export string, queues int, mut ...func(*client.Config)) *client.Session {
	t.Helper()
	s, err := dialSessionErr(to, export, queues, mut...)
	if err != nil {
		t.Fatalf("Dial %s %s: %v", to, export, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func dialSessionErr(to netip.AddrPort, export string, queues int, mut ...func(*client.Config)) (*client.Session, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := client.Config{Target: to, Export: export, Queues: queues,
		Queue: client.QueueConfig{Depth: 16, MaxIO: 128 << 10, Inline: 4096}}
	for _, m := range mut {
		m(&cfg)
	}
	return client.Dial(ctx, cfg)
}

// do runs one command on q and waits; for a READ it returns the data.
var do = clienttest.Do

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// readDevice reads the backend directly (O_DIRECT), as the target host sees it.
func readDevice(t testing.TB, path string, off int64, n int) []byte {
	t.Helper()
	be, err := backend.Open(path, backend.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer be.Close()
	buf, free, err := backend.AlignedBuffer(n)
	if err != nil {
		t.Fatal(err)
	}
	defer free()
	if err := be.ReadAt(buf[:n], off); err != nil {
		t.Fatalf("read %s at %d: %v", path, off, err)
	}
	return append([]byte(nil), buf[:n]...)
}

func TestTargetReadWrite(t *testing.T) {
	_, to := startTarget(t, target.ExportConfig{Path: "/dev/ram1"})
	s := dialSession(t, to, "/dev/ram1", 2)
	if s.Export.Size != 256<<20 || s.Export.LogicalBlockSize != 512 {
		t.Fatalf("geometry: %+v", s.Export)
	}
	t.Logf("export: %d bytes, block %d, caps %#x", s.Export.Size, s.Export.LogicalBlockSize, s.Export.Caps)
	qs := s.Queues()
	slot := qs[0].SlotSize()
	for i, tc := range []struct {
		off  uint64
		size int
	}{
		{0, 512}, {4096, 4096}, {1 << 20, 8192}, {3 << 20, slot}, {s.Export.Size - 65536, 65536}, {77 * 512, 1536},
	} {
		q := qs[i%len(qs)]
		data := random(tc.size)
		if _, st := do(t, q, wire.OpWrite, 0, tc.off, data, 0); st != wire.StatusOK {
			t.Fatalf("write %d at %d: %v", tc.size, tc.off, st)
		}
		got, st := do(t, qs[(i+1)%len(qs)], wire.OpRead, 0, tc.off, nil, tc.size)
		if st != wire.StatusOK || !bytes.Equal(got, data) {
			t.Fatalf("read back %d at %d: %v, equal %v", tc.size, tc.off, st, bytes.Equal(got, data))
		}
		if dev := readDevice(t, "/dev/ram1", int64(tc.off), tc.size); !bytes.Equal(dev, data) {
			t.Fatalf("/dev/ram1 at %d does not hold what was written", tc.off)
		}
	}
	// FUA write and FLUSH
	data := random(4096)
	if _, st := do(t, qs[0], wire.OpWrite, wire.FlagFUA, 8<<20, data, 0); st != wire.StatusOK {
		t.Fatalf("FUA write: %v", st)
	}
	if _, st := do(t, qs[1], wire.OpFlush, 0, 0, nil, 0); st != wire.StatusOK {
		t.Fatalf("flush: %v", st)
	}
	if !bytes.Equal(readDevice(t, "/dev/ram1", 8<<20, 4096), data) {
		t.Fatal("FUA data not on the device")
	}
	// WRITE_ZEROES, with and without unmapping
	for _, flags := range []uint8{0, wire.FlagNoUnmap} {
		do(t, qs[0], wire.OpWrite, 0, 16<<20, random(3*4096), 0)
		if _, st := do(t, qs[0], wire.OpWriteZeroes, flags, 16<<20+4096, nil, 4096); st != wire.StatusOK {
			t.Fatalf("write zeroes: %v", st)
		}
		dev := readDevice(t, "/dev/ram1", 16<<20, 3*4096)
		if !bytes.Equal(dev[4096:8192], make([]byte, 4096)) || bytes.Equal(dev[:4096], make([]byte, 4096)) || bytes.Equal(dev[8192:], make([]byte, 4096)) {
			t.Fatal("WRITE_ZEROES zeroed the wrong range")
		}
	}
	// TRIM, where the device can discard
	if s.Export.Caps&wire.CapTrim != 0 {
		do(t, qs[1], wire.OpWrite, 0, 20<<20, random(1<<20), 0)
		if _, st := do(t, qs[1], wire.OpTrim, 0, 20<<20, nil, 1<<20); st != wire.StatusOK {
			t.Fatalf("trim: %v", st)
		}
		if !bytes.Equal(readDevice(t, "/dev/ram1", 20<<20, 1<<20), make([]byte, 1<<20)) {
			t.Fatal("TRIM: the range does not read back as zeroes on the device")
		}
	} else {
		if _, st := do(t, qs[1], wire.OpTrim, 0, 20<<20, nil, 1<<20); st != wire.StatusNotSupp {
			t.Fatalf("trim without the capability: want ENOTSUP, got %v", st)
		}
		t.Log("the export cannot discard: TRIM answered ENOTSUP")
	}
}

// TestTargetConcurrent drives many commands at once on several queues.
func TestTargetConcurrent(t *testing.T) {
	_, to := startTarget(t, target.ExportConfig{Path: "/dev/ram1"})
	s := dialSession(t, to, "/dev/ram1", 3)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 12 {
		q := s.Queues()[g%3]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 20 {
				off := uint64(g)<<20 + uint64(k)*16384
				size := []int{512, 4096, 16384, 12288}[k%4]
				data := random(size)
				if _, st := do(t, q, wire.OpWrite, 0, off, data, 0); st != wire.StatusOK {
					errs <- fmt.Errorf("write: %v", st)
					return
				}
				got, st := do(t, q, wire.OpRead, 0, off, nil, size)
				if st != wire.StatusOK || !bytes.Equal(got, data) {
					errs <- fmt.Errorf("read back at %d: %v", off, st)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestTargetBadCommands: each bad command gets an error reply and the
// connection lives on.
func TestTargetBadCommands(t *testing.T) {
	_, to := startTarget(t, target.ExportConfig{Path: "/dev/ram1"}, target.ExportConfig{Path: "/dev/ram2", ReadOnly: true})
	s := dialSession(t, to, "/dev/ram1", 1)
	q := s.Queues()[0]
	size := s.Export.Size
	for _, tc := range []struct {
		name   string
		op     wire.Op
		off    uint64
		length int
		want   wire.Status
	}{
		{"misaligned offset", wire.OpRead, 100, 512, wire.StatusInval},
		{"misaligned length", wire.OpRead, 0, 100, wire.StatusInval},
		{"read beyond the end", wire.OpRead, size, 4096, wire.StatusInval},
		{"read across the end", wire.OpRead, size - 512, 1024, wire.StatusInval},
		{"wrapping offset", wire.OpRead, ^uint64(0) - 511, 1024, wire.StatusInval},
		{"write beyond the end", wire.OpWrite, size, 4096, wire.StatusNoSpace},
		{"zero-length trim", wire.OpWriteZeroes, 0, 0, wire.StatusInval},
		{"write zeroes beyond the end", wire.OpWriteZeroes, size - 512, 4096, wire.StatusNoSpace},
	} {
		var data []byte
		if tc.op == wire.OpWrite {
			data = random(tc.length)
		}
		if _, st := do(t, q, tc.op, 0, tc.off, data, tc.length); st != tc.want {
			t.Errorf("%s: want %v, got %v", tc.name, tc.want, st)
		}
	}
	// still serving
	data := random(4096)
	if _, st := do(t, q, wire.OpWrite, 0, 0, data, 0); st != wire.StatusOK {
		t.Fatalf("write after bad commands: %v", st)
	}
	// read-only export
	ro := dialSession(t, to, "/dev/ram2", 1)
	if ro.Export.Caps&wire.CapReadOnly == 0 {
		t.Fatal("read-only export without CapReadOnly")
	}
	if _, st := do(t, ro.Queues()[0], wire.OpWrite, 0, 0, data, 0); st != wire.StatusROFS {
		t.Fatalf("write to a read-only export: want EROFS, got %v", st)
	}
	if _, st := do(t, ro.Queues()[0], wire.OpRead, 0, 0, nil, 4096); st != wire.StatusOK {
		t.Fatalf("read of a read-only export: %v", st)
	}
}

// TestTargetOpenRefusals: names that are not exported, and a busy export.
func TestTargetOpenRefusals(t *testing.T) {
	_, to := startTarget(t, target.ExportConfig{Path: "/dev/ram1"})
	link := "/tmp/rbd-e2e-link-" + fmt.Sprint(os.Getpid())
	os.Remove(link)
	if err := os.Symlink("/dev/ram3", link); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(link)
	for _, name := range []string{"/dev/ram3", "/dev/../dev/ram1", "dev/ram1", link, "/dev/ram1/"} {
		_, err := dialSessionErr(to, name, 1)
		var ee *client.ExportError
		if !errors.As(err, &ee) || ee.Status != wire.StatusNoEnt {
			t.Errorf("open %q: want an ENOENT export error, got %v", name, err)
			continue
		}
		t.Logf("open %q: %v", name, err)
	}
	s := dialSession(t, to, "/dev/ram1", 1)
	_, err := dialSessionErr(to, "/dev/ram1", 1)
	if !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("second read-write session: want EBUSY, got %v", err)
	}
	t.Logf("busy: %v", err)
	ro, err := dialSessionErr(to, "/dev/ram1", 1, func(c *client.Config) { c.ReadOnly = true })
	if err != nil {
		t.Fatalf("read-only session beside a read-write one: %v", err)
	}
	ro.Close()
	s.Close()
	s2, err := dialSessionErr(to, "/dev/ram1", 1)
	if err != nil {
		t.Fatalf("read-write session after the first closed: %v", err)
	}
	s2.Close()
}
