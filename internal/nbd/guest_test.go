package nbd

// Tests against the kernel's nbd driver. They need the nbd module and root,
// which the qemu guest of test/vm provides:
//
//	go test -c -o /tmp/nbd.test ./internal/nbd && test/vm/vm.sh run /tmp/nbd.test -test.v -test.run Guest
//
// Elsewhere they skip.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const guestDiskSize = 64 << 20

// guestClient returns a Client for the kernel's nbd family, or skips the
// test when there is none or it may not be used.
func guestClient(t testing.TB) *Client {
	t.Helper()
	if testing.Short() {
		t.Skip("kernel NBD test: skipped in -short mode")
	}
	cl, err := Dial()
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("kernel NBD test: no %q generic-netlink family on this kernel, so no nbd module (%v); it runs in the guest: test/vm/vm.sh run <test binary>", FamilyName, err)
	}
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { cl.Close() })
	if os.Geteuid() != 0 {
		t.Skip("kernel NBD test: needs root (CAP_SYS_ADMIN) to configure devices")
	}
	return cl
}

// memDisk is an in-memory block device backend.
type memDisk struct {
	mem []byte

	mu       sync.Mutex
	trims    [][2]uint64 // offset, length
	flushes  int
	fuas     int
	maxWrite uint32
}

func newMemDisk(t testing.TB, size int) *memDisk {
	t.Helper()
	return &memDisk{mem: mmapBuf(t, size)}
}

