package stats

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a private registry holding c (if not nil) and the Go
// and process collectors. It panics if c cannot be registered, which only a
// programming error causes.
func NewRegistry(c *Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if c != nil {
		reg.MustRegister(c)
	}
	return reg
}

// Handler returns an http.Handler that serves reg's metrics in the text
// format or, when the scraper asks for it, OpenMetrics. It also registers the
// promhttp_metric_handler_* scrape counters on reg (once, however often
// Handler is called). A metric that fails to collect is logged in the response
// as an error but does not hide the others.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		EnableOpenMetrics: true,
		ErrorHandling:     promhttp.ContinueOnError,
	}))
}

// shutdownTimeout bounds the graceful shutdown of ServeListener's server.
const shutdownTimeout = 5 * time.Second

// ServeListener serves h at /metrics on ln (which the caller bound, so that a
// bad or busy address fails at start) until ctx ends, then shuts the server
// down gracefully. It closes ln; it returns a serving error if the server
// fails and nil after a clean shutdown.
func ServeListener(ctx context.Context, ln net.Listener, h http.Handler) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "rbd: metrics at /metrics")
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("stats: metrics server: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		srv.Close()
	}
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("stats: metrics server shutdown: %w", err)
	}
	return nil
}
