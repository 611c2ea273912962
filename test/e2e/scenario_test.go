package e2e

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestScenario is the seed README's scenario with the real daemons: rbdctl -n
// makes /dev/rbdiN, which takes a filesystem, files and a remount; it matches
// the target's /dev/ram0 byte for byte; it cannot be removed while mounted;
// and the data survives removing and adding the device again.
func TestScenario(t *testing.T) {
	d := startDaemons(t, daemonOpts{exports: []string{"/dev/ram0"}})
	dev := d.add("/dev/ram0")
	if !regexp.MustCompile(`^/dev/rbdi\d+$`).MatchString(dev) {
		t.Fatalf("device name %q", dev)
	}
	link, err := os.Readlink(dev)
	if err != nil || !strings.HasPrefix(link, "nbd") {
		t.Fatalf("%s: want a link to nbdX, got %q %v", dev, link, err)
	}
	run(t, "mkfs.ext4", "-q", dev)
	mnt := mount(t, dev)
	files := map[string]string{}
	for i := range 5 {
		name := filepath.Join(mnt, fmt.Sprintf("f%d", i))
		data := make([]byte, (i+1)*1<<20+i*4093)
		rand.Read(data)
		if err := os.WriteFile(name, data, 0o644); err != nil {
			t.Fatal(err)
		}
		files[name] = hashFile(t, name)
	}
	run(t, "sync")

	out, _, err := d.ctl("-l")
	if err != nil || !strings.Contains(out, dev) || !strings.Contains(out, "/dev/ram0") || !strings.Contains(out, "connected") || !strings.Contains(out, "SESSION") {
		t.Fatalf("rbdctl -l: %v\n%s", err, out)
	}
	var listed struct {
		Devices []struct {
			Path, Export, State string
			Size                uint64
		} `json:"devices"`
	}
	out, _, err = d.ctl("-l", "-o", "json")
	if err := json.Unmarshal([]byte(out), &listed); err != nil || len(listed.Devices) != 1 || listed.Devices[0].Size != 256<<20 {
		t.Fatalf("rbdctl -l -o json: %v\n%s", err, out)
	}
	if out, _, err := d.ctl("-s", "-d", dev); err != nil || !strings.Contains(out, "reqs_completed") {
		t.Fatalf("rbdctl -s: %v\n%s", err, out)
	}
	if out, _, err := d.ctl("-s", "-d", "/dev/ram0"); err != nil || !strings.Contains(out, "export /dev/ram0") {
		t.Fatalf("rbdctl -s of the target export: %v\n%s", err, out)
	}

	// removing a mounted device is refused with the reason
	_, serr, err := d.ctl("-r", "-d", dev)
	if err == nil || !strings.Contains(serr, "is in use: mounted on") {
		t.Fatalf("removing a mounted device: want a refusal, got %v\n%s", err, serr)
	}
	run(t, "umount", mnt)

	// the device and the target's RAM disk hold the same bytes
	if off := sameDevices(t, dev, "/dev/ram0", 256<<20); off >= 0 {
		t.Fatalf("%s and the target's /dev/ram0 differ (in the MiB at %d)", dev, off)
	}
	d.remove(dev)
	if _, err := os.Lstat(dev); !os.IsNotExist(err) {
		t.Fatalf("%s still exists after removal: %v", dev, err)
	}
	// map it again: the files are there
	dev2 := d.add("/dev/ram0")
	mnt2 := mount(t, dev2)
	for name, sum := range files {
		if got := hashFile(t, filepath.Join(mnt2, filepath.Base(name))); got != sum {
			t.Fatalf("%s after remapping: checksum differs", filepath.Base(name))
		}
	}
}

// TestFioVerify: random writes at queue depth 32 on several jobs, verified
// with crc32c, through the kernel NBD device and RDMA.
func TestFioVerify(t *testing.T) {
	d := startDaemons(t, daemonOpts{exports: []string{"/dev/ram1"}})
	dev := d.add("/dev/ram1")
	out := run(t, "fio", "--name=verify", "--filename="+dev, "--ioengine=libaio", "--direct=1",
		"--rw=randwrite", "--bsrange=4k-128k", "--iodepth=32", "--numjobs=3", "--size=8m", "--offset_increment=32m",
		"--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--group_reporting", "--minimal")
	// terse output: field 5 is the read error count... use the status line
	if !strings.Contains(out, ";") {
		t.Fatalf("fio output: %s", out)
	}
	f := strings.Split(strings.TrimSpace(out), ";")
	if len(f) < 5 || f[4] != "0" {
		t.Fatalf("fio reported errors: %s", out)
	}
	t.Logf("fio verify: ok (%d fields)", len(f))
	d.remove(dev)
}

