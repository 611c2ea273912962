package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"rbd/internal/stats"
)

// Services starts what both daemons serve besides their data path: the
// control socket at control (handled by h) and, when metricsAddr is set, the
// Prometheus endpoint over coll. Both are bound before it returns, so an
// address in use or a second daemon is an error at once; they stop with ctx.
// stop removes the control socket. extra are more metrics served beside
// coll's (rbdt: its per-peer limits).
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
	go ServeControl(ctx, ctl, h)
	if mln != nil {
		reg := stats.NewRegistry(coll)
		reg.MustRegister(extra...)
		go stats.ServeListener(ctx, mln, stats.Handler(reg))
		log.Info("metrics", "addr", mln.Addr())
	}
	return stop, nil
}
