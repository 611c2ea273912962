package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTargetKilledUnderFio: a mounted ext4 on /dev/rbdiN with fio writing
// and verifying (crc32c) files on it, while rbdt is killed (SIGKILL), or
// stopped (SIGTERM: it finishes what runs, then disconnects), and started
// again 10 s later. The queues reconnect under the same session, send again
// what was in flight, and fio finishes with zero errors; the kernel logs no
// I/O error and the filesystem stays writable.
func TestTargetKilledUnderFio(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) { targetGoneUnderFio(t, sig) })
	}
}

func targetGoneUnderFio(t *testing.T, sig syscall.Signal) {
	d := startDaemons(t, daemonOpts{exports: []string{"/dev/ram1"},
		rbdiArgs: []string{"--keepalive", "1s", "--keepalive-timeout", "3s", "--reconnect-delay", "1s"}})
	dev := d.add("/dev/ram1")
	run(t, "mkfs.ext4", "-q", "-F", dev)
	mnt := mount(t, dev)
	dmesg0 := run(t, "dmesg")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	fio := exec.CommandContext(ctx, "fio", "--name=verify", "--directory="+mnt, "--ioengine=libaio", "--direct=1",
		"--rw=randwrite", "--bsrange=4k-64k", "--iodepth=16", "--numjobs=2", "--size=24m",
		"--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--group_reporting", "--minimal")
	fioDone := make(chan struct{})
	var out []byte
	var ferr error
	go func() { out, ferr = fio.CombinedOutput(); close(fioDone) }()
	time.Sleep(3 * time.Second) // fio is writing
	select {
	case <-fioDone:
		t.Fatalf("fio ended before the target was killed (too fast for the test): %s", out)
	default:
	}
	if err := d.rbdt.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Second)
	list, _, _ := d.ctl("-l")
	if !strings.Contains(list, "reconnecting") {
		t.Errorf("rbdctl -l while the target is down does not say reconnecting:\n%s", list)
	}
	d.restartTarget()
	<-fioDone
	if ferr != nil {
		t.Fatalf("fio: %v\n%s", ferr, out)
	}
	f := strings.Split(strings.TrimSpace(string(out)), ";")
	if len(f) < 5 || f[4] != "0" {
		t.Fatalf("fio reported errors: %s", out)
	}
	if k := newKernelLines(dmesg0, run(t, "dmesg")); strings.Contains(k, "I/O error") || strings.Contains(k, "EXT4-fs error") {
		t.Fatalf("the kernel logged errors:\n%s", k)
	}
	run(t, "dd", "if=/dev/zero", "of="+filepath.Join(mnt, "after"), "bs=64k", "count=16", "oflag=direct", "status=none")
	list, _, _ = d.ctl("-l")
	if !strings.Contains(list, "connected") {
		t.Errorf("after the restart:\n%s", list)
	}
	stats, _, _ := d.ctl("-s", "-d", dev)
	t.Logf("fio verify across %s of the target and its restart: ok\n%s", sig, stats)
	run(t, "umount", mnt)
	d.remove(dev)
}

// newKernelLines is what the kernel logged between two dmesg outputs.
func newKernelLines(before, after string) string {
	if strings.HasPrefix(after, before) {
		return after[len(before):]
	}
	return after
}
