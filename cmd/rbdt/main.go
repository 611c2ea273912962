// Command rbdt is the rbd target daemon: it exports block devices and image
// files to rbd initiators over RDMA (see rbdt(8) and docs/protocol.md).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"rbd/internal/daemon"
	"rbd/internal/stats"
	"rbd/internal/target"
	"rbd/internal/version"
	"rbd/internal/wire"
)

// DefaultMetricsPort is rbdt's documented Prometheus port (--metrics-addr :9465).
const DefaultMetricsPort = 9465

// DefaultControl is rbdt's control socket.
const DefaultControl = "/run/rbd/rbdt.sock"

// fileConfig is /etc/rbd/rbdt.toml.
type fileConfig struct {
	Listen      []string `toml:"listen"`
	MetricsAddr string   `toml:"metrics_addr"`
	Control     string   `toml:"control_socket"`
	LogLevel    string   `toml:"log_level"`
	QueueDepth  int      `toml:"queue_depth"`
	SlotSize    int      `toml:"slot_size"`
	Inline      *int     `toml:"inline"`
	MaxConns    int      `toml:"max_connections"`
	IdleTimeout string   `toml:"idle_timeout"`
	OpenTimeout string   `toml:"open_timeout"`
	// per initiator address
	MaxConnsPerPeer      int                   `toml:"max_connections_per_peer"`
	MaxHandshakesPerPeer int                   `toml:"max_handshakes_per_peer"`
	MaxPinnedPerPeer     int64                 `toml:"max_pinned_per_peer"`
	Export               []target.ExportConfig `toml:"export"`
}

