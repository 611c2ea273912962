package stats

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// The roles a Collector can have; the value is also the role label.
const (
	RoleInitiator = "initiator"
	RoleTarget    = "target"
)

// Labels identify the series of one Counters. The initiator sets Device
// ("rbdi0"), Target (the target's address) and Export; the target sets Export
// and, for a session's Counters, Session: the session's ordinal on its export
// ("1", "2", ...: the smallest free one when the session opens), never its id,
// which is a credential. Values must be bounded: names and small numbers, never
// ids, offsets or other per-request values.
type Labels struct {
	Device  string `json:"device,omitempty"`
	Target  string `json:"target,omitempty"`
	Export  string `json:"export,omitempty"`
	Session string `json:"session,omitempty"`
}

// Entry is one registered Counters as Entries reports it.
type Entry struct {
	Key    string   `json:"key"`
	Labels Labels   `json:"labels"`
	Stats  Snapshot `json:"stats"`
}

type counterEntry struct {
	labels Labels
	c      *Counters
}

type infoEntry struct {
	labels Labels
	size   uint64
	extra  []string // values of the collector's info labels, in order
	// fn, when set, gives size and extra at scrape time (AddInfoFunc).
	fn func() (size uint64, extra map[string]string, ok bool)
}

// The info labels of the daemons' rbd_device_info: rbdi's (NewCollector(
// RoleInitiator, InitiatorInfoLabels...)) and rbdt's. They are here so that
// the tests of the alert rules and the dashboard see what the daemons emit.
var (
	// InitiatorInfoLabels: the NBD device ("nbd0"), the local RDMA device
	// and network interface the connection uses, the logical block size and
	// whether the device is read-only.
	InitiatorInfoLabels = []string{"nbd", "rdma_device", "interface", "block_size", "read_only"}
	// TargetInfoLabels: the exported path, its logical block size, and
	// whether it is exported read-only and shared.
	TargetInfoLabels = []string{"path", "block_size", "read_only", "shared"}
	// ExportStates are the states of a target's rbd_device_state: "ready"
	// once the export's backend is open, "unavailable" while it could not be
	// opened (rbdt tries again when an initiator asks for it). The
	// initiator's are initiator.DeviceStates.
	ExportStates = []string{"ready", "unavailable"}
)

// Collector is a prometheus.Collector over a set of Counters (and static
// device information) registered by key. It builds constant metrics from
// fresh snapshots on every scrape, so the series of a removed key vanish. All
// methods are safe for concurrent use; Add, AddInfo and Remove take a lock that
// Collect holds only while copying the set, never while snapshotting.
type Collector struct {
	role      string
	idNames   []string // identity label names for the role
	infoNames []string // extra rbd_device_info label names

	started, completed                *prometheus.Desc
	ops, bytes, errs                  *prometheus.Desc
	inflight, inflightMax             *prometheus.Desc
	duration                          *prometheus.Desc
	inline, fua, stalls               *prometheus.Desc
	cqWaits, cqPolled, reconn, resent *prometheus.Desc
	sockReplaced, kernResent          *prometheus.Desc
	info, size                        *prometheus.Desc
	build                             *prometheus.Desc
	state                             *prometheus.Desc

	mu       sync.RWMutex
	counters map[string]counterEntry
	infos    map[string]infoEntry
	states   map[string]stateEntry
	buildLV  []string // version, goversion; nil until SetBuildInfo
}

type stateEntry struct {
	labels Labels
	states []string
	now    func() string
}

var labelNameRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// NewCollector returns an empty Collector for role (RoleInitiator or
// RoleTarget). infoLabels name the extra labels of rbd_device_info, fixed for
// the Collector's life (e.g. "transport", "read_only"); AddInfo fills them.
// NewCollector panics on an unknown role or an invalid or reserved info label
// name, which are programming errors.
func NewCollector(role string, infoLabels ...string) *Collector {
	var ids []string
	switch role {
	case RoleInitiator:
		ids = []string{"device", "target", "export"}
	case RoleTarget:
		ids = []string{"export", "session"}
	default:
		panic(fmt.Sprintf("stats: NewCollector: unknown role %q", role))
	}
	reserved := []string{"role", "device", "target", "export", "session", "op", "kind", "reason"}
	seen := map[string]bool{}
	for _, n := range infoLabels {
		if !labelNameRE.MatchString(n) || strings.HasPrefix(n, "__") || slices.Contains(reserved, n) || seen[n] {
			panic(fmt.Sprintf("stats: NewCollector: invalid, reserved or repeated info label %q", n))
		}
		seen[n] = true
	}
	c := &Collector{
		role:      role,
		idNames:   ids,
		infoNames: slices.Clone(infoLabels),
		counters:  make(map[string]counterEntry),
		infos:     make(map[string]infoEntry),
		states:    make(map[string]stateEntry),
	}
	cl := prometheus.Labels{"role": role}
	desc := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, append(slices.Clone(ids), extra...), cl)
	}
	c.started = desc("rbd_requests_started_total", "Block requests started.")
	c.completed = desc("rbd_requests_completed_total", "Block requests completed, successfully or not.")
	c.ops = desc("rbd_ops_total", "Block requests completed, successfully or not, by op.", "op")
	c.bytes = desc("rbd_bytes_total", "Bytes read, written, trimmed or zeroed by successful requests, by op.", "op")
	c.errs = desc("rbd_errors_total", `Errors by op and kind; op="none" counts errors not tied to a request.`, "op", "kind")
	c.inflight = desc("rbd_inflight_requests", "Block requests started and not yet completed.")
	c.inflightMax = desc("rbd_inflight_requests_max", "Most block requests ever in flight at once.")
	c.duration = desc("rbd_request_duration_seconds", "Latency of completed block requests, by op.", "op")
	c.inline = desc("rbd_inline_ops_total", "Requests whose data travelled inline in the message instead of by RDMA, by op.", "op")
	c.fua = desc("rbd_fua_writes_total", "Writes with forced unit access (stable before completion).")
	c.stalls = desc("rbd_stalls_total", `Submissions that waited for a full send queue (reason="sq_full") or a free request slot (reason="no_slot").`, "reason")
	c.cqWaits = desc("rbd_cq_waits_total", "Times the completion poller slept on the completion channel.")
	c.cqPolled = desc("rbd_cq_polled_max", "Most completions returned by one poll.")
	c.reconn = desc("rbd_reconnects_total", "Connections re-established.")
	c.resent = desc("rbd_resent_total", "Commands sent again on a new connection after theirs died.")
	c.sockReplaced = desc("rbd_nbd_sockets_replaced_total", "Kernel NBD sockets the kernel gave up on that rbdi replaced.")
	c.kernResent = desc("rbd_kernel_resent_writes_total", "Writes the kernel sent again while rbdi held their first copy (ordered after it).")
	c.info = desc("rbd_device_info", "Static information about a device or export; always 1.", c.infoNames...)
	c.size = desc("rbd_device_size_bytes", "Size of a device or export in bytes.")
	c.state = desc("rbd_device_state", "The state of a device (initiator: its connection) or export (target: its backend): one series per state, 1 for the current one.", "state")
	c.build = prometheus.NewDesc("rbd_build_info", "The daemon's build: its version and the Go version it was built with; always 1.",
		[]string{"version", "goversion"}, nil)
	return c
}

// Role returns the Collector's role.
func (c *Collector) Role() string { return c.role }

// checkLabels reports whether l suits the role.
func (c *Collector) checkLabels(l Labels) error {
	for _, v := range []string{l.Device, l.Target, l.Export, l.Session} {
		if !utf8.ValidString(v) {
			return fmt.Errorf("stats: label value %q is not valid UTF-8", v)
		}
	}
	switch c.role {
	case RoleInitiator:
		if l.Device == "" {
			return errors.New("stats: initiator labels need a device")
		}
		if l.Session != "" {
			return errors.New("stats: initiator labels have no session")
		}
	case RoleTarget:
		if l.Export == "" {
			return errors.New("stats: target labels need an export")
		}
		if l.Device != "" || l.Target != "" {
			return errors.New("stats: target labels have no device or target")
		}
	}
	return nil
}

// values returns the identity label values of l for the role, with room for
// extra more.
func (c *Collector) values(l Labels, extra int) []string {
	v := make([]string, 0, len(c.idNames)+extra)
	if c.role == RoleInitiator {
		return append(v, l.Device, l.Target, l.Export)
	}
	return append(v, l.Export, l.Session)
}

// Add registers counters under key with the series labels l, replacing what
// key had. It returns an error, and changes nothing, if counters is nil, if l
// lacks the role's required label (device on the initiator, export on the
// target) or has a label the role does not use, if a label value is not valid
// UTF-8, or if another key already has the same labels (its series would
// collide).
func (c *Collector) Add(key string, l Labels, counters *Counters) error {
	if counters == nil {
		return errors.New("stats: Add: nil Counters")
	}
	if err := c.checkLabels(l); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.counters {
		if k != key && e.labels == l {
			return fmt.Errorf("stats: Add %q: labels %+v already used by %q", key, l, k)
		}
	}
	c.counters[key] = counterEntry{labels: l, c: counters}
	return nil
}

