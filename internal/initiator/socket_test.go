package initiator_test

// Host tests of the NBD socket front end: a Manager maps an export of a
// target.Server over the in-memory transport (internal/transport/memt), with
// no kernel device, and clients connect to its NBD socket: a small NBD
// client written here (for the protocol's corners) and the real tools, where
// installed (nbdinfo, nbdcopy from libnbd-bin; qemu-img, qemu-io from
// qemu-utils; fio's nbd engine).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"rbd/internal/initiator"
	"rbd/internal/nbd"
	"rbd/internal/stats"
	"rbd/internal/target"
	"rbd/internal/transport/memt"
)

var targetAddr = netip.MustParseAddrPort("10.0.0.1:65000")

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// rig is a target with one image export and a manager mapping it.
type rig struct {
	img  string
	m    *initiator.Manager
	dir  string
	net  *memt.Network
	ec   target.ExportConfig
	tcfg func(*target.Config) // changes the target's configuration, if set
	stop func()               // stops the target (restart starts another)
}

// startTarget serves the rig's export on its network until stop.
func (r *rig) startTarget(t testing.TB) {
	t.Helper()
	cfg := target.Config{Listen: []netip.AddrPort{targetAddr}, Exports: []target.ExportConfig{r.ec}, Transport: r.net, Log: quiet()}
	if r.tcfg != nil {
		r.tcfg(&cfg)
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
	var once sync.Once
	r.stop = func() { once.Do(func() { cancel(); <-done }) }
}

func newRig(t testing.TB, size int64, mut ...func(*target.ExportConfig)) *rig {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	r := &rig{img: img, dir: dir, net: memt.New(memt.Options{}), ec: target.ExportConfig{Path: img}}
	for _, m := range mut {
		m(&r.ec)
	}
	r.startTarget(t)
	r.m = initiator.NewManager(initiator.Config{Queues: 2, QueueDepth: 16, Transport: r.net, Log: quiet(), DevDir: dir,
		ReconnectDelay: 50 * time.Millisecond, CtrlLossTimeout: 20 * time.Second})
	t.Cleanup(func() {
		r.m.Close()
		r.stop()
	})
	return r
}

// add maps the export on an NBD socket only.
func (r *rig) add(t testing.TB, req initiator.AddRequest) (*initiator.Device, string) {
	t.Helper()
	if req.NBDSocket == "" {
		req.NBDSocket = filepath.Join(r.dir, "nbd.sock")
	}
	req.Target, req.Port, req.Export, req.NoKernelDevice = targetAddr.Addr().String(), targetAddr.Port(), r.img, true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := r.m.Add(ctx, req)
	if err != nil {
		var ie *initiator.Error
		if errors.As(err, &ie) {
			t.Fatalf("Add: %v (hint: %s)", err, ie.Hint)
		}
		t.Fatalf("Add: %v", err)
	}
	return d, req.NBDSocket
}

// nbdClient is a minimal NBD client: fixed newstyle, NBD_OPT_GO, simple
// replies.
type nbdClient struct {
	c     net.Conn
	br    *bufio.Reader
	size  uint64
	flags uint16
	block [3]uint32
	mu    sync.Mutex
	reads map[uint64]uint32 // handle -> length of READs in flight
}

func dialNBD(t testing.TB, sock, export string) *nbdClient {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("connect to %s: %v", sock, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	nc := &nbdClient{c: c, br: bufio.NewReader(c), reads: map[uint64]uint32{}}
	var g [18]byte
	if _, err := io.ReadFull(nc.br, g[:]); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	if binary.BigEndian.Uint64(g[0:]) != nbd.HandshakeMagic || binary.BigEndian.Uint64(g[8:]) != nbd.OptionMagic {
		t.Fatalf("greeting %x", g)
	}
	opt := binary.BigEndian.AppendUint32(nil, nbd.ClientFlagFixedNewstyle|nbd.ClientFlagNoZeroes)
	opt = binary.BigEndian.AppendUint64(opt, nbd.OptionMagic)
	opt = binary.BigEndian.AppendUint32(opt, nbd.OptGo)
	opt = binary.BigEndian.AppendUint32(opt, uint32(4+len(export)+2+2))
	opt = binary.BigEndian.AppendUint32(opt, uint32(len(export)))
	opt = append(opt, export...)
	opt = binary.BigEndian.AppendUint16(opt, 1)
	opt = binary.BigEndian.AppendUint16(opt, nbd.InfoBlockSize)
	if _, err := c.Write(opt); err != nil {
		t.Fatal(err)
	}
	for {
		var h [20]byte
		if _, err := io.ReadFull(nc.br, h[:]); err != nil {
			t.Fatalf("option reply: %v", err)
		}
		typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		p := make([]byte, n)
		if _, err := io.ReadFull(nc.br, p); err != nil {
			t.Fatal(err)
		}
		switch {
		case typ == nbd.RepAck:
			c.SetDeadline(time.Time{})
			return nc
		case typ&(1<<31) != 0:
			t.Fatalf("NBD_OPT_GO refused (%#x): %s", typ, p)
		case typ == nbd.RepInfo && binary.BigEndian.Uint16(p) == nbd.InfoExport:
			nc.size, nc.flags = binary.BigEndian.Uint64(p[2:]), binary.BigEndian.Uint16(p[10:])
		case typ == nbd.RepInfo && binary.BigEndian.Uint16(p) == nbd.InfoBlockSize:
			for i := range 3 {
				nc.block[i] = binary.BigEndian.Uint32(p[2+4*i:])
			}
		}
	}
}

func (nc *nbdClient) send(t testing.TB, typ uint16, handle, off uint64, length uint32, payload []byte) {
	t.Helper()
	if typ == nbd.CmdRead {
		nc.mu.Lock()
		nc.reads[handle] = length
		nc.mu.Unlock()
	}
	b := make([]byte, nbd.RequestSize, nbd.RequestSize+len(payload))
	nbd.Request{Type: typ, Handle: handle, Offset: off, Length: length}.Encode(b)
	if _, err := nc.c.Write(append(b, payload...)); err != nil {
		t.Fatalf("send request %d: %v", handle, err)
	}
}

// reply reads one simple reply and, for a successful READ, its data.
func (nc *nbdClient) reply(t testing.TB) (handle uint64, errno uint32, data []byte) {
	t.Helper()
	nc.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var h [nbd.ReplySize]byte
	if _, err := io.ReadFull(nc.br, h[:]); err != nil {
		t.Fatalf("reply: %v", err)
	}
	if binary.BigEndian.Uint32(h[0:]) != nbd.ReplyMagic {
		t.Fatalf("reply magic %x", h)
	}
	errno, handle = binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
	nc.mu.Lock()
	n, isRead := nc.reads[handle]
	delete(nc.reads, handle)
	nc.mu.Unlock()
	if isRead && errno == 0 {
		data = make([]byte, n)
		if _, err := io.ReadFull(nc.br, data); err != nil {
			t.Fatalf("read data of %d: %v", handle, err)
		}
	}
	return handle, errno, data
}

// do sends one request and waits for its reply.
func (nc *nbdClient) do(t testing.TB, typ uint16, off uint64, length uint32, payload []byte) (uint32, []byte) {
	t.Helper()
	h := rand.Uint64()
	nc.send(t, typ, h, off, length, payload)
	got, errno, data := nc.reply(t)
	if got != h {
		t.Fatalf("reply for handle %d, want %d", got, h)
	}
	return errno, data
}

func random(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return b
}

func fileAt(t *testing.T, path string, off, n int) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b[off : off+n]
}

// TestSocketEngine: what a client is told in the handshake, data written
// through the socket lands in the image and reads back, requests the
// engine must not pass on are refused with the connection kept, and every
// request in flight at NBD_CMD_DISC is answered before the connection closes.
func TestSocketEngine(t *testing.T) {
	const size = 8 << 20
	r := newRig(t, size)
	d, sock := r.add(t, initiator.AddRequest{})
	if d.Path() != "" || d.NBDPath() != "" || d.Socket() != sock {
		t.Fatalf("device paths %q %q, socket %q", d.Path(), d.NBDPath(), d.Socket())
	}
	if _, err := os.Lstat(filepath.Join(r.dir, d.Name())); !os.IsNotExist(err) {
		t.Fatalf("a device without a kernel device has a %s link: %v", d.Name(), err)
	}
	st, err := os.Stat(sock)
	if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: %v %v, want a socket with mode 0600", sock, st.Mode(), err)
	}
	nc := dialNBD(t, sock, "")
	q0 := d.Session().Queues()[0]
	wantMax := uint32(q0.SlotSize())
	if nc.size != size || nc.block != [3]uint32{512, 4096, wantMax} {
		t.Errorf("handshake: size %d, block sizes %v; want %d, [512 4096 %d]", nc.size, nc.block, size, wantMax)
	}
	wantFlags := uint16(nbd.FlagHasFlags | nbd.FlagSendFlush | nbd.FlagSendFUA | nbd.FlagSendWriteZeroes | nbd.FlagCanMultiConn)
	if nc.flags&wantFlags != wantFlags || nc.flags&nbd.FlagReadOnly != 0 {
		t.Errorf("handshake: flags %#x, want %#x and not read-only", nc.flags, wantFlags)
	}

	for _, tc := range []struct {
		name   string
		off, n int
	}{
		{"4K", 0, 4 << 10},
		{"512 at 1M", 1 << 20, 512},
		{"a slot", 2 << 20, q0.SlotSize()},
		{"three slots and a bit, at the end", size - 3*q0.SlotSize() - 4096, 3*q0.SlotSize() + 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := random(tc.n)
			if errno, _ := nc.do(t, nbd.CmdWrite, uint64(tc.off), uint32(tc.n), data); errno != 0 {
				t.Fatalf("write: errno %d", errno)
			}
			if errno, _ := nc.do(t, nbd.CmdFlush, 0, 0, nil); errno != 0 {
				t.Fatalf("flush: errno %d", errno)
			}
			if !bytes.Equal(fileAt(t, r.img, tc.off, tc.n), data) {
				t.Fatal("the image does not hold what was written")
			}
			errno, got := nc.do(t, nbd.CmdRead, uint64(tc.off), uint32(tc.n), nil)
			if errno != 0 || !bytes.Equal(got, data) {
				t.Fatalf("read back: errno %d, equal %v", errno, bytes.Equal(got, data))
			}
		})
	}
	t.Run("write zeroes", func(t *testing.T) {
		if errno, _ := nc.do(t, nbd.CmdWriteZeroes, 0, 8192, nil); errno != 0 {
			t.Fatalf("errno %d", errno)
		}
		if _, got := nc.do(t, nbd.CmdRead, 0, 8192, nil); !bytes.Equal(got, make([]byte, 8192)) {
			t.Fatal("not zero after WRITE_ZEROES")
		}
	})

	before := fileAt(t, r.img, 0, size)
	for _, tc := range []struct {
		name    string
		typ     uint16
		off     uint64
		n       uint32
		payload bool
		errno   uint32
	}{
		{"read past the end", nbd.CmdRead, size - 4096, 8192, false, nbd.EINVAL},
		{"read at a huge offset", nbd.CmdRead, 1 << 62, 4096, false, nbd.EINVAL},
		{"write past the end", nbd.CmdWrite, size, 4096, true, nbd.ENOSPC},
		{"unaligned write", nbd.CmdWrite, 100, 512, true, nbd.EINVAL},
		{"unaligned length", nbd.CmdRead, 0, 1000, false, nbd.EINVAL},
		{"empty read", nbd.CmdRead, 0, 0, false, nbd.EINVAL},
		{"trim past the end", nbd.CmdTrim, size - 512, 1024, false, nbd.ENOSPC},
		{"read of 64 MiB", nbd.CmdRead, 0, 64 << 20, false, nbd.EINVAL},
		{"NBD_CMD_CACHE", nbd.CmdCache, 0, 4096, false, nbd.EINVAL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p []byte
			if tc.payload {
				p = random(int(tc.n))
			}
			if errno, _ := nc.do(t, tc.typ, tc.off, tc.n, p); errno != tc.errno {
				t.Fatalf("errno %d, want %d", errno, tc.errno)
			}
			// the connection goes on
			if errno, _ := nc.do(t, nbd.CmdRead, 0, 4096, nil); errno != 0 {
				t.Fatalf("read after the refused request: errno %d", errno)
			}
		})
	}
	if !bytes.Equal(fileAt(t, r.img, 0, size), before) {
		t.Fatal("a refused request changed the image")
	}

	t.Run("requests in flight at NBD_CMD_DISC are answered", func(t *testing.T) {
		c2 := dialNBD(t, sock, d.Name())
		const n = 64
		data := random(n * 4096)
		for i := range n {
			c2.send(t, nbd.CmdWrite, uint64(i), uint64(i)*4096, 4096, data[i*4096:(i+1)*4096])
		}
		c2.send(t, nbd.CmdDisc, 0, 0, 0, nil)
		seen := map[uint64]bool{}
		for range n {
			h, errno, _ := c2.reply(t)
			if errno != 0 || seen[h] {
				t.Fatalf("reply %d: errno %d, seen before %v", h, errno, seen[h])
			}
			seen[h] = true
		}
		if _, err := c2.br.ReadByte(); err != io.EOF {
			t.Fatalf("after the replies: want the end of the connection, got %v", err)
		}
		if !bytes.Equal(fileAt(t, r.img, 0, n*4096), data) {
			t.Fatal("the writes before NBD_CMD_DISC are not in the image")
		}
	})
	if got := d.Info(); got.NBDSocket != sock || got.SocketClients != 1 {
		t.Errorf("Info: socket %q with %d clients, want %q with 1", got.NBDSocket, got.SocketClients, sock)
	}
}

