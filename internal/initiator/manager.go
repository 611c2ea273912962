package initiator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"rbd/internal/auth"
	"rbd/internal/client"
	"rbd/internal/daemon"
	"rbd/internal/nbd"
	"rbd/internal/stats"
	"rbd/internal/transport"
	"rbd/internal/wire"
)

// Config are the manager's defaults and environment.
type Config struct {
	Queues     int // RDMA connections (and NBD sockets) per device; default one per CPU up to 4
	QueueDepth int // requests in flight per queue (default 128)
	MaxIO      int // slot size asked for (default 256 KiB)
	Inline     int // inline I/O asked for (default 4096; -1: none)
	// Timeout is the kernel's per-request timeout (NBD_ATTR_TIMEOUT; 0:
	// DefaultTimeout, negative: none). When a request runs past it, the
	// kernel gives up the socket under it and sends its requests again once
	// it has a live one: rbdi hands it a new socket at once (kernel.go), so
	// nothing fails, and requests a killed rbdi left unanswered come back.
	Timeout time.Duration
	// Reconnecting a queue whose connection died: see client.QueueConfig
	// (ReconnectDelay default 2 s, backing off to 10 s; CtrlLossTimeout
	// default 600 s, negative: forever). NoReconnect fails I/O at once.
	ReconnectDelay, CtrlLossTimeout time.Duration
	NoReconnect                     bool
	// FastIOFailTimeout fails a reconnecting queue's I/O after this long
	// while it goes on reconnecting (client.QueueConfig; 0: off).
	FastIOFailTimeout time.Duration
	// DeadConnTimeout lets I/O wait this long for a new connection when all
	// have died, instead of failing at once (NBD_ATTR_DEAD_CONN_TIMEOUT):
	// what a device left by a stopped rbdi waits for the next one.
	DeadConnTimeout time.Duration
	// StateDir keeps each device's state (state.go) so that a restarted
	// rbdi adopts the kernel devices the old one left; "" keeps none.
	StateDir string
	// RemoveOnExit: Close removes the devices (flushing each; those in use
	// stay) instead of leaving them for the next rbdi.
	RemoveOnExit bool
	// KeepAlive and KeepAliveTimeout: see client.QueueConfig.
	KeepAlive, KeepAliveTimeout time.Duration
	DevDir                      string // where rbdiN links go (default /dev)
	// TargetKeys names the key file of each target that requires
	// authentication, by the target's address or name as devices give it
	// (rbdi.toml's [[target]]); a device's own KeyFile wins.
	TargetKeys map[string]string
	Log        *slog.Logger
	Collector  *stats.Collector
	Sysfs      nbd.Sysfs
	// OnChange, if set, is called (without the manager's lock) after a
	// device was added or removed or failed: rbdi tells systemd its STATUS=.
	OnChange func()
	// Transport makes the queues' connections (default RDMA over rdma_cm;
	// tests use internal/transport/memt). With one set, the route to the
	// target is not checked for an RDMA device.
	Transport transport.Dialer
}

// Defaults.
const (
	// DefaultTimeout is the kernel's per-request timeout (as NVMe's
	// io_timeout): what a request that an rbdi killed left unanswered waits
	// before the kernel sends it again, to the rbdi that adopted the device.
	DefaultTimeout = 30 * time.Second
	// DefaultDeadConnTimeout: how long a device's I/O waits for new sockets
	// when all have died (rbdi stopped or restarting).
	DefaultDeadConnTimeout = 60 * time.Second
	maxBlockSize           = 4096 // the kernel NBD driver's largest block size (a page)
)

// Manager owns the initiator's devices. Its methods are safe for concurrent use.
type Manager struct {
	cfg Config
	log *slog.Logger

	state stateStore

	mu      sync.Mutex
	devices map[int]*Device
	adding  map[int]mapping // numbers being set up, and what for
	closed  bool
	// sockMu makes NBD sockets one at a time (a path is checked and taken
	// at once).
	sockMu sync.Mutex
	// onChange is Config.OnChange, or a no-op.
	onChange func()
}

