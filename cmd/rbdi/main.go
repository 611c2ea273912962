// Command rbdi is the rbd initiator daemon: it maps exports of rbd targets
// as local block devices, /dev/rbdiN, through the kernel's NBD driver (see
// rbdi(8); rbdctl(8) drives it).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"rbd/internal/api"
	"rbd/internal/client"
	"rbd/internal/daemon"
	"rbd/internal/initiator"
	"rbd/internal/stats"
	"rbd/internal/version"
)

// DefaultMetricsPort is rbdi's documented Prometheus port (--metrics-addr :9466).
const DefaultMetricsPort = 9466

// DefaultControl is rbdi's control socket.
const DefaultControl = "/run/rbd/rbdi.sock"

// DefaultStateDir keeps the devices' state across restarts (the unit's
// StateDirectory=rbd).
const DefaultStateDir = "/var/lib/rbd"

// fileConfig is /etc/rbd/rbdi.toml: settings and the persistent devices,
// mapped again at start in file order.
type fileConfig struct {
	MetricsAddr     string                 `toml:"metrics_addr"`
	Control         string                 `toml:"control_socket"`
	LogLevel        string                 `toml:"log_level"`
	Queues          int                    `toml:"queues"`
	QueueDepth      int                    `toml:"queue_depth"`
	MaxIO           int                    `toml:"max_io"`
	Inline          *int                   `toml:"inline"`
	Timeout         string                 `toml:"timeout"`
	DeadConnTimeout string                 `toml:"dead_conn_timeout"`
	ReconnectDelay  string                 `toml:"reconnect_delay"`
	CtrlLossTimeout string                 `toml:"ctrl_loss_timeout"`
	FastIOFail      string                 `toml:"fast_io_fail_timeout"`
	StateDir        *string                `toml:"state_dir"`
	RemoveOnExit    bool                   `toml:"remove_on_exit"`
	Device          []initiator.AddRequest `toml:"device"`
	Target          []targetConfig         `toml:"target"`
}

// targetConfig is a [[target]] of rbdi.toml: the key file of a target whose
// exports require authentication, for every device of that target.
type targetConfig struct {
	Address string `toml:"address"` // as devices name the target: address or name, optionally :port
	KeyFile string `toml:"key_file"`
}

