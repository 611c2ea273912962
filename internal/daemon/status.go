package daemon

import (
	"context"
	"fmt"
	"strings"
	"sync"
)

// Status sends systemd STATUS= lines from a goroutine of its own, so that
// the managers' hooks, which may run under their locks, never wait on the
// notify socket. Of lines set faster than they are sent only the latest is
// sent, and a line is not sent twice in a row. Outside a Type=notify unit nothing is sent.
type Status struct {
	mu   sync.Mutex
	line string
	kick chan struct{}
}

// NewStatus starts a Status that sends until ctx ends.
func NewStatus(ctx context.Context) *Status {
	s := &Status{kick: make(chan struct{}, 1)}
	go func() {
		sent := ""
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.kick:
			}
			s.mu.Lock()
			line := s.line
			s.mu.Unlock()
			if line != sent { // a kick that came while line was being sent
				Notify("STATUS=" + line)
				sent = line
			}
		}
	}()
	return s
}

// Set makes line the status; it does not block.
func (s *Status) Set(line string) {
	s.mu.Lock()
	s.line = line
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default: // a send is pending and will take the new line
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// deviceStates is the order DevicesStatus counts states in; others follow
// in the order met.
var deviceStates = []string{"connected", "connecting", "failed", "removing"}

// DevicesStatus is rbdi's status line from the states of its devices:
// "no devices", "2 devices: 2 connected", "3 devices: 2 connected, 1 failed".
func DevicesStatus(states []string) string {
	if len(states) == 0 {
		return "no devices"
	}
	count := map[string]int{}
	order := append([]string(nil), deviceStates...)
	for _, st := range states {
		if count[st] == 0 && !contains(order, st) {
			order = append(order, st)
		}
		count[st]++
	}
	var parts []string
	for _, st := range order {
		if count[st] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", count[st], st))
		}
	}
	return plural(len(states), "device", "devices") + ": " + strings.Join(parts, ", ")
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// SessionsStatus is rbdt's status line from the exports of its sessions
// (one entry per session) and the number of exports: "3 sessions on 2
// exports", "1 session on 1 of 2 exports", "no sessions, 2 exports".
func SessionsStatus(sessionExports []string, exports int) string {
	if len(sessionExports) == 0 {
		return "no sessions, " + plural(exports, "export", "exports")
	}
	used := map[string]bool{}
	for _, e := range sessionExports {
		used[e] = true
	}
	on := plural(len(used), "export", "exports")
	if len(used) < exports {
		on = fmt.Sprintf("%d of %d exports", len(used), exports)
	}
	return plural(len(sessionExports), "session", "sessions") + " on " + on
}