type options struct {
	config      string
	listen      []string
	exports     []string
	metricsAddr string
	control     string
	logLevel    string
	depth       int
	slotSize    int
	inline      int
	maxConns    int
	idle        time.Duration
	open        time.Duration
	peerConns   int
	peerHS      int
	peerPinned  int64
}

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "rbdt:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:   "rbdt [--config FILE] [--listen ADDR[:PORT]]... [--export PATH[,ro][,shared]]...",
		Short: "rbd target daemon: export block devices over RDMA",
		Long: `rbdt exports block devices and image files to rbd initiators over RDMA
(InfiniBand, RoCE or iWARP, through rdma_cm). Initiators name an export by its
path, as in: rbdctl -n -a TARGET -p 65000 -d /dev/ram0.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE:          func(cmd *cobra.Command, _ []string) error { return run(cmd, &o) },
		Version:       version.String(),
	}
	cmd.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	f := cmd.Flags()
	f.Bool("version", false, "print the version (and the Go version it was built with) and exit")
	f.StringVarP(&o.config, "config", "c", "", "configuration file (TOML), e.g. /etc/rbd/rbdt.toml")
	f.StringArrayVarP(&o.listen, "listen", "l", nil, "address to listen on, ADDR[:PORT] (default 0.0.0.0:65000; repeatable)")
	f.StringArrayVarP(&o.exports, "export", "e", nil, "export PATH[,ro][,shared][,bs=N][,key=KEYFILE][,auth=optional][,allow=PREFIX][,allow-ro=PREFIX] (repeatable)")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", fmt.Sprintf("serve Prometheus metrics on this address, e.g. :%d (off by default)", DefaultMetricsPort))
	f.StringVar(&o.control, "control", DefaultControl, "control socket (rbdctl talks to it)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.IntVar(&o.depth, "queue-depth", target.DefaultQueueDepth, "most slots (requests in flight) granted per connection")
	f.IntVar(&o.slotSize, "slot-size", target.DefaultSlotSize, "largest I/O per request in bytes (a multiple of 4096)")
	f.IntVar(&o.inline, "inline", target.DefaultInline, "largest I/O carried inline in messages, bytes (-1: never)")
	f.IntVar(&o.maxConns, "max-connections", target.DefaultMaxConns, "most connections served at once")
	f.DurationVar(&o.idle, "idle-timeout", target.DefaultIdleTimeout, "drop an initiator's connection after it sent nothing this long (initiators heartbeat every 5s; -1s: never)")
	f.DurationVar(&o.open, "open-timeout", target.DefaultOpenTimeout, "drop a connection that has not OPENed this long after it was accepted")
	f.IntVar(&o.peerConns, "max-connections-per-peer", target.DefaultMaxConnsPerPeer, "most connections of one initiator address at once (-1: no limit)")
	f.IntVar(&o.peerHS, "max-handshakes-per-peer", target.DefaultMaxHandshakesPerPeer, "most connections of one initiator address not OPENed yet (-1: no limit)")
	f.Int64Var(&o.peerPinned, "max-pinned-per-peer", target.DefaultMaxPinnedPerPeer, "most slot memory registered for one initiator address, bytes (-1: no limit)")
	return cmd
}

func loadConfig(path string) (*fileConfig, error) { return daemon.ParseFile(path, parseConfig) }

// parseConfig decodes and checks a configuration file; path names it in
// errors.
func parseConfig(r io.Reader, path string) (*fileConfig, error) {
	var fc fileConfig
	if err := daemon.DecodeTOML(r, path, &fc); err != nil {
		return nil, err
	}
	return &fc, nil
}

// buildConfig merges the file and the flags (flags win) into a target.Config.
func buildConfig(cmd *cobra.Command, o *options) (target.Config, string, string, string, error) {
	var cfg target.Config
	metrics, control, level := o.metricsAddr, o.control, o.logLevel
	listen := o.listen
	if o.config != "" {
		fc, err := loadConfig(o.config)
		if err != nil {
			return cfg, "", "", "", err
		}
		if len(listen) == 0 {
			listen = fc.Listen
		}
		cfg.Exports = append(cfg.Exports, fc.Export...)
		set := func(name string) bool { return cmd.Flags().Changed(name) }
		if !set("metrics-addr") && fc.MetricsAddr != "" {
			metrics = fc.MetricsAddr
		}
		if !set("control") && fc.Control != "" {
			control = fc.Control
		}
		if !set("log-level") && fc.LogLevel != "" {
			level = fc.LogLevel
		}
		if !set("queue-depth") && fc.QueueDepth != 0 {
			o.depth = fc.QueueDepth
		}
		if !set("slot-size") && fc.SlotSize != 0 {
			o.slotSize = fc.SlotSize
		}
		if !set("inline") && fc.Inline != nil {
			o.inline = *fc.Inline
		}
		if !set("max-connections") && fc.MaxConns != 0 {
			o.maxConns = fc.MaxConns
		}
		if !set("open-timeout") && fc.OpenTimeout != "" {
			d, err := time.ParseDuration(fc.OpenTimeout)
			if err != nil || d <= 0 {
				return cfg, "", "", "", fmt.Errorf("%s: open_timeout %q: want a positive duration like \"30s\"", o.config, fc.OpenTimeout)
			}
			o.open = d
		}
		if !set("max-connections-per-peer") && fc.MaxConnsPerPeer != 0 {
			o.peerConns = fc.MaxConnsPerPeer
		}
		if !set("max-handshakes-per-peer") && fc.MaxHandshakesPerPeer != 0 {
			o.peerHS = fc.MaxHandshakesPerPeer
		}
		if !set("max-pinned-per-peer") && fc.MaxPinnedPerPeer != 0 {
			o.peerPinned = fc.MaxPinnedPerPeer
		}
		if !set("idle-timeout") && fc.IdleTimeout != "" {
			d, err := time.ParseDuration(fc.IdleTimeout)
			if err != nil {
				return cfg, "", "", "", fmt.Errorf("%s: idle_timeout: %v", o.config, err)
			}
			o.idle = d
		}
	}
	for _, e := range o.exports {
		ec, err := target.ParseExport(e)
		if err != nil {
			return cfg, "", "", "", err
		}
		cfg.Exports = append(cfg.Exports, ec)
	}
	if len(cfg.Exports) == 0 {
		return cfg, "", "", "", errors.New("nothing to export: give --export PATH or [[export]] in the configuration file")
	}
	if len(listen) == 0 {
		listen = []string{"0.0.0.0"}
	}
	for _, l := range listen {
		ap, err := daemon.Resolve(context.Background(), l, wire.DefaultPort)
		if err != nil {
			return cfg, "", "", "", fmt.Errorf("listen address: %w", err)
		}
		cfg.Listen = append(cfg.Listen, ap)
	}
	cfg.MaxQueueDepth, cfg.MaxSlotSize, cfg.MaxConns = o.depth, o.slotSize, o.maxConns
	cfg.MaxInline = o.inline
	cfg.IdleTimeout = o.idle
	if o.open <= 0 {
		return cfg, "", "", "", fmt.Errorf("--open-timeout %v: want a positive duration", o.open)
	}
	cfg.OpenTimeout = o.open
	cfg.MaxConnsPerPeer, cfg.MaxHandshakesPerPeer, cfg.MaxPinnedPerPeer = o.peerConns, o.peerHS, o.peerPinned
	if o.inline == 0 {
		cfg.MaxInline = -1
	}
	return cfg, metrics, control, level, nil
}

func run(cmd *cobra.Command, o *options) error {
	// sysmon kept out of its deep sleep (GODEBUG, see internal/daemon):
	// the process may execute itself again here, before anything starts
	daemon.TuneRuntime()
	cfg, metricsAddr, control, level, err := buildConfig(cmd, o)
	if err != nil {
		return err
	}
	log, err := daemon.Logger(level)
	if err != nil {
		return err
	}
	cfg.Log = log
	log.Info("starting", "version", version.String())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	coll := stats.NewCollector(stats.RoleTarget, stats.TargetInfoLabels...)
	build := version.Get()
	coll.SetBuildInfo(build.Version, build.GoVersion)
	srv, err := target.NewServer(cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	for _, e := range srv.Exports() {
		if err := addExportMetrics(coll, e); err != nil {
			return err
		}
	}
	status := daemon.NewStatus(ctx)
	sm := newSessionMetrics(coll)
	srv.OnSession = func(s target.SessionInfo, up bool) {
		sm.update(s, up)
		status.Set(daemon.SessionsStatus(sm.exports(), len(srv.Exports())))
	}
	stopServices, err := daemon.Services(ctx, control, controlHandler(srv, coll, sm.peerOf), metricsAddr, coll, log, target.LimitsCollector(srv.Usage))
	if err != nil {
		return err
	}
	defer stopServices()
	if err := srv.Listen(); err != nil {
		return fmt.Errorf("%w (is the RDMA device up, e.g. rdma link add rxe0 type rxe netdev IFACE?)", err)
	}
	daemon.Notify("READY=1\nSTATUS=" + daemon.SessionsStatus(nil, len(srv.Exports())))
	go daemon.Watchdog(ctx, daemon.SelfCheck(control))
	err = srv.Serve(ctx)
	daemon.Notify("STOPPING=1")
	log.Info("stopped")
	return err
}

// addExportMetrics registers an export's counters, its rbd_device_info and
// rbd_device_size_bytes (read at scrape time: an export that failed to open
// at start has them once it opens) and its rbd_device_state.
func addExportMetrics(coll *stats.Collector, e *target.Export) error {
	key := "export:" + e.Name()
	l := stats.Labels{Export: e.Name()}
	cfg := e.Config()
	return errors.Join(
		coll.Add(key, l, e.Stats),
		coll.AddInfoFunc(key, l, func() (uint64, map[string]string, bool) {
			size, bs, ok := e.Geometry()
			if !ok {
				return 0, nil, false
			}
			return uint64(size), map[string]string{"path": cfg.Path, "block_size": strconv.Itoa(bs),
				"read_only": strconv.FormatBool(cfg.ReadOnly), "shared": strconv.FormatBool(cfg.Shared)}, true
		}),
		coll.AddState(key, l, stats.ExportStates, func() string {
			if _, _, ok := e.Geometry(); ok {
				return "ready"
			}
			return "unavailable"
		}),
	)
}

// ordinals numbers the sessions of each export 1, 2, ...: a new session
// takes the smallest number free on its export, so the session label of the
// metrics stays bounded by the sessions open at once.
type ordinals struct {
	byExport map[string]map[string]int // export -> session id -> ordinal
}

func newOrdinals() *ordinals { return &ordinals{byExport: map[string]map[string]int{}} }

// take returns id's ordinal on export, giving it the smallest free one if it
// has none.
func (o *ordinals) take(export, id string) int {
	m := o.byExport[export]
	if m == nil {
		m = map[string]int{}
		o.byExport[export] = m
	}
	if n, ok := m[id]; ok {
		return n
	}
	used := map[int]bool{}
	for _, n := range m {
		used[n] = true
	}
	n := 1
	for used[n] {
		n++
	}
	m[id] = n
	return n
}

// release frees id's ordinal on export.
func (o *ordinals) release(export, id string) {
	delete(o.byExport[export], id)
	if len(o.byExport[export]) == 0 {
		delete(o.byExport, export)
	}
}

// sessionMetrics registers the sessions' counters with the collector. The
// session id is a credential: it is neither a label nor the collector's key
// (which rbdctl -s sees); a session is named by its ordinal on its export.
type sessionMetrics struct {
	coll *stats.Collector

	mu       sync.Mutex
	ords     *ordinals
	exportOf map[string]string // session id -> export, for STATUS=
	peers    map[string]string // collector key -> the session's initiator, for rbdctl -s
}

func newSessionMetrics(coll *stats.Collector) *sessionMetrics {
	return &sessionMetrics{coll: coll, ords: newOrdinals(), exportOf: map[string]string{}, peers: map[string]string{}}
}

// update registers a session that started (up) or removes one that ended.
func (sm *sessionMetrics) update(s target.SessionInfo, up bool) {
	sm.mu.Lock()
	defer sm.mu.Unlock()
	n := sm.ords.take(s.Export, s.ID)
	key := sessionKey(s.Export, n)
	if up {
		sm.coll.Add(key, stats.Labels{Export: s.Export, Session: strconv.Itoa(n)}, s.Stats)
		sm.exportOf[s.ID] = s.Export
		sm.peers[key] = s.Peer
		return
	}
	sm.coll.Remove(key)
	sm.ords.release(s.Export, s.ID)
	delete(sm.exportOf, s.ID)
	delete(sm.peers, key)
}

// exports lists the export of every session, one entry per session.
func (sm *sessionMetrics) exports() []string {
	sm.mu.Lock()
	defer sm.mu.Unlock()
	return slices.Collect(maps.Values(sm.exportOf))
}

// peerOf returns the initiator of the session whose collector key is key.
func (sm *sessionMetrics) peerOf(key string) string {
	sm.mu.Lock()
	defer sm.mu.Unlock()
	return sm.peers[key]
}

// sessionKey is the collector key of export's session number n.
func sessionKey(export string, n int) string {
	return "session:" + export + "#" + strconv.Itoa(n)
}

// StatsEntry is an entry of GET /v1/stats: an export's or a session's
// counters, and for a session the address of its initiator.
type StatsEntry struct {
	stats.Entry
	Peer string `json:"peer,omitempty"`
}

func controlHandler(srv *target.Server, coll *stats.Collector, peerOf func(key string) string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		daemon.WriteJSON(w, http.StatusOK, srv.Status())
	})
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("export")
		var out []StatsEntry
		for _, e := range coll.Entries() {
			if name == "" || e.Labels.Export == name {
				out = append(out, StatsEntry{Entry: e, Peer: peerOf(e.Key)})
			}
		}
		if name != "" && len(out) == 0 {
			daemon.WriteError(w, http.StatusNotFound, fmt.Errorf("no export %s on this target", name), "rbdctl -l lists the exports")
			return
		}
		daemon.WriteJSON(w, http.StatusOK, out)
	})
	return mux
}
