package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/genetlink"

	"rbd/internal/verbs"
)

// env returns the guest's transport settings or skips the test.
func env(t *testing.T) (transport, addr, dev string) {
	t.Helper()
	transport, addr, dev = os.Getenv("RBD_TEST_TRANSPORT"), os.Getenv("RBD_TEST_ADDR"), os.Getenv("RBD_TEST_RDMA_DEV")
	if transport == "" || addr == "" || dev == "" {
		t.Skip("not in the e2e guest (RBD_TEST_TRANSPORT/ADDR/RDMA_DEV unset): run make e2e")
	}
	return
}

// TestGround proves what everything else stands on: the RDMA device of this
// run's transport, libibverbs from cgo, rdma_cm (rping), the kernel NBD
// driver's netlink family and the RAM disk the seed's scenario exports.
func TestGround(t *testing.T) {
	transport, addr, dev := env(t)
	t.Logf("transport %s: device %s, address %s", transport, dev, addr)

	t.Run("sysfs device", func(t *testing.T) {
		if _, err := os.Stat("/sys/class/infiniband/" + dev); err != nil {
			t.Fatalf("%s missing from /sys/class/infiniband: %v", dev, err)
		}
	})
	t.Run("libibverbs", func(t *testing.T) {
		ctx, err := verbs.OpenDevice(dev)
		if err != nil {
			t.Fatalf("open %s through libibverbs: %v", dev, err)
		}
		defer ctx.Close()
		info, err := ctx.Info()
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]verbs.Transport{"rxe": verbs.TransportIB, "siw": verbs.TransportIWARP}[transport]
		if info.Transport != want {
			t.Fatalf("%s transport: want %s, got %s", dev, want, info.Transport)
		}
		t.Logf("%s: %s, port 1 %s, MTU %s", dev, info.Transport, info.Ports[0].State, info.Ports[0].ActiveMTU)
	})
	t.Run("rping", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		srv := exec.CommandContext(ctx, "rping", "-s", "-a", addr, "-p", "7171", "-C", "5")
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		out, err := exec.CommandContext(ctx, "rping", "-c", "-a", addr, "-p", "7171", "-C", "5", "-v").CombinedOutput()
		serr := srv.Wait()
		if err != nil || serr != nil {
			t.Fatalf("rping: client %v, server %v\n%s", err, serr, out)
		}
		if n := strings.Count(string(out), "ping data"); n != 5 {
			t.Fatalf("rping: want 5 pings, got %d\n%s", n, out)
		}
	})
	t.Run("nbd netlink", func(t *testing.T) {
		c, err := genetlink.Dial(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		f, err := c.GetFamily("nbd")
		if errors.Is(err, os.ErrNotExist) {
			t.Fatal("the nbd generic-netlink family is missing (nbd module not loaded)")
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("nbd family id %d version %d, groups %v", f.ID, f.Version, f.Groups)
	})
	t.Run("ram disk", func(t *testing.T) {
		fi, err := os.Stat("/dev/ram0")
		if err != nil || fi.Mode()&os.ModeDevice == 0 {
			t.Fatalf("/dev/ram0: %v %v", fi, err)
		}
	})
}
