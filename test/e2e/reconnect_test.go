package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
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
		t.Run(sig.String(), func(t *testing.T) {
			if tr, _, _ := env(t); tr == "siw" && sig == syscall.SIGTERM {
				// the suite's time budget: rbdt's graceful stop is above the
				// transport, and SIGKILL covers the reconnect over soft-iWARP
				t.Skip("over soft-iWARP the SIGKILL case covers the reconnect")
			}
			targetGoneUnderFio(t, sig)
		})
	}
}

func targetGoneUnderFio(t *testing.T, sig syscall.Signal) {
	d := startDaemons(t, daemonOpts{exports: []string{"/dev/ram1"},
		rbdiArgs: []string{"--keepalive", "1s", "--keepalive-timeout", "3s", "--reconnect-delay", "1s"}})
	fioAcross(t, d, sig.String()+" of the target and its restart", "reconnecting", func() {
		if err := d.rbdt.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Second)
	}, d.restartTarget)
}

// TestLinkOutageUnderFio: the same fio verify on ext4 while the link
// between initiator and target drops every packet, both ways, for 10 s
// (tc netem loss 100 % on both ends of the guest's veth wire, rxe1 on veth0
// for the target, rxe2 on veth1 for the initiator). The queues' keepalive
// (1 s, 3 s timeout) or the RC retries end the connections, reconnect
// attempts fail until the link is back, then the queues reconnect, send
// again what was in flight, and fio finishes with zero errors.
func TestLinkOutageUnderFio(t *testing.T) {
	d := startOnWire(t)
	cut := func(on bool) {
		for _, ifc := range []string{"veth0", "veth1"} {
			if on {
				run(t, "tc", "qdisc", "replace", "dev", ifc, "root", "netem", "loss", "100%")
			} else {
				exec.Command("tc", "qdisc", "del", "dev", ifc, "root").Run()
			}
		}
	}
	t.Cleanup(func() { cut(false) })
	fioAcross(t, d, "a 10 s link outage", "reconnecting", func() {
		cut(true)
		time.Sleep(10 * time.Second)
	}, func() { cut(false) })
}

// startOnWire starts the daemons on the guest's veth wire (rbdt on rxe1,
// 10.78.0.1; rbdi reaches it through rxe2), with a 1 s keepalive, a 3 s
// keepalive timeout and a 1 s reconnect delay, and rbdi's extra flags; it
// skips where there is no wire (soft-iWARP, or a guest without it).
func startOnWire(t *testing.T, rbdiArgs ...string) *daemons {
	t.Helper()
	if tr, _, _ := env(t); tr != "rxe" {
		t.Skip("the guest's veth wire carries soft-RoCE only")
	}
	for _, dev := range []string{"rxe1", "rxe2"} {
		if _, err := os.Stat("/sys/class/infiniband/" + dev); err != nil {
			t.Skipf("no %s on the veth wire (test/vm/guest-setup.sh makes it): %v", dev, err)
		}
	}
	return startDaemons(t, daemonOpts{addr: "10.78.0.1", exports: []string{"/dev/ram1"},
		rbdiArgs: append([]string{"--keepalive", "1s", "--keepalive-timeout", "3s", "--reconnect-delay", "1s"}, rbdiArgs...)})
}

// fioAcross runs fio with crc32c verification on a fresh ext4 on a device
// of d, calls disrupt 3 s into the run, checks that rbdctl -l then says
// during (unless ""), calls restore, and requires fio to finish with zero
// errors, the kernel to have logged no I/O or ext4 error, and the
// filesystem to be writable after, on the same /dev/rbdiN.
func fioAcross(t *testing.T, d *daemons, what, during string, disrupt, restore func()) (stats string) {
	dev := d.add("/dev/ram1")
	run(t, "mkfs.ext4", "-q", "-F", dev)
	mnt := mount(t, dev)
	dmesg0 := run(t, "dmesg")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	fio := exec.CommandContext(ctx, "fio", "--name=verify", "--directory="+mnt, "--ioengine=libaio", "--direct=1",
		"--rw=randwrite", "--bsrange=4k-64k", "--iodepth=16", "--numjobs=2", "--size=12m",
		"--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--group_reporting", "--minimal")
	fioDone := make(chan struct{})
	var out []byte
	var ferr error
	go func() { out, ferr = fio.CombinedOutput(); close(fioDone) }()
	time.Sleep(3 * time.Second) // fio is writing
	select {
	case <-fioDone:
		t.Fatalf("fio ended before the disruption (too fast for the test): %s", out)
	default:
	}
	disrupt()
	if during != "" {
		if list, _, _ := d.ctl("-l"); !strings.Contains(list, during) {
			t.Errorf("rbdctl -l during %s does not say %s:\n%s", what, during, list)
		}
	}
	restore()
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
	if list, _, _ := d.ctl("-l"); !strings.Contains(list, "connected") || !strings.Contains(list, dev) {
		t.Errorf("after %s, rbdctl -l does not list %s connected:\n%s", what, dev, list)
	}
	stats, _, _ = d.ctl("-s", "-d", dev)
	t.Logf("fio verify across %s: ok\n%s", what, stats)
	run(t, "umount", mnt)
	d.remove(dev)
	return stats
}