// mapping is what a device maps: the target's address and port, and the
// export. A host maps each at most once.
type mapping struct {
	target netip.AddrPort
	export string
}

// NewManager makes a device manager.
func NewManager(cfg Config) *Manager {
	if cfg.Queues <= 0 {
		cfg.Queues = min(runtime.NumCPU(), 4)
	}
	if cfg.QueueDepth <= 0 {
		cfg.QueueDepth = client.DefaultDepth
	}
	if cfg.MaxIO <= 0 {
		cfg.MaxIO = client.DefaultMaxIO
	}
	if cfg.Inline == 0 {
		cfg.Inline = client.DefaultInline
	} else if cfg.Inline < 0 {
		cfg.Inline = 0
	}
	if cfg.CtrlLossTimeout == 0 {
		cfg.CtrlLossTimeout = client.DefaultCtrlLossTimeout
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	} else if cfg.Timeout < 0 {
		cfg.Timeout = 0
	}
	if cfg.DevDir == "" {
		cfg.DevDir = "/dev"
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	m := &Manager{cfg: cfg, log: cfg.Log, devices: map[int]*Device{}, adding: map[int]mapping{}, onChange: cfg.OnChange,
		state: stateStore{dir: cfg.StateDir}}
	if m.onChange == nil {
		m.onChange = func() {}
	}
	return m
}

// AddRequest asks for a new device.
type AddRequest struct {
	Target   string `json:"target" toml:"target"` // address or name, with an optional :port
	Port     uint16 `json:"port,omitempty" toml:"port"`
	Export   string `json:"export" toml:"export"` // the device's path on the target
	ReadOnly bool   `json:"read_only,omitempty" toml:"read_only"`
	Queues   int    `json:"queues,omitempty" toml:"queues"`
	// NBDSocket serves the device on this NBD Unix socket too (QEMU,
	// qemu-img, libnbd, fio's nbd engine); NoKernelDevice makes no
	// /dev/rbdiN (the socket only). SocketMode (octal, default 0600) and
	// SocketOwner (USER[:GROUP], default rbdi's) are the socket's.
	NBDSocket      string `json:"nbd_socket,omitempty" toml:"nbd_socket"`
	NoKernelDevice bool   `json:"no_kernel_device,omitempty" toml:"no_kernel_device"`
	SocketMode     string `json:"socket_mode,omitempty" toml:"socket_mode"`
	SocketOwner    string `json:"socket_owner,omitempty" toml:"socket_owner"`
	// KeyFile is the export's pre-shared key (root-only, e.g.
	// /etc/rbd/keys/db.key), the same as the target's key_file for the
	// export: rbdi authenticates with it and makes the target prove it.
	// Only the path travels over the control socket; rbdi reads the file.
	KeyFile string `json:"key_file,omitempty" toml:"key_file"`
}

// Error is a failure a person can act on: what went wrong and what to do.
type Error struct {
	Msg  string
	Hint string
	Err  error
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Err }

// MappedError is the Err of Add's *Error when this host has the export
// mapped already (same target address and port, same export), as Device.
// rbdi's control socket answers with that device instead, unless asked not
// to (rbdctl --no-reuse).
type MappedError struct{ Device *Device }

func (e *MappedError) Error() string {
	return fmt.Sprintf("export %s on %s is mapped already as %s", e.Device.Export, e.Device.Target, e.Device)
}

// Add connects to the target, opens the export and creates the device.
func (m *Manager) Add(ctx context.Context, req AddRequest) (*Device, error) {
	return m.add(ctx, req, nil)
}

// add is Add, or with st the adoption of a device an earlier rbdi left
// (adopt.go): same number, session, queues and kernel device.
func (m *Manager) add(ctx context.Context, req AddRequest, st *deviceState) (*Device, error) {
	if req.Export == "" {
		return nil, &Error{Msg: "no target device given", Hint: "name the device on the target with -d, e.g. -d /dev/ram0"}
	}
	port := req.Port
	if port == 0 {
		port = wire.DefaultPort
	}
	queues := req.Queues
	if queues <= 0 {
		queues = m.cfg.Queues
	}
	if st != nil {
		queues = st.Queues
	}
	if queues > 64 {
		return nil, &Error{Msg: fmt.Sprintf("%d queues: at most 64", queues)}
	}
	sc, err := parseSocketConfig(req)
	if err != nil {
		return nil, err
	}
	kernel := !req.NoKernelDevice
	var to netip.AddrPort
	if st != nil {
		// the address the device was made with (the kernel device's backend
		// names it), not what the name resolves to now
		to, err = netip.ParseAddrPort(st.TargetAddr)
	} else {
		to, err = daemon.Resolve(ctx, req.Target, port)
	}
	if err != nil {
		var re *daemon.ResolveError
		if errors.As(err, &re) {
			return nil, &Error{Msg: fmt.Sprintf("target name %s does not resolve", re.Name), Hint: "check the name, or give the target's IP address", Err: err}
		}
		return nil, &Error{Msg: err.Error(), Err: err}
	}
	keyFile := req.KeyFile
	if keyFile == "" {
		keyFile = m.keyFileFor(req.Target, to)
	}
	var key auth.Key
	if keyFile != "" {
		if key, err = auth.LoadKeyFile(keyFile); err != nil {
			return nil, &Error{Msg: err.Error(), Hint: "the key file must hold the export's key (the target's key_file), readable by root only", Err: err}
		}
	}
	// first, under the lock that also reserves the number: is it mapped already?
	want := -1
	if st != nil {
		want = st.Num
	}
	num, err := m.reserveNumber(mapping{to, req.Export}, want)
	var me *MappedError
	if errors.As(err, &me) && (sc.path != "" && me.Device.Socket() != sc.path || kernel && !me.Device.kernel) {
		// the existing device lacks what was asked for: do not answer with it
		d := me.Device
		return nil, &Error{Msg: fmt.Sprintf("export %s on %s is mapped already as %s, with other NBD socket options", d.Export, d.Target, d),
			Hint: fmt.Sprintf("remove it first (rbdctl -r -d %s), then map it with the options wanted", d.ref())}
	}
	if err != nil {
		return nil, err
	}
	defer m.unreserve(num)
	if st != nil && kernel {
		if err := m.checkAdoptable(st); err != nil {
			return nil, err
		}
	}
	var nl *nbd.Client
	if kernel {
		nl, err = nbd.Dial()
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, &Error{Msg: "the kernel's nbd module is not loaded", Hint: "load it: modprobe nbd (and add nbd to /etc/modules-load.d/), or serve the device on an NBD socket only (--nbd-socket PATH --no-kernel-device)", Err: err}
			}
			return nil, &Error{Msg: "kernel NBD interface: " + err.Error(), Err: err}
		}
		defer nl.Close()
	}
	if sc.path != "" { // before the target is bothered (a stale socket passes)
		m.sockMu.Lock()
		err := checkSocketPath(sc)
		m.sockMu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	var iface, rdev string
	if m.cfg.Transport == nil {
		iface, rdev, err = checkRoute(to.Addr())
		if err != nil {
			var re *RouteError
			if errors.As(err, &re) {
				return nil, &Error{Msg: re.Reason, Hint: re.Hint, Err: err}
			}
			return nil, err
		}
	}
	d := &Device{Num: num, TargetName: req.Target, Target: to, Export: req.Export, Since: time.Now(), Stats: stats.NewCounters(), kernel: kernel, req: req}
	d.backend = fmt.Sprintf("rbd:%s:%s", to, req.Export)
	d.adopted = st != nil
	d.log = m.log.With("device", d.Name(), "target", to, "export", req.Export)
	d.state.Store(StateConnecting)
	d.ctx, d.stop = context.WithCancel(context.Background())
	ccfg := client.Config{Target: to, Export: req.Export, Queues: queues, ReadOnly: req.ReadOnly, Key: key, Log: m.log.With("device", d.Name()), Stats: d.Stats, Transport: m.cfg.Transport,
		Queue: client.QueueConfig{Depth: m.cfg.QueueDepth, MaxIO: m.cfg.MaxIO, Inline: m.cfg.Inline,
			KeepAlive: m.cfg.KeepAlive, KeepAliveTimeout: m.cfg.KeepAliveTimeout,
			ReconnectDelay: m.cfg.ReconnectDelay, CtrlLossTimeout: m.cfg.CtrlLossTimeout, NoReconnect: m.cfg.NoReconnect,
			FastIOFailTimeout: m.cfg.FastIOFailTimeout}}
	if st != nil {
		ccfg.Session, _ = st.session() // checked when loaded
		if kernel {
			d.backend = st.Backend
		}
	}
	sess, err := client.Dial(ctx, ccfg)
	if err == nil && queues > 1 && sess.Export.Caps&wire.CapMultiConn == 0 && st == nil {
		// without cross-queue flush visibility the kernel must use one socket
		sess.Close()
		ccfg.Queues = 1
		sess, err = client.Dial(ctx, ccfg)
	}
	if err != nil {
		d.stop()
		return nil, addError(err, to, req.Export)
	}
	d.sess = sess
	d.writes.init(len(sess.Queues()))
	d.ReadOnly = sess.Export.Caps&wire.CapReadOnly != 0
	if bs := sess.Export.LogicalBlockSize; bs > maxBlockSize && kernel {
		sess.Close()
		d.stop()
		return nil, &Error{Msg: fmt.Sprintf("export %s has %d-byte blocks; the kernel's NBD driver takes at most %d", req.Export, bs, maxBlockSize),
			Hint: "serve it on an NBD socket only (--nbd-socket PATH --no-kernel-device)"}
	}
	if kernel {
		connect := func() error { return m.connectNBD(nl, d) }
		if st != nil {
			connect = func() error { return m.adoptNBD(nl, d, st) }
		}
		if err := connect(); err != nil {
			sess.Close()
			d.stop()
			return nil, err
		}
	}
	if sc.path != "" {
		if err := m.listenSocket(d, sc); err != nil {
			m.teardown(d)
			return nil, err
		}
	}
	if kernel {
		if err := m.link(d); err != nil {
			m.teardown(d)
			return nil, err
		}
		// udev claims the link (60-rbd.rules), so that systemd knows the
		// name: a mount or unit naming /dev/rbdiN waits for it
		if err := m.cfg.Sysfs.Announce(d.Index); err != nil {
			d.log.Debug("no change event for udev", "err", err)
		}
	}
	if err := m.saveState(d); err != nil {
		d.log.Warn("device state not kept: a restarted rbdi will not adopt this device", "err", err)
	} else {
		d.saved = m.state.enabled()
	}
	d.state.Store(StateConnected)
	m.mu.Lock()
	m.devices[num] = d
	m.mu.Unlock()
	if c := m.cfg.Collector; c != nil {
		l := stats.Labels{Device: d.Name(), Target: to.String(), Export: req.Export}
		c.Add(d.Name(), l, d.Stats)
		nbdName := ""
		if kernel {
			nbdName = filepath.Base(d.NBDPath())
		}
		c.AddInfo(d.Name(), l, sess.Export.Size, map[string]string{"nbd": nbdName, "rdma_device": rdev, "interface": iface,
			"block_size": strconv.Itoa(int(sess.Export.LogicalBlockSize)), "read_only": strconv.FormatBool(d.ReadOnly)})
		c.AddState(d.Name(), l, DeviceStates, func() string { st, _ := d.State(); return st })
	}
	go m.watch(d)
	m.onChange()
	what := "device added"
	if st != nil {
		what = "device adopted"
	}
	d.log.Info(what, "nbd", d.NBDPath(), "nbd_socket", d.Socket(), "size", sess.Export.Size, "block_size", sess.Export.LogicalBlockSize,
		"queues", len(sess.Queues()), "slot_size", sess.Queues()[0].SlotSize(), "rdma_device", rdev, "read_only", d.ReadOnly)
	return d, nil
}

