package daemon

import (
	"context"
	"net"
	"os"
	"strconv"
	"time"
)

// Notify sends a state line to systemd ("READY=1", "STOPPING=1",
// "STATUS=..."). It does nothing outside a Type=notify unit.
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' { // abstract socket
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// Watchdog pings systemd's watchdog at half its interval while healthy
// reports true, until ctx ends. It does nothing without WatchdogSec=.
// SelfCheck makes a good healthy.
func Watchdog(ctx context.Context, healthy func() bool) {
	us, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || us <= 0 {
		return
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return
	}
	t := time.NewTicker(time.Duration(us) * time.Microsecond / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if healthy == nil || healthy() {
				Notify("WATCHDOG=1")
			}
		}
	}
}

// SelfCheck reports whether the daemon answers on its own control socket
// within a few seconds: its HTTP server, and the locks its status takes,
// are not stuck.
func SelfCheck(control string) func() bool {
	c := NewClient(control)
	return func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return c.Do(ctx, "GET", "/v1/status", nil, nil) == nil
	}
}
