package stats

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestServeMetrics(t *testing.T) {
	col := NewCollector(RoleInitiator)
	c := NewCounters()
	c.Done(OpRead, 4096, c.Start(OpRead), ErrNone)
	if err := col.Add("rbdi0", Labels{Device: "rbdi0", Target: "t", Export: "e"}, c); err != nil {
		t.Fatal(err)
	}
	reg := NewRegistry(col)
	h := Handler(reg)
	Handler(reg) // a second handler on the same registry must not panic

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeListener(ctx, ln, h) }()
	url := "http://" + ln.Addr().String()

	get := func(path, accept string) (string, string, int) {
		t.Helper()
		req, err := http.NewRequest("GET", url+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(body), resp.Header.Get("Content-Type"), resp.StatusCode
	}

	body, ctype, code := get("/metrics", "")
	if code != http.StatusOK || !strings.HasPrefix(ctype, "text/plain") {
		t.Errorf("GET /metrics: %d %q", code, ctype)
	}
	for _, want := range []string{
		`rbd_ops_total{device="rbdi0",export="e",op="read",role="initiator",target="t"} 1`,
		"go_goroutines ",
		"process_start_time_seconds ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if runtimeHasProcfs() && !strings.Contains(body, "process_resident_memory_bytes") {
		t.Error("/metrics lacks process_resident_memory_bytes")
	}
	_, ctype, _ = get("/metrics", "application/openmetrics-text; version=1.0.0")
	if !strings.HasPrefix(ctype, "application/openmetrics-text") {
		t.Errorf("OpenMetrics not negotiated: Content-Type %q", ctype)
	}
	if _, _, code := get("/nothing", ""); code != http.StatusNotFound {
		t.Errorf("GET /nothing: %d, want 404", code)
	}
	if body, _, code := get("/", ""); code != http.StatusOK || !strings.Contains(body, "/metrics") {
		t.Errorf("GET /: %d %q", code, body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeListener after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ServeListener did not return after cancel")
	}
	if _, err := http.Get(url + "/metrics"); err == nil {
		t.Error("server still answers after shutdown")
	}
}