// keyFileFor finds a target's key file in TargetKeys: by the name the
// device gives, then by the resolved address with and without the port.
func (m *Manager) keyFileFor(name string, to netip.AddrPort) string {
	for _, k := range []string{name, to.String(), to.Addr().String()} {
		if f := m.cfg.TargetKeys[k]; f != "" {
			return f
		}
	}
	return ""
}

// targetName is how errors name a target: its address, with the port when
// it is not the default.
func targetName(to netip.AddrPort) string {
	if to.Port() == wire.DefaultPort {
		return to.Addr().String()
	}
	return to.String()
}

func addError(err error, to netip.AddrPort, export string) error {
	var ae *client.AuthError
	if errors.As(err, &ae) {
		return &Error{Msg: ae.Error(), Hint: "check the target's address, and that its key_file for the export holds the same key as the key file given here", Err: err}
	}
	var ee *client.ExportError
	if errors.As(err, &ee) {
		switch {
		case ee.Status == wire.StatusAccess && !ee.Keyed:
			return &Error{Msg: fmt.Sprintf("target %s requires authentication for %s: give --key-file", targetName(to), export),
				Hint: fmt.Sprintf("rbdctl -n -a %s -d %s --key-file /etc/rbd/keys/NAME.key, with a copy of the target's key_file for the export (or key_file in rbdi.toml's [[target]] or [[device]]); the target says: %s", to.Addr(), export, ee.Message), Err: err}
		case ee.Status == wire.StatusAccess:
			return &Error{Msg: fmt.Sprintf("target %s refused the key for %s: %s", targetName(to), export, ee.Message),
				Hint: "the key file must hold the same key as the target's key_file for this export", Err: err}
		}
		switch ee.Status {
		case wire.StatusNoEnt, wire.StatusPerm:
			return &Error{Msg: fmt.Sprintf("export %s is not offered by target %s: %s", export, to, ee.Message), Hint: "rbdctl -l on the target lists its exports; check rbdt's --export or /etc/rbd/rbdt.toml", Err: err}
		case wire.StatusBusy:
			return &Error{Msg: fmt.Sprintf("export %s on %s is busy: %s", export, to, ee.Message), Hint: "remove it from the other initiator first, or map it read-only", Err: err}
		}
		return &Error{Msg: ee.Error(), Err: err}
	}
	var te *client.TargetError
	if errors.As(err, &te) {
		return &Error{Msg: te.Reason, Err: err}
	}
	return &Error{Msg: fmt.Sprintf("connecting to %s: %v", to, err), Err: err}
}