// TestTwoDevices maps two exports at once; each device reaches its own backend.
func TestTwoDevices(t *testing.T) {
	d := startDaemons(t, daemonOpts{exports: []string{"/dev/ram0", "/dev/ram1"}})
	a, b := d.add("/dev/ram0"), d.add("/dev/ram1")
	if a == b {
		t.Fatalf("both devices are %s", a)
	}
	for _, tc := range []struct{ dev, backend string }{{a, "/dev/ram0"}, {b, "/dev/ram1"}} {
		img := filepath.Join(t.TempDir(), "img")
		data := make([]byte, 4<<20)
		rand.Read(data)
		os.WriteFile(img, data, 0o644)
		run(t, "dd", "if="+img, "of="+tc.dev, "bs=1M", "oflag=direct", "status=none")
		if hashDevice(t, tc.backend, 4<<20) != hashFile(t, img) {
			t.Fatalf("%s: %s does not hold what was written", tc.dev, tc.backend)
		}
	}
	out, _, _ := d.ctl("-l")
	if !strings.Contains(out, a) || !strings.Contains(out, b) {
		t.Fatalf("rbdctl -l misses a device:\n%s", out)
	}
}

// TestDiscardZeroesFlushFUA exports an image file on ext4 (which can punch
// holes and zero ranges) and checks that TRIM, WRITE_ZEROES, FLUSH and FUA
// writes reach the target's backend.
func TestDiscardZeroesFlushFUA(t *testing.T) {
	env(t)
	fsdir := t.TempDir()
	run(t, "mkfs.ext4", "-q", "-F", "/dev/ram3")
	run(t, "mount", "/dev/ram3", fsdir)
	t.Cleanup(func() { exec.Command("umount", fsdir).Run() })
	img := filepath.Join(fsdir, "disk.img")
	run(t, "fallocate", "-l", "64M", img)
	d := startDaemons(t, daemonOpts{exports: []string{img}})
	dev := d.add(img)
	run(t, "dd", "if=/dev/urandom", "of="+dev, "bs=1M", "count=64", "oflag=direct", "status=none")
	before := metrics(t, d.tmetrics)
	var st syscall.Stat_t
	syscall.Stat(img, &st)
	blocks := st.Blocks

	run(t, "blkdiscard", "-o", "1048576", "-l", "4194304", dev)
	if hashDevice(t, img, 64<<20) == "" {
		t.Fatal("unreadable")
	}
	zero := make([]byte, 4<<20)
	if !isZero(t, img, 1<<20, len(zero)) {
		t.Fatal("after blkdiscard the range is not zero in the image")
	}
	syscall.Stat(img, &st)
	if st.Blocks >= blocks {
		t.Fatalf("blkdiscard freed nothing in the image (%d blocks before, %d after)", blocks, st.Blocks)
	}
	run(t, "blkdiscard", "-z", "-o", "16777216", "-l", "4194304", dev)
	if !isZero(t, img, 16<<20, 4<<20) {
		t.Fatal("after blkdiscard -z the range is not zero in the image")
	}
	// The kernel sends NBD_CMD_WRITE_ZEROES only where its nbd driver has it
	// (write_zeroes_max_bytes > 0); otherwise BLKZEROOUT writes zero pages.
	wz, _ := os.ReadFile("/sys/block/" + nbdName(t, dev) + "/queue/write_zeroes_max_bytes")
	kernelWZ := strings.TrimSpace(string(wz)) != "0"
	if !kernelWZ {
		t.Logf("this kernel's nbd driver does not send WRITE_ZEROES (write_zeroes_max_bytes 0): BLKZEROOUT became writes of zeroes")
	}
	// FUA: an O_DSYNC direct write to a device that supports FUA
	run(t, "dd", "if=/dev/urandom", "of="+dev, "bs=4k", "count=8", "seek=8192", "oflag=direct,dsync", "status=none")
	// FLUSH: fsync of the device
	run(t, "dd", "if=/dev/zero", "of="+dev, "bs=4k", "count=1", "seek=9000", "conv=fsync", "status=none")
	after := metrics(t, d.tmetrics)
	exp := `session=""`
	for _, c := range []struct {
		name string
		lbl  []string
	}{
		{"rbd_ops_total", []string{`op="trim"`, exp}},
		{"rbd_ops_total", []string{`op="flush"`, exp}},
		{"rbd_fua_writes_total", []string{exp}},
	} {
		if metric(after, c.name, c.lbl...) <= metric(before, c.name, c.lbl...) {
			t.Errorf("target %s%v did not move", c.name, c.lbl)
		}
	}
	if kernelWZ && metric(after, "rbd_ops_total", `op="write_zeroes"`, exp) <= metric(before, "rbd_ops_total", `op="write_zeroes"`, exp) {
		t.Errorf("the kernel can send WRITE_ZEROES but none reached the target")
	}
	t.Logf("target: trim %v, write_zeroes %v, flush %v, fua %v", metric(after, "rbd_ops_total", `op="trim"`, exp)-metric(before, "rbd_ops_total", `op="trim"`, exp),
		metric(after, "rbd_ops_total", `op="write_zeroes"`, exp)-metric(before, "rbd_ops_total", `op="write_zeroes"`, exp),
		metric(after, "rbd_ops_total", `op="flush"`, exp)-metric(before, "rbd_ops_total", `op="flush"`, exp),
		metric(after, "rbd_fua_writes_total", exp)-metric(before, "rbd_fua_writes_total", exp))
}

