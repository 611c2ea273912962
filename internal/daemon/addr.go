package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// SplitHostPort splits "HOST", "HOST:PORT", "[V6]" or "[V6]:PORT", using
// defPort when no port is given.
func SplitHostPort(s string, defPort uint16) (string, uint16, error) {
	host, port := s, ""
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.Index(s, "]")
		if end < 0 {
			return "", 0, fmt.Errorf("address %q: missing ]", s)
		}
		host = s[1:end]
		rest := s[end+1:]
		if rest != "" {
			if !strings.HasPrefix(rest, ":") {
				return "", 0, fmt.Errorf("address %q: junk after ]", s)
			}
			port = rest[1:]
		}
	case strings.Count(s, ":") == 1:
		host, port, _ = strings.Cut(s, ":")
	}
	if host == "" {
		return "", 0, fmt.Errorf("address %q: no host", s)
	}
	if port == "" {
		return host, defPort, nil
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return "", 0, fmt.Errorf("address %q: bad port %q", s, port)
	}
	return host, uint16(p), nil
}

// ResolveError is a name that does not resolve.
type ResolveError struct {
	Name string
	Err  error
}

func (e *ResolveError) Error() string {
	return fmt.Sprintf("%s does not resolve: %v", e.Name, e.Err)
}
func (e *ResolveError) Unwrap() error { return e.Err }

// Resolve turns "HOST[:PORT]" into an address, looking names up (IPv4 first,
// as RDMA fabrics mostly are).
func Resolve(ctx context.Context, s string, defPort uint16) (netip.AddrPort, error) {
	host, port, err := SplitHostPort(s, defPort)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(a.Unmap(), port), nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.AddrPort{}, &ResolveError{Name: host, Err: err}
	}
	if len(ips) == 0 {
		return netip.AddrPort{}, &ResolveError{Name: host, Err: fmt.Errorf("no addresses")}
	}
	best := ips[0]
	for _, ip := range ips {
		if ip.Unmap().Is4() {
			best = ip
			break
		}
	}
	return netip.AddrPortFrom(best.Unmap(), port), nil
}