// reserveNumber picks the lowest free N for /dev/rbdiN, to map want. When
// a device maps want already it fails with a *MappedError (in an *Error);
// when another Add is setting want up, with an *Error.
func (m *Manager) reserveNumber(want mapping, num int) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, &Error{Msg: "rbdi is shutting down"}
	}
	for _, d := range m.devices {
		if d.Target == want.target && d.Export == want.export {
			me := &MappedError{Device: d}
			return 0, &Error{Msg: me.Error(), Hint: fmt.Sprintf("use %s, or remove it first: rbdctl -r -d %s", d, d.ref()), Err: me}
		}
	}
	for n, a := range m.adding {
		if a == want {
			return 0, &Error{Msg: fmt.Sprintf("export %s on %s is being mapped right now, as /dev/rbdi%d", want.export, want.target, n), Hint: "rbdctl -l shows it once it is there"}
		}
	}
	if num >= 0 { // adopting: the device's own number
		if _, busy := m.adding[num]; busy || m.devices[num] != nil {
			return 0, &Error{Msg: fmt.Sprintf("/dev/rbdi%d is taken already", num)}
		}
		m.adding[num] = want
		return num, nil
	}
	for n := 0; n < 1<<16; n++ {
		if _, busy := m.adding[n]; busy || m.devices[n] != nil {
			continue
		}
		if _, err := os.Lstat(filepath.Join(m.cfg.DevDir, "rbdi"+strconv.Itoa(n))); err == nil {
			continue // a stale link, or someone else's
		}
		m.adding[n] = want
		return n, nil
	}
	return 0, &Error{Msg: "no free rbdi number"}
}