func nbdName(t *testing.T, dev string) string {
	l, err := os.Readlink(dev)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Base(l)
}

// settled scrapes until two scrapes a second apart agree on the ops counters
// (the kernel reads the partition table of a new device in the background).
func settled(t *testing.T, addr, name string) map[string]float64 {
	prev := metrics(t, addr)
	for range 30 {
		time.Sleep(time.Second)
		cur := metrics(t, addr)
		if metric(cur, name) == metric(prev, name) {
			return cur
		}
		prev = cur
	}
	return prev
}

func isZero(t *testing.T, path string, off int64, n int) bool {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// TestErrorMessages provokes every failure a user can meet when adding a
// device and checks that the message names the cause and the fix.
func TestErrorMessages(t *testing.T) {
	d := startDaemons(t, daemonOpts{exports: []string{"/dev/ram0"}})
	// an interface with an address but no RDMA device
	run(t, "ip", "link", "add", "rbde2e0", "type", "dummy")
	t.Cleanup(func() { exec.Command("ip", "link", "del", "rbde2e0").Run() })
	run(t, "ip", "addr", "add", "10.81.0.1/24", "dev", "rbde2e0")
	run(t, "ip", "link", "set", "rbde2e0", "up")

	check := func(name string, want []string, args ...string) {
		t.Helper()
		_, serr, err := d.ctl(args...)
		if err == nil {
			t.Errorf("%s: rbdctl succeeded", name)
			return
		}
		for _, w := range want {
			if !strings.Contains(serr, w) {
				t.Errorf("%s: want %q in the message, got:\n%s", name, w, serr)
				return
			}
		}
		t.Logf("%s: %s", name, strings.TrimSpace(serr))
	}
	add := func(addr, port, export string) []string {
		return []string{"-n", "-a", addr, "-p", port, "-d", export}
	}
	out, err := exec.Command(filepath.Join(d.bin, "rbdctl"), "--socket", filepath.Join(d.dir, "none.sock"),
		"-n", "-a", d.addr, "-d", "/dev/ram0").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "rbdi is not running") || !strings.Contains(string(out), "systemctl start rbdi") {
		t.Errorf("daemon not running: %v\n%s", err, out)
	} else {
		t.Logf("daemon not running: %s", strings.TrimSpace(string(out)))
	}
	check("name does not resolve", []string{"does not resolve"}, add("no-such-target.invalid", "65000", "/dev/ram0")...)
	check("no route", []string{"no route to 198.51.100.7"}, add("198.51.100.7", "65000", "/dev/ram0")...)
	check("no RDMA device on the route", []string{"leaves by rbde2e0, which has no RDMA device", "rdma link add"}, add("10.81.0.2", "65000", "/dev/ram0")...)
	check("target not listening", []string{"is not listening", "start rbdt"}, add(d.addr, "1", "/dev/ram0")...)
	check("export not offered", []string{"export /dev/ram3 is not offered", "rbdctl -l on the target"}, add(d.addr, "65000", "/dev/ram3")...)
	dev := d.add("/dev/ram0")
	// this host again: rbdi answers with the device it has (exit 0), or,
	// with --no-reuse, names it
	if out, serr, err := d.ctl(add(d.addr, "65000", "/dev/ram0")...); err != nil || strings.TrimSpace(out) != dev || !strings.Contains(serr, "mapped already, as "+dev) {
		t.Errorf("export mapped already: want %s, got %q %v\n%s", dev, out, err, serr)
	}
	check("export mapped already (--no-reuse)", []string{"mapped already as " + dev, "rbdctl -r -d " + dev}, append(add(d.addr, "65000", "/dev/ram0"), "--no-reuse")...)
	// another initiator (a second rbdi) finds the export busy
	other := startDaemons(t, daemonOpts{})
	if _, serr, err := other.ctl(add(d.addr, "65000", "/dev/ram0")...); err == nil || !strings.Contains(serr, "is busy") || !strings.Contains(serr, "in use read-write by another initiator") {
		t.Errorf("export busy: want the busy message, got %v\n%s", err, serr)
	}
	d.remove(dev)

	// the nbd module missing: unload it (no nbd device is in use now)
	if out, err := exec.Command("rmmod", "nbd").CombinedOutput(); err != nil {
		t.Logf("cannot unload nbd (%v: %s): skipping that case", err, out)
		return
	}
	t.Cleanup(func() { exec.Command("modprobe", "nbd").Run() })
	check("nbd module missing", []string{"nbd module is not loaded", "modprobe nbd"}, add(d.addr, "65000", "/dev/ram0")...)
	run(t, "modprobe", "nbd")
	time.Sleep(200 * time.Millisecond)
}