// newKernelLines is what the kernel logged between two dmesg outputs.
func newKernelLines(before, after string) string {
	if strings.HasPrefix(after, before) {
		return after[len(before):]
	}
	return after
}

// TestInitiatorRestartUnderFio: the same fio verify on ext4 while rbdi is
// killed (SIGKILL) or stopped (SIGTERM: it answers what it read, for up to
// 5 s, and leaves the device) and started again 3 s later. The new rbdi
// adopts the kernel device from its state directory (same /dev/rbdiN, same
// nbd device, same session) and hands the kernel new sockets; the requests
// the old one never answered come back when their kernel timeout (10 s
// here) runs out. fio finishes with zero errors.
func TestInitiatorRestartUnderFio(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			if tr, _, _ := env(t); tr == "siw" && sig == syscall.SIGTERM {
				// the suite's time budget: adoption is above the transport,
				// and SIGKILL covers it over soft-iWARP
				t.Skip("over soft-iWARP the SIGKILL case covers the adoption")
			}
			d := startDaemons(t, daemonOpts{exports: []string{"/dev/ram1"}, rbdiArgs: []string{"--timeout", "10s"}})
			fioAcross(t, d, sig.String()+" of rbdi and its restart", "", func() {
				if err := d.rbdi.Process.Signal(sig); err != nil {
					t.Fatal(err)
				}
				d.waitExit(d.rbdi, 30*time.Second)
				time.Sleep(3 * time.Second)
			}, func() {
				d.restartInitiator()
				deadline := time.Now().Add(60 * time.Second)
				for !strings.Contains(d.ilog.String(), "device adopted") {
					if time.Now().After(deadline) {
						t.Fatalf("the restarted rbdi adopted no device:\n%s", d.ilog.String())
					}
					time.Sleep(100 * time.Millisecond)
				}
			})
		})
	}
}

// TestKernelTimeoutUnderOutage: with a kernel per-request timeout (5 s)
// shorter than the target's absence (15 s), the kernel gives up the sockets
// under requests while their queue reconnects and sends those requests
// again; rbdi hands it new sockets at once and orders each resent write
// after the copy it holds. fio finishes with zero errors, and rbdi counted
// replaced sockets.
func TestKernelTimeoutUnderOutage(t *testing.T) {
	if tr, _, _ := env(t); tr == "siw" {
		t.Skip("the kernel's resends are above the transport: soft-RoCE covers them (the suite's time budget)")
	}
	d := startDaemons(t, daemonOpts{exports: []string{"/dev/ram1"},
		rbdiArgs: []string{"--timeout", "5s", "--keepalive", "1s", "--keepalive-timeout", "3s", "--reconnect-delay", "1s"}})
	stats := fioAcross(t, d, "a 15 s absence of the target with a 5 s kernel timeout", "reconnecting", func() {
		if err := d.rbdt.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		time.Sleep(15 * time.Second)
	}, d.restartTarget)
	if !strings.Contains(d.ilog.String(), "the kernel dropped an NBD socket") {
		t.Errorf("the kernel dropped no socket during the outage (the test did not test what it says):\n%s", d.ilog.String())
	}
	// the kernel's resends met the copies rbdi held (waiting for the
	// reconnect): each was withdrawn first
	if !regexp.MustCompile(`(?m)^kernel_resent\s+[1-9]`).MatchString(stats) {
		t.Errorf("no resent write met its first copy (kernel_resent 0): the guard did not see the kernel's resends:\n%s", stats)
	}
}

