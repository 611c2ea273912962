package daemon

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// notifySocket listens where systemd would, and returns what arrives.
func notifySocket(t *testing.T) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ch := make(chan string, 16)
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

func TestNotify(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Notify("READY=1"); err != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v", err)
	}
	path, ch := notifySocket(t)
	t.Setenv("NOTIFY_SOCKET", path)
	if err := Notify("READY=1\nSTATUS=serving"); err != nil {
		t.Fatal(err)
	}
	if got := <-ch; got != "READY=1\nSTATUS=serving" {
		t.Fatalf("want READY=1, got %q", got)
	}
}

func TestWatchdog(t *testing.T) {
	path, ch := notifySocket(t)
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", "")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Watchdog(ctx, nil); close(done) }()
	for range 2 {
		select {
		case got := <-ch:
			if !strings.Contains(got, "WATCHDOG=1") {
				t.Fatalf("want WATCHDOG=1, got %q", got)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no watchdog ping")
		}
	}
	cancel()
	<-done
	// an unhealthy daemon stops pinging, so systemd restarts it
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	for len(ch) > 0 {
		<-ch
	}
	Watchdog(ctx, func() bool { return false })
	if len(ch) != 0 {
		t.Fatalf("pinged while unhealthy: %q", <-ch)
	}
}