func (m *Manager) unreserve(n int) {
	m.mu.Lock()
	delete(m.adding, n)
	m.mu.Unlock()
}

func (m *Manager) link(d *Device) error {
	p := filepath.Join(m.cfg.DevDir, d.Name())
	target := filepath.Base(d.NBDPath())
	if old, err := os.Readlink(p); err == nil && old == target {
		return nil // adopted: the old rbdi's link
	} else if err == nil && d.adopted {
		os.Remove(p) // a stale link where the adopted device's belongs
	}
	if err := os.Symlink(target, p); err != nil {
		return &Error{Msg: fmt.Sprintf("creating %s: %v", p, err), Err: err}
	}
	return nil
}

// watch follows the device's queues. A queue that is finished for good (its
// connection lost beyond ctrl-loss-timeout, or refused) has failed its
// commands; its NBD socket is closed, so that the kernel sends no more to
// it and uses the others. When all are finished the device has failed.
func (m *Manager) watch(d *Device) {
	qs := d.sess.Queues()
	done := make(chan *client.Queue, len(qs))
	for _, q := range qs {
		go func() {
			select {
			case <-q.Done():
				done <- q
			case <-d.ctx.Done():
			}
		}()
	}
	for left := len(qs); left > 0; left-- {
		select {
		case q := <-done:
			if d.ctx.Err() != nil {
				return
			}
			_, why := q.Dead()
			if left > 1 {
				d.log.Error("queue lost; the device goes on with its other queues", "queue", q.Index(), "reason", why)
				if i := q.Index(); i < len(d.kfs) {
					d.kfs[i].giveUp()
				}
				if d.sock != nil {
					d.sock.queueLost(q.Index())
				}
				continue
			}
			d.why.Store(why)
			d.state.Store(StateFailed)
			d.log.Error("connection to the target lost; I/O to the device now fails", "queue", q.Index(), "reason", why)
			m.onChange()
		case <-d.ctx.Done():
			return
		}
	}
}

