package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"rbd/internal/stats"
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

// A busy metrics address or a second daemon on the control socket fails at
// start, before the daemon goes on.
func TestServicesBindErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	coll := stats.NewCollector(stats.RoleTarget)
	if _, err := Services(ctx, ctl, http.NotFoundHandler(), busy.Addr().String(), coll, log); err == nil || !strings.Contains(err.Error(), "metrics") {
		t.Fatalf("busy metrics address: want an error, got %v", err)
	}
	stop, err := Services(ctx, ctl, http.NotFoundHandler(), "127.0.0.1:0", coll, log)
	if err != nil {
		t.Fatalf("Services: %v", err)
	}
	defer stop()
	if _, err := Services(ctx, ctl, http.NotFoundHandler(), "", coll, log); err == nil || !strings.Contains(err.Error(), "another daemon is running") {
		t.Fatalf("second daemon on the control socket: want an error, got %v", err)
	}
}

// The control socket serves the daemon's handler and, beside it, Go's
// profiles.
func TestServicesProfiles(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "daemon "+r.URL.Path) })
	stop, err := Services(ctx, ctl, h, "", stats.NewCollector(stats.RoleInitiator), log)
	if err != nil {
		t.Fatalf("Services: %v", err)
	}
	defer stop()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", ctl)
	}}}
	get := func(path string) string {
		t.Helper()
		resp, err := c.Get("http://rbd" + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s: %s", path, resp.Status, b)
		}
		return string(b)
	}
	if got := get("/v1/devices"); got != "daemon /v1/devices" {
		t.Fatalf("the daemon's handler: got %q", got)
	}
	if got := get("/debug/pprof/goroutine?debug=1"); !strings.Contains(got, "goroutine profile:") {
		t.Fatalf("goroutine profile: got %.200q", got)
	}
}