// TestMetricsMove runs fio jobs of known size and count and checks that both
// daemons' Prometheus counters move by exactly those operations and bytes,
// and that a removed device's series are gone.
func TestMetricsMove(t *testing.T) {
	d := startDaemons(t, daemonOpts{exports: []string{"/dev/ram1"}})
	dev := d.add("/dev/ram1")
	name := filepath.Base(dev)
	dl := `device="` + name + `"`
	exp := `session=""`
	m0i, m0t := settled(t, d.imetrics, "rbd_ops_total"), settled(t, d.tmetrics, "rbd_ops_total")
	run(t, "fio", "--name=w", "--filename="+dev, "--ioengine=psync", "--direct=1", "--rw=randwrite", "--bs=64k", "--size=16m", "--randrepeat=0", "--norandommap=0", "--minimal")
	run(t, "fio", "--name=r", "--filename="+dev, "--ioengine=psync", "--direct=1", "--rw=read", "--bs=32k", "--size=4m", "--minimal")
	m1i, m1t := metrics(t, d.imetrics), metrics(t, d.tmetrics)
	for _, c := range []struct {
		who        string
		m0, m1     map[string]float64
		lbl        string
		op         string
		ops, bytes float64
	}{
		{"initiator", m0i, m1i, dl, "write", 256, 16 << 20},
		{"initiator", m0i, m1i, dl, "read", 128, 4 << 20},
		{"target", m0t, m1t, exp, "write", 256, 16 << 20},
		{"target", m0t, m1t, exp, "read", 128, 4 << 20},
	} {
		op := `op="` + c.op + `"`
		ops := metric(c.m1, "rbd_ops_total", c.lbl, op) - metric(c.m0, "rbd_ops_total", c.lbl, op)
		by := metric(c.m1, "rbd_bytes_total", c.lbl, op) - metric(c.m0, "rbd_bytes_total", c.lbl, op)
		if ops != c.ops || by != c.bytes {
			t.Errorf("%s %s: want %v ops and %v bytes, got %v and %v", c.who, c.op, c.ops, c.bytes, ops, by)
		}
	}
	if metric(m1i, "rbd_device_info", dl) != 1 || metric(m1i, "rbd_device_size_bytes", dl) != 256<<20 {
		t.Errorf("device info/size series missing")
	}
	d.remove(dev)
	for k := range metrics(t, d.imetrics) {
		if strings.Contains(k, dl) {
			t.Fatalf("series of the removed device remain: %s", k)
		}
	}
}