// TestSocketClients: several clients at once, each writing and verifying
// its own region, spread over the device's queues; the stats count them all.
func TestSocketClients(t *testing.T) {
	r := newRig(t, 16<<20)
	d, sock := r.add(t, initiator.AddRequest{})
	const clients, per = 6, 40
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	cs := make([]*nbdClient, clients)
	for i := range clients {
		cs[i] = dialNBD(t, sock, "")
	}
	if n := d.Info().SocketClients; n != clients {
		t.Errorf("%d clients listed, want %d", n, clients)
	}
	for i, nc := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := uint64(i) * 2 << 20
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for k := range per {
				n := (1 + rng.IntN(64)) * 4096
				off := base + uint64(rng.IntN((2<<20-n)/4096))*4096
				data := make([]byte, n)
				for j := range data {
					data[j] = byte(rng.Uint32())
				}
				h := uint64(k)
				nc.send(t, nbd.CmdWrite, h, off, uint32(n), data)
				if gh, errno, _ := nc.reply(t); gh != h || errno != 0 {
					errs <- fmt.Errorf("client %d write %d: handle %d errno %d", i, k, gh, errno)
					return
				}
				nc.send(t, nbd.CmdRead, h, off, uint32(n), nil)
				if gh, errno, got := nc.reply(t); gh != h || errno != 0 || !bytes.Equal(got, data) {
					errs <- fmt.Errorf("client %d read %d: handle %d errno %d, data equal %v", i, k, gh, errno, bytes.Equal(got, data))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	snap := d.Stats.Snapshot()
	if got := snap.Ops[stats.OpWrite].Ops; got < clients*per {
		t.Errorf("stats: %d writes completed, want at least %d", got, clients*per)
	}
}

// TestSocketRemove: removing the device answers what its clients have in
// flight, disconnects them and removes the socket file.
func TestSocketRemove(t *testing.T) {
	r := newRig(t, 8<<20)
	d, sock := r.add(t, initiator.AddRequest{})
	nc := dialNBD(t, sock, "")
	data := random(64 << 10)
	nc.send(t, nbd.CmdWrite, 1, 0, uint32(len(data)), data)
	if h, errno, _ := nc.reply(t); h != 1 || errno != 0 {
		t.Fatalf("write: %d %d", h, errno)
	}
	done := make(chan error, 1)
	go func() { done <- r.m.Remove(context.Background(), sock) }() // by the socket's path
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Remove: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Remove did not return")
	}
	nc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.br.ReadByte(); err != io.EOF {
		t.Fatalf("client after the removal: want the end of the connection, got %v", err)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket file after the removal: %v", err)
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Fatal("connected after the removal")
	}
	if !bytes.Equal(fileAt(t, r.img, 0, len(data)), data) {
		t.Fatal("the write is not in the image")
	}
	if len(r.m.List()) != 0 || d.Info().State != initiator.StateRemoving {
		t.Fatalf("devices after the removal: %d, state %s", len(r.m.List()), d.Info().State)
	}
}

// TestSocketOptions: the socket's path, mode and owner, and what is refused.
func TestSocketOptions(t *testing.T) {
	// shared: a refused add does not wait for the target to let go of the last
	r := newRig(t, 4<<20, func(e *target.ExportConfig) { e.Shared = true })
	dir := r.dir
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // a socket file nobody listens on, as a crashed rbdi leaves
	live := filepath.Join(dir, "live.sock")
	ll, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ll.Close()
	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, []byte("keep me"), 0o644)

	for _, tc := range []struct {
		name string
		req  initiator.AddRequest
		err  string // part of the error; "" for success
		mode os.FileMode
		gid  int
	}{
		{"mode and group", initiator.AddRequest{NBDSocket: filepath.Join(dir, "a.sock"), SocketMode: "0660", SocketOwner: ":" + fmt.Sprint(os.Getgid())}, "", 0o660, os.Getgid()},
		{"a stale socket is replaced", initiator.AddRequest{NBDSocket: stale}, "", 0o600, -1},
		{"a live socket is refused", initiator.AddRequest{NBDSocket: live}, "another server listens on it", 0, 0},
		{"a regular file is refused", initiator.AddRequest{NBDSocket: regular}, "is not a socket", 0, 0},
		{"relative path", initiator.AddRequest{NBDSocket: "x.sock"}, "not an absolute path", 0, 0},
		{"no directory", initiator.AddRequest{NBDSocket: filepath.Join(dir, "nope", "x.sock")}, "does not exist", 0, 0},
		{"bad mode", initiator.AddRequest{NBDSocket: filepath.Join(dir, "b.sock"), SocketMode: "rw"}, "not an octal permission", 0, 0},
		{"unknown user", initiator.AddRequest{NBDSocket: filepath.Join(dir, "c.sock"), SocketOwner: "no-such-user-rbd"}, "no user", 0, 0},
		{"path too long", initiator.AddRequest{NBDSocket: "/" + strings.Repeat("x", 100)}, "bytes long", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req
			req.Target, req.Port, req.Export, req.NoKernelDevice = targetAddr.Addr().String(), targetAddr.Port(), r.img, true
			d, err := r.m.Add(context.Background(), req)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("want an error with %q, got %v", tc.err, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Add: %v", err)
			}
			defer r.m.Remove(context.Background(), d.Name())
			st, err := os.Stat(req.NBDSocket)
			if err != nil || st.Mode().Perm() != tc.mode || st.Mode()&os.ModeSocket == 0 {
				t.Fatalf("socket mode %v %v, want %v", st.Mode(), err, tc.mode)
			}
			if tc.gid >= 0 && int(st.Sys().(*syscall.Stat_t).Gid) != tc.gid {
				t.Fatalf("socket gid %d, want %d", st.Sys().(*syscall.Stat_t).Gid, tc.gid)
			}
			dialNBD(t, req.NBDSocket, "") // it serves
			// the same export again, with other socket options: refused
			again := req
			again.NBDSocket = filepath.Join(dir, "other.sock")
			if _, err := r.m.Add(context.Background(), again); err == nil || !strings.Contains(err.Error(), "with other NBD socket options") {
				t.Fatalf("the same export on another socket: %v", err)
			}
			// the same again: the device there is the answer
			var me *initiator.MappedError
			if _, err := r.m.Add(context.Background(), req); !errors.As(err, &me) || me.Device != d {
				t.Fatalf("the same export with the same socket: want a *MappedError naming %s, got %v", d.Name(), err)
			}
		})
	}
	if b, _ := os.ReadFile(regular); string(b) != "keep me" {
		t.Fatal("the regular file was touched")
	}
	if _, err := r.m.Add(context.Background(), initiator.AddRequest{Target: targetAddr.Addr().String(), Port: targetAddr.Port(), Export: r.img, NoKernelDevice: true}); err == nil || !strings.Contains(err.Error(), "needs an NBD socket") {
		t.Fatalf("--no-kernel-device without a socket: %v", err)
	}
}

