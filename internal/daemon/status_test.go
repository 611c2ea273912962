package daemon

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestDevicesStatus(t *testing.T) {
	for _, tc := range []struct {
		states []string
		want   string
	}{
		{nil, "no devices"},
		{[]string{"connected"}, "1 device: 1 connected"},
		{[]string{"connected", "connected"}, "2 devices: 2 connected"},
		{[]string{"failed", "connected", "connected"}, "3 devices: 2 connected, 1 failed"},
		{[]string{"failed"}, "1 device: 1 failed"},
		{[]string{"odd", "connecting", "connected"}, "3 devices: 1 connected, 1 connecting, 1 odd"},
	} {
		if got := DevicesStatus(tc.states); got != tc.want {
			t.Errorf("DevicesStatus(%q) = %q, want %q", tc.states, got, tc.want)
		}
	}
}

func TestSessionsStatus(t *testing.T) {
	for _, tc := range []struct {
		sessions []string
		exports  int
		want     string
	}{
		{nil, 1, "no sessions, 1 export"},
		{nil, 2, "no sessions, 2 exports"},
		{[]string{"/dev/ram0"}, 1, "1 session on 1 export"},
		{[]string{"/dev/ram0", "/dev/ram1", "/dev/ram0"}, 2, "3 sessions on 2 exports"},
		{[]string{"/dev/ram0"}, 2, "1 session on 1 of 2 exports"},
		{[]string{"/dev/ram0", "/dev/ram0"}, 4, "2 sessions on 1 of 4 exports"},
	} {
		if got := SessionsStatus(tc.sessions, tc.exports); got != tc.want {
			t.Errorf("SessionsStatus(%q, %d) = %q, want %q", tc.sessions, tc.exports, got, tc.want)
		}
	}
}

// TestStatus: Set never blocks, even with many lines at once, and the last
// line set is the last one systemd gets.
func TestStatus(t *testing.T) {
	path, ch := notifySocket(t)
	t.Setenv("NOTIFY_SOCKET", path)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewStatus(ctx)
	s.Set("1 device: 1 connected")
	if got := recv(t, ch); got != "STATUS=1 device: 1 connected" {
		t.Fatalf("got %q", got)
	}
	start := time.Now()
	for i := range 1000 {
		s.Set(strings.Repeat("x", i%7))
	}
	s.Set("no devices")
	if d := time.Since(start); d > time.Second {
		t.Errorf("1001 Set calls took %v", d)
	}
	var last string
	for last != "STATUS=no devices" {
		last = recv(t, ch)
		if !strings.HasPrefix(last, "STATUS=") {
			t.Fatalf("got %q", last)
		}
	}
	select {
	case got := <-ch:
		t.Fatalf("a line after the last one set: %q", got)
	case <-time.After(100 * time.Millisecond):
	}
}

func recv(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case got := <-ch:
		return got
	case <-time.After(5 * time.Second):
		t.Fatal("nothing arrived on the notify socket")
		return ""
	}
}