// TestPersistentDevices starts rbdi with a configuration file listing
// devices: they come up at start.
func TestPersistentDevices(t *testing.T) {
	_, addr, _ := env(t)
	cfg := filepath.Join(t.TempDir(), "rbdi.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("queues = 2\n\n[[device]]\ntarget = %q\nexport = \"/dev/ram1\"\n\n[[device]]\ntarget = %q\nport = 65000\nexport = \"/dev/ram2\"\nread_only = true\n", addr, addr)), 0o644)
	d := startDaemons(t, daemonOpts{exports: []string{"/dev/ram1", "/dev/ram2,ro"}, rbdiArgs: []string{"--config", cfg}})
	var listed struct {
		Devices []struct {
			Path, Export, State string
			ReadOnly            bool `json:"read_only"`
			Queues              int
		} `json:"devices"`
	}
	// rbdi maps them after its control socket is up, before it says READY
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, _, err := d.ctl("-l", "-o", "json")
		if err == nil && json.Unmarshal([]byte(out), &listed) == nil && len(listed.Devices) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("persistent devices: %v\n%s", err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	for i, want := range []string{"/dev/ram1", "/dev/ram2"} {
		dv := listed.Devices[i]
		if dv.Export != want || dv.State != "connected" || dv.Queues != 2 || dv.ReadOnly != (i == 1) {
			t.Errorf("device %d: %+v", i, dv)
		}
		t.Cleanup(func() { d.ctl("-r", "-d", dv.Path) })
	}
}

// TestLargeRequests raises max_sectors_kb far past the slot size, so that the
// kernel sends requests rbdi must split: a few slots' worth (replied from the
// slots in pieces) and more than half the queue's slots (assembled in memory).
func TestLargeRequests(t *testing.T) {
	d := startDaemons(t, daemonOpts{exports: []string{"/dev/ram1"}, rbdiArgs: []string{"--queue-depth", "8", "--max-io", "65536"}})
	dev := d.add("/dev/ram1")
	q := "/sys/block/" + nbdName(t, dev) + "/queue/max_sectors_kb"
	if err := os.WriteFile(q, []byte("4096"), 0o644); err != nil {
		t.Fatalf("raise max_sectors_kb: %v", err)
	}
	got, _ := os.ReadFile(q)
	t.Logf("max_sectors_kb %s, slot 64 KiB, 7 data slots", strings.TrimSpace(string(got)))
	for _, bs := range []int{192 << 10, 2 << 20} { // 3 slots; 32 slots
		n := bs * (8 << 20 / bs)
		data := make([]byte, n)
		rand.Read(data)
		src := filepath.Join(t.TempDir(), "src")
		os.WriteFile(src, data, 0o644)
		run(t, "dd", "if="+src, "of="+dev, fmt.Sprintf("bs=%d", bs), "oflag=direct", "status=none")
		if hashDevice(t, "/dev/ram1", int64(n)) != hashFile(t, src) {
			t.Fatalf("bs=%d: /dev/ram1 does not hold what was written", bs)
		}
		back := filepath.Join(t.TempDir(), "back")
		run(t, "dd", "if="+dev, "of="+back, fmt.Sprintf("bs=%d", bs), fmt.Sprintf("count=%d", n/bs), "iflag=direct", "status=none")
		if hashFile(t, back) != hashFile(t, src) {
			t.Fatalf("bs=%d: read back differs", bs)
		}
	}
}