// AddInfo registers, under key, the series rbd_device_info (value 1, with the
// identity labels l and the Collector's info labels taken from extra, "" for
// those extra lacks) and rbd_device_size_bytes (value size), replacing what
// key had. It returns an error, and changes nothing, if l does not suit the
// role (as for Add), if extra has a key that is not one of the Collector's
// info labels or a value that is not valid UTF-8, or if another key's info
// already has the same labels.
func (c *Collector) AddInfo(key string, l Labels, size uint64, extra map[string]string) error {
	if err := c.checkLabels(l); err != nil {
		return err
	}
	for k, v := range extra {
		if !slices.Contains(c.infoNames, k) {
			return fmt.Errorf("stats: AddInfo %q: %q is not an info label of this collector (have %v)", key, k, c.infoNames)
		}
		if !utf8.ValidString(v) {
			return fmt.Errorf("stats: AddInfo %q: label value %q is not valid UTF-8", key, v)
		}
	}
	vals := make([]string, len(c.infoNames))
	for i, n := range c.infoNames {
		vals[i] = extra[n]
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.infos {
		if k != key && e.labels == l {
			return fmt.Errorf("stats: AddInfo %q: labels %+v already used by %q", key, l, k)
		}
	}
	c.infos[key] = infoEntry{labels: l, size: size, extra: vals}
	return nil
}

// AddInfoFunc is AddInfo with the size and the info label values read from
// f at every scrape, for information that may appear or change after the
// key is added (a target's export whose backend opens only later). While f
// reports ok false the key has neither series. Extra keys that are not info
// labels of the Collector are ignored, and invalid UTF-8 is replaced. f must
// be cheap and safe for concurrent use.
func (c *Collector) AddInfoFunc(key string, l Labels, f func() (size uint64, extra map[string]string, ok bool)) error {
	if f == nil {
		return errors.New("stats: AddInfoFunc: nil func")
	}
	if err := c.checkLabels(l); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.infos {
		if k != key && e.labels == l {
			return fmt.Errorf("stats: AddInfoFunc %q: labels %+v already used by %q", key, l, k)
		}
	}
	c.infos[key] = infoEntry{labels: l, fn: f}
	return nil
}

// AddState registers, under key, the gauge rbd_device_state{state} for each
// of states: 1 for the one now returns at scrape time, 0 for the others.
// now must be cheap and safe for concurrent use.
func (c *Collector) AddState(key string, l Labels, states []string, now func() string) error {
	if err := c.checkLabels(l); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.states[key] = stateEntry{labels: l, states: slices.Clone(states), now: now}
	return nil
}

// SetBuildInfo makes the Collector emit rbd_build_info{version,goversion} 1
// (both daemons set it at start, from internal/version). Before it is called
// the series is absent.
func (c *Collector) SetBuildInfo(version, goVersion string) {
	c.mu.Lock()
	c.buildLV = []string{version, goVersion}
	c.mu.Unlock()
}

// Remove unregisters key's Counters and information, if any; their series
// are gone from the next scrape.
func (c *Collector) Remove(key string) {
	c.mu.Lock()
	delete(c.counters, key)
	delete(c.infos, key)
	delete(c.states, key)
	c.mu.Unlock()
}

// Entries returns a snapshot of every registered Counters, sorted by key, for
// control sockets and rbdctl.
func (c *Collector) Entries() []Entry {
	c.mu.RLock()
	keys := slices.Sorted(maps.Keys(c.counters))
	ents := make([]counterEntry, len(keys))
	for i, k := range keys {
		ents[i] = c.counters[k]
	}
	c.mu.RUnlock()
	out := make([]Entry, len(keys))
	for i, e := range ents {
		out[i] = Entry{Key: keys[i], Labels: e.labels, Stats: e.c.Snapshot()}
	}
	return out
}

// Describe sends the fixed descriptors of every metric the Collector can
// emit. It implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.started, c.completed, c.ops, c.bytes, c.errs, c.inflight, c.inflightMax,
		c.duration, c.inline, c.fua, c.stalls, c.cqWaits, c.cqPolled, c.reconn, c.resent, c.sockReplaced, c.kernResent, c.info, c.size, c.build, c.state,
	} {
		ch <- d
	}
}