// tool finds an NBD client program or skips.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		pkg := map[string]string{"nbdinfo": "libnbd-bin", "nbdcopy": "libnbd-bin", "qemu-img": "qemu-utils", "qemu-io": "qemu-utils", "fio": "fio"}[name]
		t.Skipf("%s is not installed (Debian package %s; make deps installs it)", name, pkg)
	}
	return p
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, tool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestSocketTools: the real NBD clients against the socket (each skipped
// when not installed): nbdinfo's view, qemu-img convert in and out,
// qemu-io patterns, an nbdcopy round trip, fio's nbd engine with verify.
func TestSocketTools(t *testing.T) {
	const size = 16 << 20
	r := newRig(t, size)
	d, sock := r.add(t, initiator.AddRequest{})
	uri := "nbd+unix:///?socket=" + sock
	qemuURI := "nbd:unix:" + sock
	q0 := d.Session().Queues()[0]

	t.Run("nbdinfo", func(t *testing.T) {
		var info struct {
			Protocol string           `json:"protocol"`
			Exports  []map[string]any `json:"exports"`
		}
		out := runTool(t, "nbdinfo", "--json", uri)
		if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
			t.Fatalf("nbdinfo --json: %v\n%s", err, out)
		}
		e := info.Exports[0]
		for k, v := range map[string]any{
			"export-size": float64(size), "block_size_minimum": float64(512), "block_size_preferred": float64(4096),
			"block_size_maximum": float64(q0.SlotSize()), "is_read_only": false, "can_flush": true, "can_fua": true,
			"can_zero": true, "can_multi_conn": true, "description": "rbd " + r.img + " on " + targetAddr.String(),
		} {
			if e[k] != v {
				t.Errorf("nbdinfo %s = %v, want %v", k, e[k], v)
			}
		}
		if info.Protocol != "newstyle-fixed" {
			t.Errorf("protocol %q", info.Protocol)
		}
	})
	t.Run("qemu-img convert in and out", func(t *testing.T) {
		in := filepath.Join(t.TempDir(), "in.raw")
		out := filepath.Join(t.TempDir(), "out.raw")
		os.WriteFile(in, random(size), 0o644)
		runTool(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", in, qemuURI)
		runTool(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", qemuURI, out)
		a, _ := os.ReadFile(in)
		b, _ := os.ReadFile(out)
		if !bytes.Equal(a, b) || !bytes.Equal(fileAt(t, r.img, 0, size), a) {
			t.Fatal("the image read back (or the target's file) differs from the one written")
		}
	})
	t.Run("qemu-io patterns", func(t *testing.T) {
		out := runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0xab 1M 1M", "-c", "read -P 0xab 1M 1M",
			"-c", "write -z 1M 64k", "-c", "read -P 0 1M 64k", "-c", "flush", qemuURI)
		if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed") {
			t.Fatalf("qemu-io:\n%s", out)
		}
		want := bytes.Repeat([]byte{0xab}, 1<<20)
		clear(want[:64<<10])
		if !bytes.Equal(fileAt(t, r.img, 1<<20, 1<<20), want) {
			t.Fatal("the target's file does not hold qemu-io's pattern")
		}
	})
	t.Run("nbdcopy round trip", func(t *testing.T) {
		in := filepath.Join(t.TempDir(), "in.raw")
		out := filepath.Join(t.TempDir(), "out.raw")
		os.WriteFile(in, random(size), 0o644)
		runTool(t, "nbdcopy", in, uri)
		runTool(t, "nbdcopy", uri, out)
		a, _ := os.ReadFile(in)
		b, _ := os.ReadFile(out)
		if !bytes.Equal(a, b) {
			t.Fatal("nbdcopy: the copy back differs")
		}
	})
	t.Run("fio nbd engine verify", func(t *testing.T) {
		fio := tool(t, "fio")
		if out, _ := exec.Command(fio, "--enghelp").CombinedOutput(); !strings.Contains(string(out), "nbd") {
			t.Skip("this fio has no nbd engine")
		}
		out := runTool(t, "fio", "--name=v", "--ioengine=nbd", "--uri="+uri, "--rw=randwrite", "--bs=4k", "--iodepth=16",
			"--size=8m", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json")
		var res struct {
			Jobs []struct {
				Error int `json:"error"`
			} `json:"jobs"`
		}
		if i := strings.IndexByte(out, '{'); i < 0 || json.Unmarshal([]byte(out[i:]), &res) != nil || len(res.Jobs) != 1 || res.Jobs[0].Error != 0 {
			t.Fatalf("fio:\n%s", out)
		}
	})
}

// TestSocketReconnect: the target goes away under a client's I/O and comes
// back; the requests wait (the device is reconnecting), then complete, with
// the data written before.
func TestSocketReconnect(t *testing.T) {
	r := newRig(t, 8<<20)
	d, sock := r.add(t, initiator.AddRequest{})
	nc := dialNBD(t, sock, "")
	data := random(256 << 10)
	if errno, _ := nc.do(t, nbd.CmdWrite, 1<<20, uint32(len(data)), data); errno != 0 {
		t.Fatalf("write: errno %d", errno)
	}
	r.stop()
	nc.send(t, nbd.CmdRead, 7, 1<<20, uint32(len(data)), nil)
	deadline := time.Now().Add(5 * time.Second)
	for st, _ := d.State(); st != initiator.StateReconnecting; st, _ = d.State() {
		if time.Now().After(deadline) {
			t.Fatalf("device state %s with the target gone, want %s", st, initiator.StateReconnecting)
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.startTarget(t)
	h, errno, got := nc.reply(t)
	if h != 7 || errno != 0 || !bytes.Equal(got, data) {
		t.Fatalf("READ across the target's restart: handle %d errno %d, data equal %v", h, errno, bytes.Equal(got, data))
	}
	if d.Stats.Snapshot().Reconnects == 0 {
		t.Error("no reconnect counted")
	}
}