// Find returns the device called name: rbdiN, /dev/rbdiN or /dev/nbdX, or
// its NBD socket's path (also as rbdctl sends it, with / as _).
func (m *Manager) Find(name string) (*Device, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	base := filepath.Base(name)
	for _, d := range m.devices {
		if d.Name() == base || d.kernel && filepath.Base(d.NBDPath()) == base {
			return d, nil
		}
		if p := d.Socket(); p != "" && (p == name || strings.ReplaceAll(p, "/", "_") == name) {
			return d, nil
		}
	}
	return nil, &Error{Msg: fmt.Sprintf("no rbd device %s", name), Hint: "rbdctl -l lists the devices"}
}

// List returns the devices by number.
func (m *Manager) List() []*Device {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Device, 0, len(m.devices))
	for _, d := range m.devices {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Num < out[j].Num })
	return out
}

// Session is the device's RDMA session.
func (d *Device) Session() *client.Session { return d.sess }

// Remove flushes, disconnects and frees a device. A device in use (mounted,
// or held by device-mapper or md) is refused.
func (m *Manager) Remove(ctx context.Context, name string) error {
	d, err := m.Find(name)
	if err != nil {
		return err
	}
	if d.kernel {
		if where := inUse(d.NBDPath(), filepath.Base(d.NBDPath())); where != "" {
			return &Error{Msg: fmt.Sprintf("%s is in use: %s", d.Path(), where), Hint: "unmount it (or stop what holds it) first"}
		}
	}
	m.mu.Lock()
	if m.devices[d.Num] != d {
		m.mu.Unlock()
		return &Error{Msg: fmt.Sprintf("%s is being removed already", d)}
	}
	delete(m.devices, d.Num)
	m.mu.Unlock()
	st, _ := d.State()
	d.state.Store(StateRemoving)
	// the NBD socket's clients first: their requests are answered, then
	// they are disconnected (and the socket file removed)
	if d.sock != nil {
		d.sock.shutdown(10 * time.Second)
	}
	// flush what the page cache holds, and the target's cache with it
	if st != StateFailed {
		if d.kernel {
			d.flushKernel("flush before removal")
		} else if err := d.flushTarget(ctx); err != nil {
			d.log.Warn("flush before removal", "err", err)
		}
	}
	m.teardown(d)
	if err := m.state.remove(d.Num); err != nil {
		d.log.Warn("device state left behind", "err", err)
	}
	d.log.Info("device removed")
	m.onChange()
	return nil
}

