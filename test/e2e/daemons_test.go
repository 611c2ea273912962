package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"rbd/internal/backend"
)

// daemons runs the real rbdt and rbdi binaries (RBD_TEST_BIN) for a test,
// with sockets and metrics ports of their own.
type daemons struct {
	t          *testing.T
	bin, addr  string
	dir        string
	tsock      string
	isock      string
	tmetrics   string
	imetrics   string
	rbdt, rbdi *exec.Cmd
	tlog, ilog *lockedWriter // the daemons' logs (safe to read while they write)
	targs      []string      // rbdt's arguments and environment, for restartTarget
	tenv       []string
	iargs      []string // rbdi's, for restartInitiator
	ienv       []string
	exited     map[*exec.Cmd]chan struct{} // closed when the process has exited
}

func binDir(t *testing.T) string {
	d := os.Getenv("RBD_TEST_BIN")
	if d == "" {
		t.Skip("RBD_TEST_BIN not set (make e2e builds bin/ and sets it)")
	}
	for _, b := range []string{"rbdt", "rbdi", "rbdctl"} {
		if _, err := os.Stat(filepath.Join(d, b)); err != nil {
			t.Fatalf("%s: %v (run make build)", b, err)
		}
	}
	return d
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type daemonOpts struct {
	addr     string   // the target's address (default: the transport's, RBD_TEST_ADDR)
	exports  []string // rbdt --export values; none: no rbdt
	rbdiArgs []string
	noRbdi   bool
	// extra environment of each daemon (NOTIFY_SOCKET, WATCHDOG_USEC)
	rbdtEnv, rbdiEnv []string
}

func startDaemons(t *testing.T, o daemonOpts) *daemons {
	t.Helper()
	_, addr, _ := env(t)
	if o.addr != "" {
		addr = o.addr
	}
	d := &daemons{t: t, bin: binDir(t), addr: addr, dir: t.TempDir(), exited: map[*exec.Cmd]chan struct{}{}}
	d.tsock = filepath.Join(d.dir, "rbdt.sock")
	d.isock = filepath.Join(d.dir, "rbdi.sock")
	if len(o.exports) > 0 {
		d.tmetrics = freePort(t)
		args := []string{"--listen", addr, "--control", d.tsock, "--metrics-addr", d.tmetrics, "--log-level", "debug"}
		for _, e := range o.exports {
			args = append(args, "--export", e)
		}
		d.targs, d.tenv = args, o.rbdtEnv
		d.rbdt, d.tlog = d.start("rbdt", args, d.tsock, o.rbdtEnv)
	}
	if !o.noRbdi {
		d.imetrics = freePort(t)
		// a state directory of its own: what a restart adopts
		args := append([]string{"--control", d.isock, "--metrics-addr", d.imetrics, "--log-level", "debug",
			"--state-dir", filepath.Join(d.dir, "state")}, o.rbdiArgs...)
		d.iargs, d.ienv = args, o.rbdiEnv
		d.rbdi, d.ilog = d.start("rbdi", args, d.isock, o.rbdiEnv)
	}
	return d
}

// restartTarget starts rbdt again with the same arguments, after it died
// (the old process must be gone: its socket and port are taken over).
func (d *daemons) restartTarget() {
	d.t.Helper()
	d.rbdt.Process.Kill()   // if it still runs
	time.Sleep(time.Second) // its control socket and port are let go
	os.Remove(d.tsock)
	d.rbdt, d.tlog = d.start("rbdt", d.targs, d.tsock, d.tenv)
}

// restartInitiator starts rbdi again with the same arguments (its state
// directory too) once the old process has exited (it was killed or told to
// stop): the new one adopts the devices the old one left.
func (d *daemons) restartInitiator() {
	d.t.Helper()
	select {
	case <-d.exited[d.rbdi]:
	case <-time.After(60 * time.Second):
		d.t.Fatal("the old rbdi did not exit within 60 s")
	}
	os.Remove(d.isock)
	d.rbdi, d.ilog = d.start("rbdi", d.iargs, d.isock, d.ienv)
}

// waitExit waits until p has exited.
func (d *daemons) waitExit(p *exec.Cmd, within time.Duration) {
	d.t.Helper()
	select {
	case <-d.exited[p]:
	case <-time.After(within):
		d.t.Fatalf("%s did not exit within %v", p.Path, within)
	}
}

func (d *daemons) start(name string, args []string, sock string, env []string) (*exec.Cmd, *lockedWriter) {
	t := d.t
	var log bytes.Buffer
	cmd := exec.Command(filepath.Join(d.bin, name), args...)
	cmd.Env = append(os.Environ(), env...)
	lw := &lockedWriter{w: &log}
	cmd.Stdout, cmd.Stderr = lw, lw
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	exited := make(chan error, 1)
	gone := make(chan struct{})
	d.exited[cmd] = gone
	go func() { err := cmd.Wait(); close(gone); exited <- err }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("%s did not stop within 60 s of SIGTERM", name)
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("%s log:\n%s", name, lw.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			if name != "rbdt" || strings.Contains(lw.String(), "msg=listening") {
				return cmd, lw
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("%s exited at start: %v\n%s", name, err, lw.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not come up:\n%s", name, lw.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type lockedWriter struct {
	mu chan struct{}
	w  *bytes.Buffer
}

func (l *lockedWriter) lock() {
	if l.mu == nil {
		l.mu = make(chan struct{}, 1)
	}
	l.mu <- struct{}{}
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.lock()
	defer func() { <-l.mu }()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.lock()
	defer func() { <-l.mu }()
	return l.w.String()
}

// ctl runs rbdctl against these daemons.
func (d *daemons) ctl(args ...string) (stdout, stderr string, err error) {
	all := append([]string{"--socket", d.isock, "--target-socket", d.tsock}, args...)
	cmd := exec.Command(filepath.Join(d.bin, "rbdctl"), all...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// add maps an export and returns the new device's path.
func (d *daemons) add(export string, extra ...string) string {
	d.t.Helper()
	out, serr, err := d.ctl(append([]string{"-n", "-a", d.addr, "-p", "65000", "-d", export}, extra...)...)
	if err != nil {
		d.t.Fatalf("rbdctl -n -d %s: %v\n%s", export, err, serr)
	}
	dev := strings.TrimSpace(out)
	if !strings.HasPrefix(dev, "/dev/rbdi") {
		d.t.Fatalf("rbdctl -n printed %q", out)
	}
	d.t.Cleanup(func() { d.ctl("-r", "-d", dev) })
	return dev
}

func (d *daemons) remove(dev string) {
	d.t.Helper()
	if _, serr, err := d.ctl("-r", "-d", dev); err != nil {
		d.t.Fatalf("rbdctl -r -d %s: %v\n%s", dev, err, serr)
	}
}

// metrics scrapes a daemon's /metrics into "name{labels}" -> value.
func metrics(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			continue
		}
		out[l[:i]] = v
	}
	return out
}

// metric sums the series of name whose labels contain all of want
// (`key="value"` strings).
func metric(m map[string]float64, name string, want ...string) float64 {
	var sum float64
	for k, v := range m {
		if !strings.HasPrefix(k, name+"{") {
			continue
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(k, w)
		}
		if ok {
			sum += v
		}
	}
	return sum
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// hashDevice hashes n bytes of a block device or file, read with O_DIRECT.
func hashDevice(t *testing.T, path string, n int64) string {
	t.Helper()
	be, err := backend.Open(path, backend.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer be.Close()
	buf, free, err := backend.AlignedBuffer(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer free()
	h := sha256.New()
	for off := int64(0); off < n; off += int64(len(buf)) {
		l := min(int64(len(buf)), n-off)
		if err := be.ReadAt(buf[:l], off); err != nil {
			t.Fatalf("read %s at %d: %v", path, off, err)
		}
		h.Write(buf[:l])
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// sameDevices compares the first n bytes of two block devices (O_DIRECT, 1
// MiB reads, four at a time: the time of the scenario's whole-device
// comparison is the rbd device's read latency) and returns the offset of
// the first MiB that differs, or -1.
func sameDevices(t *testing.T, a, b string, n int64) int64 {
	t.Helper()
	const chunk = 1 << 20
	open := func(path string) *backend.Backend {
		be, err := backend.Open(path, backend.Options{ReadOnly: true})
		if err != nil {
			t.Fatalf("open %s: %v", path, err)
		}
		return be
	}
	ba, bb := open(a), open(b)
	defer ba.Close()
	defer bb.Close()
	var next, differs atomic.Int64
	differs.Store(-1)
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x, freeX, err := backend.AlignedBuffer(chunk)
			if err != nil {
				errs <- err
				return
			}
			defer freeX()
			y, freeY, err := backend.AlignedBuffer(chunk)
			if err != nil {
				errs <- err
				return
			}
			defer freeY()
			for {
				off := next.Add(chunk) - chunk
				if off >= n || differs.Load() >= 0 {
					return
				}
				l := min(chunk, n-off)
				if err := ba.ReadAt(x[:l], off); err != nil {
					errs <- fmt.Errorf("read %s at %d: %w", a, off, err)
					return
				}
				if err := bb.ReadAt(y[:l], off); err != nil {
					errs <- fmt.Errorf("read %s at %d: %w", b, off, err)
					return
				}
				if !bytes.Equal(x[:l], y[:l]) {
					differs.CompareAndSwap(-1, off)
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
	return differs.Load()
}

func hashFile(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func mount(t *testing.T, dev string) string {
	t.Helper()
	dir := t.TempDir()
	run(t, "mount", dev, dir)
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	return dir
}