// TestTargetHangs stops rbdt (SIGSTOP): its connections stay up in the
// kernel, but nothing answers. The initiator's keepalive declares them dead
// and the queues try to reconnect (rbdctl -l says so); when no target answers
// within ctrl-loss-timeout, I/O fails instead of hanging, the device says
// why, and it can be removed.
func TestTargetHangs(t *testing.T) {
	d := startDaemons(t, daemonOpts{exports: []string{"/dev/ram1"},
		rbdiArgs: []string{"--keepalive", "1s", "--keepalive-timeout", "3s", "--reconnect-delay", "1s", "--ctrl-loss-timeout", "10s"}})
	dev := d.add("/dev/ram1")
	run(t, "dd", "if=/dev/zero", "of="+dev, "bs=4k", "count=16", "oflag=direct", "status=none")
	if err := d.rbdt.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer d.rbdt.Process.Signal(syscall.SIGCONT)
	t0 := time.Now()
	type res struct {
		out []byte
		err error
	}
	done := make(chan res, 1)
	go func() {
		out, err := exec.Command("dd", "if="+dev, "of=/dev/null", "bs=4k", "count=1", "skip=100", "iflag=direct", "status=none").CombinedOutput()
		done <- res{out, err}
	}()
	time.Sleep(7 * time.Second) // keepalive (4 s) declared the connection dead: reconnecting
	if list, _, _ := d.ctl("-l"); !strings.Contains(list, "reconnecting") {
		t.Errorf("rbdctl -l while the target hangs does not say reconnecting:\n%s", list)
	}
	r := <-done
	took := time.Since(t0)
	if r.err == nil {
		t.Fatalf("read from a device whose target hangs succeeded")
	}
	t.Logf("read failed after %v: %s", took.Round(100*time.Millisecond), strings.TrimSpace(string(r.out)))
	if took > 60*time.Second {
		t.Fatalf("the failure took %v: keepalive and ctrl-loss-timeout did not work", took)
	}
	list, _, _ := d.ctl("-l")
	if !strings.Contains(list, "failed") || !strings.Contains(list, "ctrl-loss-timeout") {
		t.Fatalf("rbdctl -l does not show the failure:\n%s", list)
	}
	// the failed device can still be removed, with its target still hung
	d.remove(dev)
	d.rbdt.Process.Signal(syscall.SIGCONT)
}

// TestSystemdNotify runs both daemons as a Type=notify unit with a watchdog
// would: READY=1 once they serve, WATCHDOG=1 pings while healthy, STATUS=
// as a device (and its session) comes and goes, STOPPING=1 at the end.
func TestSystemdNotify(t *testing.T) {
	env(t)
	listen := func(name string) (string, <-chan string) {
		path := filepath.Join(t.TempDir(), name)
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		ch := make(chan string, 64)
		go func() {
			b := make([]byte, 4096)
			for {
				n, err := c.Read(b)
				if err != nil {
					return
				}
				ch <- string(b[:n])
			}
		}()
		return path, ch
	}
	tpath, tch := listen("rbdt.notify")
	ipath, ich := listen("rbdi.notify")
	wd := "WATCHDOG_USEC=1000000"
	d := startDaemons(t, daemonOpts{exports: []string{"/dev/ram1"},
		rbdtEnv: []string{"NOTIFY_SOCKET=" + tpath, wd}, rbdiEnv: []string{"NOTIFY_SOCKET=" + ipath, wd}})
	expect := func(who string, ch <-chan string, want string) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case m := <-ch:
				if strings.Contains(m, want) {
					t.Logf("%s: %q", who, m)
					return
				}
			case <-deadline:
				t.Fatalf("%s sent no %s", who, want)
			}
		}
	}
	expect("rbdt", tch, "READY=1")
	expect("rbdi", ich, "READY=1")
	expect("rbdt", tch, "WATCHDOG=1")
	expect("rbdi", ich, "WATCHDOG=1")
	// STATUS= follows the devices and the sessions
	dev := d.add("/dev/ram1")
	expect("rbdi", ich, "STATUS=1 device: 1 connected")
	expect("rbdt", tch, "STATUS=1 session on 1 export")
	d.remove(dev)
	expect("rbdi", ich, "STATUS=no devices")
	expect("rbdt", tch, "STATUS=no sessions, 1 export")
	d.rbdi.Process.Signal(syscall.SIGTERM)
	d.rbdt.Process.Signal(syscall.SIGTERM)
	expect("rbdi", ich, "STOPPING=1")
	expect("rbdt", tch, "STOPPING=1")
}