// latencyBoundsSeconds are the histogram bounds as Prometheus wants them.
var latencyBoundsSeconds = func() (b [NumLatencyBuckets]float64) {
	for i, ns := range latencyBounds {
		b[i] = float64(ns) / 1e9
	}
	return b
}()

// bytesOps are the ops with a meaningful byte count (flush has none).
var bytesOps = []Op{OpRead, OpWrite, OpTrim, OpWriteZeroes}

// Collect snapshots every registered Counters and sends their metrics. It
// implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.RLock()
	ents := slices.Collect(maps.Values(c.counters))
	infos := slices.Collect(maps.Values(c.infos))
	states := slices.Collect(maps.Values(c.states))
	build := c.buildLV
	c.mu.RUnlock()
	if build != nil {
		ch <- prometheus.MustNewConstMetric(c.build, prometheus.GaugeValue, 1, build...)
	}
	for _, e := range states {
		cur := e.now()
		for _, st := range e.states {
			v := 0.0
			if st == cur {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, append(c.values(e.labels, 0), st)...)
		}
	}
	// A stable order makes scrapes easier to read and compare.
	sort.Slice(ents, func(i, j int) bool { return less(ents[i].labels, ents[j].labels) })

	counter := func(d *prometheus.Desc, v uint64, lv []string, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append(lv[:len(lv):len(lv)], extra...)...)
	}
	gauge := func(d *prometheus.Desc, v float64, lv []string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}
	for _, e := range ents {
		s := e.c.Snapshot()
		lv := c.values(e.labels, 2)
		counter(c.started, s.RequestsStarted, lv)
		counter(c.completed, s.RequestsCompleted, lv)
		gauge(c.inflight, float64(s.InFlight), lv)
		gauge(c.inflightMax, float64(s.MaxInFlight), lv)
		for _, o := range s.Ops {
			op := o.Op.String()
			counter(c.ops, o.Ops, lv, op)
			for k := ErrNone + 1; k < NumErrKinds; k++ {
				counter(c.errs, o.ErrorsByKind[k], lv, op, k.String())
			}
			h := o.Latency
			buckets := make(map[float64]uint64, len(h.Buckets))
			for i, b := range h.Buckets {
				buckets[latencyBoundsSeconds[i]] = b.Count
			}
			ch <- prometheus.MustNewConstHistogram(c.duration, h.Count, h.Sum.Seconds(), buckets, append(lv[:len(lv):len(lv)], op)...)
		}
		for _, op := range bytesOps {
			counter(c.bytes, s.Ops[op].Bytes, lv, op.String())
		}
		for k := ErrNone + 1; k < NumErrKinds; k++ {
			counter(c.errs, s.OtherErrors[k], lv, "none", k.String())
		}
		counter(c.inline, s.InlineReads, lv, OpRead.String())
		counter(c.inline, s.InlineWrites, lv, OpWrite.String())
		counter(c.fua, s.FUAWrites, lv)
		counter(c.stalls, s.StallsSQFull, lv, "sq_full")
		counter(c.stalls, s.StallsNoSlot, lv, "no_slot")
		counter(c.cqWaits, s.CQWaits, lv)
		gauge(c.cqPolled, float64(s.MaxCQPolled), lv)
		counter(c.reconn, s.Reconnects, lv)
		counter(c.resent, s.Resent, lv)
		counter(c.sockReplaced, s.SocketsReplaced, lv)
		counter(c.kernResent, s.KernelResent, lv)
	}
	for _, e := range infos {
		size, extra := e.size, e.extra
		if e.fn != nil {
			sz, m, ok := e.fn()
			if !ok {
				continue
			}
			size, extra = sz, make([]string, len(c.infoNames))
			for i, n := range c.infoNames {
				extra[i] = strings.ToValidUTF8(m[n], "\uFFFD")
			}
		}
		lv := c.values(e.labels, len(extra))
		gauge(c.size, float64(size), lv)
		gauge(c.info, 1, append(lv, extra...))
	}
}

// less orders Labels field by field.
func less(a, b Labels) bool {
	if a.Device != b.Device {
		return a.Device < b.Device
	}
	if a.Target != b.Target {
		return a.Target < b.Target
	}
	if a.Export != b.Export {
		return a.Export < b.Export
	}
	return a.Session < b.Session
}

var _ prometheus.Collector = (*Collector)(nil)
