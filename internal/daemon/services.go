package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"rbd/internal/stats"
)

// Services starts what both daemons serve besides their data path: the
// control socket at control (handled by h) and, when metricsAddr is set, the
// Prometheus endpoint over coll. Both are bound before it returns, so an
// address in use or a second daemon is an error at once; they stop with ctx.
// stop removes the control socket. extra are more metrics served beside
// coll's (rbdt: its per-peer limits). The control socket also serves Go's
// profiles under /debug/pprof/ (as net/http/pprof), for whoever may use the
// socket (root): `curl --unix-socket SOCK http://rbd/debug/pprof/profile`.
func Services(ctx context.Context, control string, h http.Handler, metricsAddr string, coll *stats.Collector, log *slog.Logger, extra ...prometheus.Collector) (stop func(), err error) {
	ctl, err := ListenControl(control)
	if err != nil {
		return nil, err
	}
	stop = func() { os.Remove(control) }
	var mln net.Listener
	if metricsAddr != "" {
		if mln, err = net.Listen("tcp", metricsAddr); err != nil {
			ctl.Close()
			stop()
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	go ServeControl(ctx, ctl, withProfiles(h))
	if mln != nil {
		reg := stats.NewRegistry(coll)
		reg.MustRegister(extra...)
		go stats.ServeListener(ctx, mln, stats.Handler(reg))
		log.Info("metrics", "addr", mln.Addr())
	}
	return stop, nil
}

// withProfiles serves net/http/pprof's handlers beside h.
func withProfiles(h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/", h)
	return mux
}