// mmapBuf returns page-aligned anonymous memory, as O_DIRECT and RDMA
// registration need.
func mmapBuf(t testing.TB, size int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		t.Fatalf("mmap %d bytes: %v", size, err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// connStats is what one serving goroutine saw.
type connStats struct {
	requests atomic.Int64
	disc     atomic.Bool
	done     chan struct{} // closed when the serve loop has returned
	err      error         // the serve loop's final error, once done
}

// wait waits up to d for the serve loop to end and returns its error.
func (st *connStats) wait(t testing.TB, what string, d time.Duration) error {
	t.Helper()
	select {
	case <-st.done:
		return st.err
	case <-time.After(d):
		t.Fatalf("%s: still served after %v", what, d)
		return nil
	}
}

// serveDisk serves c from d in a goroutine until the connection ends.
func serveDisk(c *Conn, d *memDisk) *connStats {
	st := &connStats{done: make(chan struct{})}
	go func() {
		defer close(st.done)
		st.err = serveDiskLoop(c, d, st)
	}()
	return st
}

func serveDiskLoop(c *Conn, d *memDisk, st *connStats) error {
	for {
		req, err := c.ReadRequest()
		if err != nil {
			return err
		}
		st.requests.Add(1)
		end := req.Offset + uint64(req.Length)
		if req.Type != CmdDisc && req.Type != CmdFlush && (end > uint64(len(d.mem)) || end < req.Offset) {
			if err := c.Reply(req.Handle, EINVAL, nil, nil); err != nil {
				return err
			}
			continue
		}
		var data []byte
		switch req.Type {
		case CmdRead:
			data = d.mem[req.Offset:end]
		case CmdWrite:
			if err := c.ReadPayload(d.mem[req.Offset:end]); err != nil {
				return err
			}
			d.mu.Lock()
			d.maxWrite = max(d.maxWrite, req.Length)
			if req.Flags&CmdFlagFUA != 0 {
				d.fuas++
			}
			d.mu.Unlock()
		case CmdFlush:
			d.mu.Lock()
			d.flushes++
			d.mu.Unlock()
		case CmdTrim:
			clear(d.mem[req.Offset:end])
			d.mu.Lock()
			d.trims = append(d.trims, [2]uint64{req.Offset, uint64(req.Length)})
			d.mu.Unlock()
		case CmdDisc:
			// The kernel shuts the socket down next: keep reading
			// until EOF.
			st.disc.Store(true)
			continue
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

// guestDevice is a connected /dev/nbdN served from a memDisk.
type guestDevice struct {
	t     testing.TB
	opts  *ConnOptions
	cl    *Client
	disk  *memDisk
	index uint32
	conns []*Conn
	stats []*connStats
	down  bool
}

// addConn makes a socketpair served from the device's disk and returns the
// kernel's end.
func (g *guestDevice) addConn() (*os.File, *Conn, *connStats) {
	g.t.Helper()
	kern, c, err := NewSocketPair(g.opts)
	if err != nil {
		g.t.Fatalf("NewSocketPair: %v", err)
	}
	st := serveDisk(c, g.disk)
	g.conns = append(g.conns, c)
	g.stats = append(g.stats, st)
	return kern, c, st
}

func connectGuestDevice(t testing.TB, cl *Client, nsock int, cfg ConnectConfig, opts *ConnOptions) *guestDevice {
	t.Helper()
	g := &guestDevice{t: t, cl: cl, opts: opts, disk: newMemDisk(t, guestDiskSize)}
	var kerns []*os.File
	for range nsock {
		k, _, _ := g.addConn()
		kerns = append(kerns, k)
	}
	cfg.Sockets = kerns
	cfg.SizeBytes = guestDiskSize
	cfg.BlockSize = 4096
	cfg.ServerFlags = FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagCanMultiConn
	idx, err := cl.Connect(cfg)
	for _, k := range kerns {
		k.Close()
	}
	if err != nil {
		for _, c := range g.conns {
			c.Close()
		}
		t.Fatalf("Connect: %v", err)
	}
	g.index = idx
	t.Cleanup(func() {
		if !g.down {
			cl.Disconnect(idx)
		}
		for _, c := range g.conns {
			c.Close()
		}
		// The disk's memory is unmapped next: wait for the servers.
		for _, st := range g.stats {
			<-st.done
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := WaitForDevice(ctx, idx, guestDiskSize); err != nil {
		t.Fatalf("WaitForDevice: %v", err)
	}
	t.Logf("connected %s over %d socket(s)", DevicePath(idx), nsock)
	return g
}

// disconnect disconnects the device and checks that every serving goroutine
// still running sees DISC and then EOF, and that the size drops to 0.
func (g *guestDevice) disconnect(live []*connStats) {
	g.t.Helper()
	if err := g.cl.Disconnect(g.index); err != nil {
		g.t.Fatalf("Disconnect: %v", err)
	}
	g.down = true
	for i, st := range live {
		if err := st.wait(g.t, "connection after Disconnect", 30*time.Second); err != io.EOF {
			g.t.Fatalf("connection %d after Disconnect: want %v, got %v", i, io.EOF, err)
		}
		if !st.disc.Load() {
			g.t.Fatalf("connection %d: no DISC request before EOF", i)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := (Sysfs{}).WaitForDisconnect(ctx, g.index); err != nil {
		g.t.Fatalf("WaitForDisconnect: %v", err)
	}
	st, err := g.cl.Status(g.index)
	if err != nil {
		g.t.Fatalf("Status after disconnect: %v", err)
	}
	if st.Connected {
		g.t.Fatalf("Status after disconnect: want not connected, got %+v", st)
	}
	g.t.Logf("disconnected %s: every connection saw DISC then EOF, size is 0", DevicePath(g.index))
}

func (g *guestDevice) open(flags int) *os.File {
	g.t.Helper()
	f, err := os.OpenFile(DevicePath(g.index), os.O_RDWR|syscall.O_DIRECT|flags, 0)
	if err != nil {
		g.t.Fatalf("open: %v", err)
	}
	return f
}

// writeRead writes random data at off with O_DIRECT, reads it back and
// checks both the read and the backend.
func (g *guestDevice) writeRead(f *os.File, off int64, wbuf, rbuf []byte, seed uint64) error {
	r := rand.New(rand.NewPCG(seed, uint64(off)))
	for i := 0; i+8 <= len(wbuf); i += 8 {
		binary.LittleEndian.PutUint64(wbuf[i:], r.Uint64())
	}
	if _, err := f.WriteAt(wbuf, off); err != nil {
		return err
	}
	clear(rbuf)
	if _, err := f.ReadAt(rbuf, off); err != nil {
		return err
	}
	if !bytes.Equal(rbuf, wbuf) {
		return errors.New("read-back differs from what was written")
	}
	if !bytes.Equal(g.disk.mem[off:off+int64(len(wbuf))], wbuf) {
		return errors.New("backend differs from what was written")
	}
	return nil
}

func TestGuestDevice(t *testing.T) {
	cl := guestClient(t)
	g := connectGuestDevice(t, cl, 2, ConnectConfig{Timeout: 30 * time.Second}, nil)
	idx := g.index
	sys := Sysfs{}

	st, err := cl.Status(idx)
	if err != nil || !st.Connected {
		t.Fatalf("Status: want connected, got %+v, %v", st, err)
	}
	devs, err := cl.List()
	if err != nil || !slices.Contains(devs, DeviceStatus{Index: idx, Connected: true}) {
		t.Fatalf("List: want nbd%d connected among %v (%v)", idx, devs, err)
	}
	// The kernel records the connecting task: one of this process's threads.
	pid, err := sys.PID(idx)
	if err != nil {
		t.Fatalf("PID: %v", err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", pid)); err != nil {
		t.Fatalf("PID %d: want a thread of this process (%d): %v", pid, os.Getpid(), err)
	}
	if err := sys.SetScheduler(idx, "none"); err != nil {
		t.Fatalf("SetScheduler: %v", err)
	}
	kb, err := sys.SetMaxSectorsKB(idx, 512)
	if err != nil {
		t.Fatalf("SetMaxSectorsKB: %v", err)
	}
	t.Logf("scheduler none, max_sectors_kb %d", kb)

	f := g.open(0)
	defer f.Close()
	wbuf, rbuf := mmapBuf(t, 1<<20), mmapBuf(t, 1<<20)
	for i, w := range []struct {
		off  int64
		size int
	}{
		{0, 4096},
		{4096 * 3, 64 << 10},
		{8 << 20, 1 << 20},
		{guestDiskSize - 1<<20, 1 << 20},
		{17 << 20, 128 << 10},
	} {
		if err := g.writeRead(f, w.off, wbuf[:w.size], rbuf[:w.size], uint64(i)); err != nil {
			t.Fatalf("write+read %d bytes at %d: %v", w.size, w.off, err)
		}
	}
	g.disk.mu.Lock()
	maxWrite := g.disk.maxWrite
	g.disk.mu.Unlock()
	if kb > 128 && maxWrite <= 128<<10 {
		t.Fatalf("largest WRITE with max_sectors_kb %d: want more than 128 KiB, got %d", kb, maxWrite)
	}
	t.Logf("O_DIRECT write+read of 4 KiB..1 MiB verified; largest WRITE request %d KiB; requests per connection %d, %d",
		maxWrite>>10, g.stats[0].requests.Load(), g.stats[1].requests.Load())

	// A random-offset mix from several goroutines, to use both queues.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wb, rb := mmapBuf(t, 64<<10), mmapBuf(t, 64<<10)
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range 50 {
				size := (1 + r.IntN(16)) * 4096
				// Each goroutine owns its 8 MiB slice of [24 MiB, 56 MiB).
				off := int64(24<<20+w*(8<<20)) + int64(r.IntN((8<<20-size)/4096))*4096
				if err := g.writeRead(f, off, wb[:size], rb[:size], uint64(w*1000+i)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent write+read: %v", err)
	}
	t.Logf("4 goroutines x 50 random write+read verified; requests per connection %d, %d",
		g.stats[0].requests.Load(), g.stats[1].requests.Load())

	// FUA: O_DSYNC direct writes carry it when the export sends FUA.
	fd := g.open(syscall.O_DSYNC)
	if _, err := fd.WriteAt(wbuf[:4096], 4096); err != nil {
		t.Fatalf("O_DSYNC write: %v", err)
	}
	fd.Close()
	g.disk.mu.Lock()
	fuas := g.disk.fuas
	g.disk.mu.Unlock()
	if fuas == 0 {
		t.Fatalf("O_DSYNC|O_DIRECT write: want a WRITE with the FUA flag, got none")
	}

	// FLUSH: fsync on the device.
	g.disk.mu.Lock()
	flushes := g.disk.flushes
	g.disk.mu.Unlock()
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	g.disk.mu.Lock()
	got := g.disk.flushes - flushes
	g.disk.mu.Unlock()
	if got == 0 {
		t.Fatalf("fsync: want a FLUSH request, got none")
	}

	// TRIM: BLKDISCARD over 1 MiB that holds data.
	rng := [2]uint64{8 << 20, 1 << 20}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKDISCARD, uintptr(unsafe.Pointer(&rng[0]))); e != 0 {
		t.Fatalf("BLKDISCARD: %v", e)
	}
	g.disk.mu.Lock()
	trims := slices.Clone(g.disk.trims)
	g.disk.mu.Unlock()
	var trimmed uint64
	for _, tr := range trims {
		if tr[0] < rng[0] || tr[0]+tr[1] > rng[0]+rng[1] {
			t.Fatalf("TRIM %v outside the discarded range %v", tr, rng)
		}
		trimmed += tr[1]
	}
	if trimmed != rng[1] {
		t.Fatalf("TRIM requests: want %d bytes trimmed, got %d in %v", rng[1], trimmed, trims)
	}
	if _, err := f.ReadAt(rbuf, int64(rng[0])); err != nil {
		t.Fatalf("read after discard: %v", err)
	}
	if !bytes.Equal(rbuf, make([]byte, len(rbuf))) {
		t.Fatalf("read after discard: want zeros")
	}
	t.Logf("FUA writes %d, FLUSH on fsync %d, TRIM %v for BLKDISCARD %v", fuas, got, trims, rng)

	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	g.disconnect(g.stats)
}

// waitLinkDead waits for a LINK_DEAD event for index.
func waitLinkDead(t *testing.T, events <-chan uint32, index uint32) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case idx, ok := <-events:
			if !ok {
				t.Fatalf("LINK_DEAD channel closed")
			}
			if idx == index {
				return
			}
		case <-timeout:
			t.Fatalf("no LINK_DEAD event for nbd%d within 30 s", index)
		}
	}
}

func TestGuestReconfigure(t *testing.T) {
	cl := guestClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := cl.WatchLinkDead(ctx)
	if err != nil {
		t.Fatalf("WatchLinkDead: %v", err)
	}
	g := connectGuestDevice(t, cl, 2, ConnectConfig{Timeout: 60 * time.Second, DeadConnTimeout: 60 * time.Second}, nil)
	idx := g.index
	f := g.open(0)
	defer f.Close()
	wbuf, rbuf := mmapBuf(t, 256<<10), mmapBuf(t, 256<<10)
	if err := g.writeRead(f, 0, wbuf, rbuf, 1); err != nil {
		t.Fatalf("write+read: %v", err)
	}

	// Kill connection 0: the kernel marks it dead, says so, and falls
	// back to connection 1.
	g.conns[0].Close()
	waitLinkDead(t, events, idx)
	if err := g.stats[0].wait(t, "connection 0 after Close", 10*time.Second); err != ErrClosed {
		t.Fatalf("connection 0 after Close: want %v, got %v", ErrClosed, err)
	}
	before := g.stats[1].requests.Load()
	if err := g.writeRead(f, 1<<20, wbuf, rbuf, 2); err != nil {
		t.Fatalf("write+read with one dead connection: %v", err)
	}
	if g.stats[1].requests.Load() == before {
		t.Fatalf("with connection 0 dead, connection 1 served nothing")
	}
	t.Logf("connection 0 closed: LINK_DEAD for nbd%d, I/O falls back to connection 1", idx)

	// Kill connection 1 too: I/O now waits (DeadConnTimeout) for a socket.
	g.conns[1].Close()
	waitLinkDead(t, events, idx)
	g.stats[1].wait(t, "connection 1 after Close", 10*time.Second)
	ioDone := make(chan error, 1)
	go func() { ioDone <- g.writeRead(f, 2<<20, wbuf, rbuf, 3) }()
	select {
	case err := <-ioDone:
		t.Fatalf("I/O with every connection dead: want it to wait, got done (%v)", err)
	case <-time.After(time.Second):
	}

	// Hand over a new socket: the waiting I/O goes through it.
	k2, _, st2 := g.addConn()
	if err := cl.Reconfigure(idx, ReconfigureConfig{Sockets: []*os.File{k2}}); err != nil {
		t.Fatalf("Reconfigure: %v", err)
	}
	k2.Close()
	select {
	case err := <-ioDone:
		if err != nil {
			t.Fatalf("I/O waiting for a connection: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("I/O still waiting 30 s after Reconfigure")
	}
	if st2.requests.Load() == 0 {
		t.Fatalf("new connection served nothing")
	}
	t.Logf("both connections dead: I/O waited; Reconfigure with a new socket: it completed over it (%d requests)", st2.requests.Load())

	// Fill the second dead slot.
	k3, _, st3 := g.addConn()
	if err := cl.Reconfigure(idx, ReconfigureConfig{Sockets: []*os.File{k3}, Timeout: 30 * time.Second}); err != nil {
		t.Fatalf("Reconfigure: %v", err)
	}
	k3.Close()
	for i := range 8 {
		if err := g.writeRead(f, int64(4<<20+i*(256<<10)), wbuf, rbuf, uint64(10+i)); err != nil {
			t.Fatalf("write+read after the second Reconfigure: %v", err)
		}
	}

	// No dead slot left: the kernel drops the socket without an error, so
	// its serving end sees EOF once the kernel's last reference is gone.
	k4, c4, st4 := g.addConn()
	if err := cl.Reconfigure(idx, ReconfigureConfig{Sockets: []*os.File{k4}}); err != nil {
		t.Fatalf("Reconfigure without a dead slot: want nil (the kernel drops the socket), got %v", err)
	}
	k4.Close()
	if err := st4.wait(t, "socket given without a dead slot", 10*time.Second); err != io.EOF || st4.requests.Load() != 0 {
		t.Fatalf("socket given without a dead slot: want EOF and no requests, got %v after %d", err, st4.requests.Load())
	}
	c4.Close()
	t.Logf("Reconfigure without a dead slot: socket silently dropped (EOF, 0 requests); requests on the new connections %d, %d",
		st2.requests.Load(), st3.requests.Load())

	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	g.disconnect([]*connStats{st2, st3})
}

// BenchmarkGuestRandRead measures 4 KiB O_DIRECT random reads through the
// kernel's nbd driver and Conn (2 sockets, scheduler none) at queue depths 1
// and 32 (one goroutine, so one thread in pread, per outstanding request).
func BenchmarkGuestRandRead(b *testing.B) {
	for _, v := range []struct {
		name string
		opts *ConnOptions
	}{{"default", nil}, {"readbuf-4k", &ConnOptions{ReadBufferSize: 4096}}} {
		b.Run(v.name, func(b *testing.B) {
			cl := guestClient(b)
			g := connectGuestDevice(b, cl, 2, ConnectConfig{Timeout: 30 * time.Second}, v.opts)
			if err := (Sysfs{}).SetScheduler(g.index, "none"); err != nil {
				b.Fatalf("SetScheduler: %v", err)
			}
			f := g.open(0)
			defer f.Close()
			for _, qd := range []int{1, 32} {
				b.Run(fmt.Sprintf("qd%d", qd), func(b *testing.B) {
					var next atomic.Int64
					var wg sync.WaitGroup
					b.SetBytes(4096)
					b.ResetTimer()
					for w := range qd {
						buf := mmapBuf(b, 4096)
						wg.Go(func() {
							r := rand.New(rand.NewPCG(uint64(w), 2))
							for next.Add(1) <= int64(b.N) {
								off := int64(r.IntN(guestDiskSize/4096)) * 4096
								if _, err := f.ReadAt(buf, off); err != nil {
									b.Errorf("pread: %v", err)
									return
								}
							}
						})
					}
					wg.Wait()
					b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "IOPS")
				})
			}
			f.Close()
			g.disconnect(g.stats)
		})
	}
}