// TestDeadQueueUnderFio: the same fio verify on ext4 on a two-queue device
// while one queue's connection, and only that one, loses every packet: a tc
// u32 filter on both ends of the veth wire drops the RoCE v2 packets whose
// destination queue pair (BTH) is one of rbdt's, so its keepalive times out
// and the queue reconnects (to a new queue pair, which the filter lets
// through) and sends again what it had in flight; the other queue is not
// disturbed (exactly one reconnect is counted). The kernel sees no error on
// either socket and fio finishes with zero errors.
func TestDeadQueueUnderFio(t *testing.T) {
	d := startOnWire(t, "--queues", "2")
	unfilter := func() {
		for _, ifc := range []string{"veth0", "veth1"} {
			exec.Command("tc", "qdisc", "del", "dev", ifc, "root").Run()
		}
	}
	t.Cleanup(unfilter)
	stats := fioAcross(t, d, "the loss of one queue's connection", "", func() {
		qp := targetQP(t, "rxe1")
		// veth1 carries the initiator's packets to rbdt's queue pair, veth0
		// rbdt's to the initiator's; BTH's destination QP is the low 24 bits
		// of the 32-bit word at byte 32 (20 bytes of IPv4, 8 of UDP, 4 of BTH)
		for _, f := range []struct{ ifc, qpn string }{{"veth1", qp.lqpn}, {"veth0", qp.rqpn}} {
			n, err := strconv.ParseUint(f.qpn, 10, 24)
			if err != nil {
				t.Fatalf("queue pair number %q: %v", f.qpn, err)
			}
			run(t, "tc", "qdisc", "replace", "dev", f.ifc, "root", "handle", "1:", "prio")
			run(t, "tc", "filter", "add", "dev", f.ifc, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
				"match", "ip", "protocol", "17", "0xff", "match", "ip", "dport", "4791", "0xffff",
				"match", "u32", fmt.Sprintf("0x%08x", n), "0x00ffffff", "at", "32", "action", "drop")
		}
		t.Logf("dropping the packets of rbdt's queue pair %s and its peer %s", qp.lqpn, qp.rqpn)
		deadline := time.Now().Add(20 * time.Second)
		for {
			if list, _, _ := d.ctl("-l"); strings.Contains(list, "reconnecting") {
				break
			}
			if time.Now().After(deadline) {
				list, _, _ := d.ctl("-l")
				t.Fatalf("20 s after its packets were dropped, no queue reconnects:\n%s", list)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}, func() {}) // the filter stays: the new queue pair has a new number
	if !regexp.MustCompile(`(?m)^reconnects\s+1$`).MatchString(stats) {
		t.Errorf("want exactly one reconnect (the queue whose packets were dropped):\n%s", stats)
	}
}

// rdmaQP is a queue pair as `rdma -j resource show qp` lists it.
type rdmaQP struct {
	ifname, lqpn, rqpn, comm, state string
}

// targetQP is one of rbdt's connected RC queue pairs on device ifname.
func targetQP(t *testing.T, ifname string) rdmaQP {
	t.Helper()
	var qps []map[string]any
	if err := json.Unmarshal([]byte(run(t, "rdma", "-j", "resource", "show", "qp")), &qps); err != nil {
		t.Fatalf("rdma -j resource show qp: %v", err)
	}
	for _, m := range qps {
		s := func(k string) string {
			switch v := m[k].(type) {
			case string:
				return v
			case float64:
				return strconv.FormatFloat(v, 'f', -1, 64)
			}
			return ""
		}
		qp := rdmaQP{ifname: s("ifname"), lqpn: s("lqpn"), rqpn: s("rqpn"), comm: s("comm"), state: s("state")}
		if qp.ifname == ifname && qp.comm == "rbdt" && qp.state == "RTS" && s("type") == "RC" && qp.rqpn != "" {
			return qp
		}
	}
	t.Fatalf("no connected queue pair of rbdt on %s:\n%s", ifname, run(t, "rdma", "resource", "show", "qp"))
	return rdmaQP{}
}