// teardown closes the NBD socket, disconnects the kernel device and the
// session and frees the name.
func (m *Manager) teardown(d *Device) {
	if d.sock != nil {
		d.sock.shutdown(10 * time.Second)
	}
	d.closing.Store(true) // the sockets that end now are not replaced
	if d.kernel {
		if nl, err := nbd.Dial(); err == nil {
			if err := nl.Disconnect(d.Index); err != nil {
				d.log.Warn("NBD disconnect", "err", err)
			}
			nl.Close()
		}
		done := make(chan struct{})
		go func() { d.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			d.log.Warn("NBD sockets still open after disconnect; closing them")
		}
	}
	d.stopServing()
	if d.kernel {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		m.cfg.Sysfs.WaitForDisconnect(ctx, d.Index)
		cancel()
		os.Remove(filepath.Join(m.cfg.DevDir, d.Name()))
	}
	if c := m.cfg.Collector; c != nil {
		c.Remove(d.Name())
	}
}

// Close ends the manager, as on daemon shutdown: with a state directory
// each device is left for the next rbdi (detach); without one, or with
// RemoveOnExit, each is removed (flushing it), except those in use.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	for _, d := range m.List() {
		if d.saved && !m.cfg.RemoveOnExit {
			m.detach(d)
			continue
		}
		if err := m.Remove(context.Background(), d.Name()); err != nil {
			d.log.Warn("left in place at shutdown", "err", err)
		}
	}
	m.state.close()
}

// inUse says where the block device (or a partition of it) is mounted or who
// holds it; "" when free.
func inUse(devPath, base string) string {
	var st unix.Stat_t
	if err := unix.Stat(devPath, &st); err != nil {
		return ""
	}
	devs := map[string]bool{fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)): true}
	parts, _ := filepath.Glob("/sys/block/" + base + "/" + base + "p*/dev")
	for _, p := range parts {
		if b, err := os.ReadFile(p); err == nil {
			devs[strings.TrimSpace(string(b))] = true
		}
	}
	if f, err := os.Open("/proc/self/mountinfo"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) >= 5 && devs[fields[2]] {
				return "mounted on " + fields[4]
			}
		}
	}
	if hs, _ := os.ReadDir("/sys/block/" + base + "/holders"); len(hs) > 0 {
		return "held by " + hs[0].Name()
	}
	// an exclusive opener (a filesystem mounted in another namespace, swap, a VM)
	fd, err := unix.Open(devPath, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if errors.Is(err, syscall.EBUSY) {
		return "open exclusively by another program"
	}
	if err == nil {
		unix.Close(fd)
	}
	return ""
}