type options struct {
	config, metricsAddr, control, logLevel  string
	queues, depth, maxIO, inline            int
	timeout, deadConn, keepAlive, kaTimeout time.Duration
	reconnectDelay, ctrlLoss, fastIOFail    time.Duration
	noMlock, removeOnExit                   bool
	stateDir                                string
}

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "rbdi:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:   "rbdi [--config /etc/rbd/rbdi.toml]",
		Short: "rbd initiator daemon: remote block devices as /dev/rbdiN",
		Long: `rbdi maps exports of rbd targets as local block devices (/dev/rbdiN, over the
kernel's NBD driver), moving the data by RDMA. rbdctl adds, removes and lists
devices through its control socket.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE:          func(cmd *cobra.Command, _ []string) error { return run(cmd, &o) },
		Version:       version.String(),
	}
	cmd.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	f := cmd.Flags()
	f.Bool("version", false, "print the version (and the Go version it was built with) and exit")
	f.StringVarP(&o.config, "config", "c", "", "configuration file (TOML) with settings and persistent [[device]]s")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", fmt.Sprintf("serve Prometheus metrics on this address, e.g. :%d (off by default)", DefaultMetricsPort))
	f.StringVar(&o.control, "control", DefaultControl, "control socket (rbdctl talks to it)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.IntVar(&o.queues, "queues", min(runtime.NumCPU(), 4), "RDMA queues (and NBD sockets) per device")
	f.IntVar(&o.depth, "queue-depth", 128, "requests in flight per queue")
	f.IntVar(&o.maxIO, "max-io", 256<<10, "largest request per RDMA operation in bytes (the target may grant less)")
	f.IntVar(&o.inline, "inline", 4096, "largest I/O carried inline in messages, bytes (-1: never)")
	f.DurationVar(&o.timeout, "timeout", initiator.DefaultTimeout, "kernel per-request timeout: a request unanswered this long is sent again on a new socket (-1s: none)")
	f.DurationVar(&o.reconnectDelay, "reconnect-delay", client.DefaultReconnectDelay, "wait before reconnecting a lost queue (doubling up to 10s between attempts)")
	f.DurationVar(&o.ctrlLoss, "ctrl-loss-timeout", client.DefaultCtrlLossTimeout, "how long I/O waits for a lost connection to come back before it fails with EIO (-1s: forever)")
	f.DurationVar(&o.fastIOFail, "fast-io-fail-timeout", 0, "fail the I/O of a queue that has been reconnecting this long, while it goes on reconnecting up to --ctrl-loss-timeout (0: off)")
	f.DurationVar(&o.deadConn, "dead-conn-timeout", initiator.DefaultDeadConnTimeout, "how long a device's I/O waits for new NBD sockets when all died: rbdi stopped or restarting (-1s: fail at once)")
	f.StringVar(&o.stateDir, "state-dir", DefaultStateDir, "keep each device's state here, so that a restarted rbdi adopts the devices the old one left (\"\": none)")
	f.BoolVar(&o.removeOnExit, "remove-on-exit", false, "on SIGTERM remove the devices (flushing each; those in use stay) instead of leaving them for the next rbdi")
	f.DurationVar(&o.keepAlive, "keepalive", client.DefaultKeepAlive, "send KEEPALIVE when requests are outstanding and the target was quiet this long")
	f.DurationVar(&o.kaTimeout, "keepalive-timeout", client.DefaultKeepAliveTimeout, "declare the connection dead when the target stays quiet this much longer")
	f.BoolVar(&o.noMlock, "no-mlock", false, "do not lock the daemon's memory (not safe under memory pressure)")
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
	for i, d := range fc.Device {
		if d.Target == "" || d.Export == "" {
			return nil, fmt.Errorf("%s: device %d: target and export are required", path, i+1)
		}
		if d.KeyFile != "" && !filepath.IsAbs(d.KeyFile) {
			return nil, fmt.Errorf("%s: device %d: key_file %q must be an absolute path", path, i+1, d.KeyFile)
		}
	}
	for i, tg := range fc.Target {
		if tg.Address == "" || tg.KeyFile == "" {
			return nil, fmt.Errorf("%s: target %d: address and key_file are required", path, i+1)
		}
		if !filepath.IsAbs(tg.KeyFile) {
			return nil, fmt.Errorf("%s: target %s: key_file %q must be an absolute path (like /etc/rbd/keys/%s.key)", path, tg.Address, tg.KeyFile, tg.Address)
		}
	}
	return &fc, nil
}

// protect keeps the daemon out of memory-reclaim deadlocks: a process serving
// a block device must not wait for the reclaim that waits for it.
func protect(noMlock bool, log *slog.Logger) error {
	if err := unix.Prctl(unix.PR_SET_IO_FLUSHER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_IO_FLUSHER): %w (needs CAP_SYS_RESOURCE and Linux 5.6)", err)
	}
	if noMlock {
		log.Warn("memory not locked (--no-mlock)")
		return nil
	}
	if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT); err != nil {
		return fmt.Errorf("mlockall: %w (raise the locked-memory limit: LimitMEMLOCK=infinity, ulimit -l unlimited)", err)
	}
	return nil
}

func run(cmd *cobra.Command, o *options) error {
	// sysmon kept out of its deep sleep (GODEBUG, see internal/daemon):
	// the process may execute itself again here, before anything starts
	daemon.TuneRuntime()
	var devices []initiator.AddRequest
	targetKeys := map[string]string{}
	metricsAddr, control, level := o.metricsAddr, o.control, o.logLevel
	if o.config != "" {
		fc, err := loadConfig(o.config)
		if err != nil {
			return err
		}
		set := cmd.Flags().Changed
		if !set("metrics-addr") && fc.MetricsAddr != "" {
			metricsAddr = fc.MetricsAddr
		}
		if !set("control") && fc.Control != "" {
			control = fc.Control
		}
		if !set("log-level") && fc.LogLevel != "" {
			level = fc.LogLevel
		}
		if !set("queues") && fc.Queues != 0 {
			o.queues = fc.Queues
		}
		if !set("queue-depth") && fc.QueueDepth != 0 {
			o.depth = fc.QueueDepth
		}
		if !set("max-io") && fc.MaxIO != 0 {
			o.maxIO = fc.MaxIO
		}
		if !set("inline") && fc.Inline != nil {
			o.inline = *fc.Inline
		}
		if !set("state-dir") && fc.StateDir != nil {
			o.stateDir = *fc.StateDir
		}
		if !set("remove-on-exit") && fc.RemoveOnExit {
			o.removeOnExit = true
		}
		for name, s := range map[string]string{"timeout": fc.Timeout, "dead-conn-timeout": fc.DeadConnTimeout,
			"reconnect-delay": fc.ReconnectDelay, "ctrl-loss-timeout": fc.CtrlLossTimeout, "fast-io-fail-timeout": fc.FastIOFail} {
			if s == "" || set(name) {
				continue
			}
			d, err := time.ParseDuration(s)
			if err != nil {
				return fmt.Errorf("%s: %s: %v", o.config, name, err)
			}
			switch name {
			case "timeout":
				o.timeout = d
			case "dead-conn-timeout":
				o.deadConn = d
			case "reconnect-delay":
				o.reconnectDelay = d
			case "ctrl-loss-timeout":
				o.ctrlLoss = d
			case "fast-io-fail-timeout":
				o.fastIOFail = d
			}
		}
		devices = fc.Device
		for _, tg := range fc.Target {
			targetKeys[tg.Address] = tg.KeyFile
		}
	}
	log, err := daemon.Logger(level)
	if err != nil {
		return err
	}
	log.Info("starting", "version", version.String())
	if err := protect(o.noMlock, log); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	inline := o.inline
	if inline == 0 {
		inline = -1
	}
	coll := stats.NewCollector(stats.RoleInitiator, stats.InitiatorInfoLabels...)
	build := version.Get()
	coll.SetBuildInfo(build.Version, build.GoVersion)
	var m *initiator.Manager
	status := daemon.NewStatus(ctx)
	deadConn := max(o.deadConn, 0)
	m = initiator.NewManager(initiator.Config{Queues: o.queues, QueueDepth: o.depth, MaxIO: o.maxIO, Inline: inline,
		StateDir: o.stateDir, RemoveOnExit: o.removeOnExit, Timeout: o.timeout, DeadConnTimeout: deadConn, KeepAlive: o.keepAlive, KeepAliveTimeout: o.kaTimeout,
		ReconnectDelay: o.reconnectDelay, CtrlLossTimeout: o.ctrlLoss, FastIOFailTimeout: o.fastIOFail, TargetKeys: targetKeys,
		Log: log, Collector: coll, OnChange: func() { status.Set(devicesStatus(m)) }})
	if err := m.OpenState(); err != nil {
		if errors.Is(err, initiator.ErrStateLocked) {
			return err
		}
		log.Warn("no device state kept: a restarted rbdi will not adopt the devices", "err", err)
	}
	stopServices, err := daemon.Services(ctx, control, controlHandler(m, coll, log), metricsAddr, coll, log)
	if err != nil {
		return err
	}
	defer stopServices()
	// the devices an earlier rbdi left, then the persistent ones
	m.Adopt(ctx)
	for _, req := range devices { // persistent devices, in file order
		actx, cancel := context.WithTimeout(ctx, 60*time.Second)
		d, err := m.Add(actx, req)
		cancel()
		var me *initiator.MappedError
		if errors.As(err, &me) {
			if me.Device.Adopted() {
				log.Info("persistent device adopted", "device", me.Device.Path(), "target", req.Target, "export", req.Export)
			} else {
				log.Warn("persistent device listed twice: mapped once", "device", me.Device.Path(), "target", req.Target, "export", req.Export)
			}
			continue
		}
		if err != nil {
			log.Error("persistent device not mapped", "target", req.Target, "export", req.Export, "err", err)
			continue
		}
		log.Info("persistent device mapped", "device", d.Path(), "target", req.Target, "export", req.Export)
	}
	daemon.Notify("READY=1\nSTATUS=" + devicesStatus(m))
	go daemon.Watchdog(ctx, daemon.SelfCheck(control))
	<-ctx.Done()
	daemon.Notify("STOPPING=1")
	if o.stateDir != "" && !o.removeOnExit {
		log.Info("stopping: leaving the devices for the next rbdi")
	} else {
		log.Info("stopping: removing devices")
	}
	m.Close()
	return nil
}

// devicesStatus is rbdi's STATUS= line: "2 devices: 1 connected, 1 failed".
func devicesStatus(m *initiator.Manager) string {
	var states []string
	for _, d := range m.List() {
		st, _ := d.State()
		states = append(states, st)
	}
	return daemon.DevicesStatus(states)
}

func apiError(w http.ResponseWriter, err error) {
	var ie *initiator.Error
	if errors.As(err, &ie) {
		daemon.WriteError(w, http.StatusBadRequest, err, ie.Hint)
		return
	}
	daemon.WriteError(w, http.StatusInternalServerError, err, "")
}

func controlHandler(m *initiator.Manager, coll *stats.Collector, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		daemon.WriteJSON(w, http.StatusOK, map[string]any{"role": "initiator", "devices": len(m.List())})
	})
	mux.HandleFunc("GET /v1/devices", func(w http.ResponseWriter, r *http.Request) {
		out := []api.Device{}
		for _, d := range m.List() {
			out = append(out, d.Info())
		}
		daemon.WriteJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST /v1/devices", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			initiator.AddRequest
			// NoReuse: fail when the export is mapped already, instead of
			// answering with that device (rbdctl --no-reuse)
			NoReuse bool `json:"no_reuse"`
		}
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			daemon.WriteError(w, http.StatusBadRequest, fmt.Errorf("bad request: %w", err), "")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 60*time.Second)
		defer cancel()
		d, err := m.Add(ctx, req.AddRequest)
		var me *initiator.MappedError
		if errors.As(err, &me) && !req.NoReuse {
			info := me.Device.Info()
			info.Existing = true
			daemon.WriteJSON(w, http.StatusOK, info)
			return
		}
		if err != nil {
			// the journal says why too, not only the rbdctl that asked (a
			// target that answers the handshake wrongly, one that refuses)
			log.Warn("device not added", "target", req.Target, "port", req.Port, "export", req.Export, "err", err)
			apiError(w, err)
			return
		}
		daemon.WriteJSON(w, http.StatusOK, d.Info())
	})
	mux.HandleFunc("DELETE /v1/devices/{name}", func(w http.ResponseWriter, r *http.Request) {
		if err := m.Remove(r.Context(), r.PathValue("name")); err != nil {
			apiError(w, err)
			return
		}
		daemon.WriteJSON(w, http.StatusOK, map[string]string{"removed": r.PathValue("name")})
	})
	mux.HandleFunc("GET /v1/devices/{name}/stats", func(w http.ResponseWriter, r *http.Request) {
		d, err := m.Find(r.PathValue("name"))
		if err != nil {
			daemon.WriteError(w, http.StatusNotFound, err, "rbdctl -l lists the devices")
			return
		}
		daemon.WriteJSON(w, http.StatusOK, map[string]any{"device": d.Info(), "stats": d.Stats.Snapshot()})
	})
	return mux
}
