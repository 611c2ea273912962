package daemon

import (
	"context"
	"errors"
	"net/netip"
	"testing"
)

func TestSplitHostPort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		host string
		port uint16
		bad  bool
	}{
		{"10.0.0.1", "10.0.0.1", 65000, false},
		{"10.0.0.1:7000", "10.0.0.1", 7000, false},
		{"target.example", "target.example", 65000, false},
		{"target.example:1", "target.example", 1, false},
		{"[fd00::1]", "fd00::1", 65000, false},
		{"[fd00::1]:9", "fd00::1", 9, false},
		{"fd00::1", "fd00::1", 65000, false},
		{"", "", 0, true},
		{":65000", "", 0, true},
		{"[fd00::1", "", 0, true},
		{"[fd00::1]x", "", 0, true},
		{"host:0", "", 0, true},
		{"host:99999", "", 0, true},
		{"host:abc", "", 0, true},
	} {
		h, p, err := SplitHostPort(tc.in, 65000)
		if (err != nil) != tc.bad || (!tc.bad && (h != tc.host || p != tc.port)) {
			t.Errorf("SplitHostPort(%q): want %q %d bad=%v, got %q %d %v", tc.in, tc.host, tc.port, tc.bad, h, p, err)
		}
	}
}

func TestResolve(t *testing.T) {
	ap, err := Resolve(context.Background(), "10.1.2.3", 65000)
	if err != nil || ap != netip.MustParseAddrPort("10.1.2.3:65000") {
		t.Fatalf("literal: %v %v", ap, err)
	}
	ap, err = Resolve(context.Background(), "localhost:5", 65000)
	if err != nil || !ap.Addr().IsLoopback() || ap.Port() != 5 {
		t.Fatalf("localhost: %v %v", ap, err)
	}
	_, err = Resolve(context.Background(), "no-such-host.invalid", 65000)
	var re *ResolveError
	if !errors.As(err, &re) || re.Name != "no-such-host.invalid" {
		t.Fatalf("unresolvable name: want *ResolveError, got %v", err)
	}
}
