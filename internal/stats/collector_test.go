package stats

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// series finds the metric of family name whose labels include want; it
// returns nil if there is none.
func series(t *testing.T, g prometheus.Gatherer, name string, want map[string]string) *dto.Metric {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue next
				}
			}
			return m
		}
	}
	return nil
}

// labelText renders name, value pairs as the text format's label set, sorted
// by name as the registry sorts them.
func labelText(kv ...string) string {
	var pairs []string
	for i := 0; i+1 < len(kv); i += 2 {
		pairs = append(pairs, fmt.Sprintf("%s=%q", kv[i], kv[i+1]))
	}
	slices.Sort(pairs)
	return "{" + strings.Join(pairs, ",") + "}"
}

func pedantic(t *testing.T, c prometheus.Collector) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	return reg
}

func initiatorFixture(t *testing.T) (*Collector, *Counters, *Counters) {
	t.Helper()
	col := NewCollector(RoleInitiator, "transport", "read_only")
	a, b := NewCounters(), NewCounters()
	for range 3 {
		a.Done(OpRead, 4096, a.Start(OpRead), ErrNone)
	}
	a.Done(OpWrite, 8192, a.Start(OpWrite), ErrNone)
	a.Done(OpWrite, 8192, a.Start(OpWrite), ErrTransport)
	a.Done(OpTrim, 1<<20, a.Start(OpTrim), ErrNone)
	a.Start(OpFlush) // still in flight
	a.AddInlineRead()
	a.AddInlineWrite()
	a.AddInlineWrite()
	a.AddStallSQFull()
	a.AddStallNoSlot()
	a.AddStallNoSlot()
	a.AddStallNoSlot()
	a.AddCQWait()
	a.ObservePolled(12)
	a.AddReconnect()
	a.AddError(ErrInvalid)
	b.Done(OpWriteZeroes, 65536, b.Start(OpWriteZeroes), ErrNone)
	la := Labels{Device: "rbdi0", Target: "10.0.0.1:7000", Export: "disk0"}
	lb := Labels{Device: "rbdi1", Target: "10.0.0.2:7000", Export: "disk1"}
	for _, err := range []error{
		col.Add("rbdi0", la, a),
		col.Add("rbdi1", lb, b),
		col.AddInfo("rbdi0", la, 1<<30, map[string]string{"transport": "rxe", "read_only": "false"}),
		col.AddInfo("rbdi1", lb, 1<<20, map[string]string{"transport": "siw"}),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return col, a, b
}

func TestCollectorInitiator(t *testing.T) {
	col, _, _ := initiatorFixture(t)
	l0 := func(kv ...string) string {
		return labelText(append([]string{"device", "rbdi0", "export", "disk0", "role", "initiator", "target", "10.0.0.1:7000"}, kv...)...)
	}
	l1 := func(kv ...string) string {
		return labelText(append([]string{"device", "rbdi1", "export", "disk1", "role", "initiator", "target", "10.0.0.2:7000"}, kv...)...)
	}
	expected := `
# HELP rbd_requests_started_total Block requests started.
# TYPE rbd_requests_started_total counter
rbd_requests_started_total` + l0() + ` 7
rbd_requests_started_total` + l1() + ` 1
# HELP rbd_requests_completed_total Block requests completed, successfully or not.
# TYPE rbd_requests_completed_total counter
rbd_requests_completed_total` + l0() + ` 6
rbd_requests_completed_total` + l1() + ` 1
# HELP rbd_inflight_requests Block requests started and not yet completed.
# TYPE rbd_inflight_requests gauge
rbd_inflight_requests` + l0() + ` 1
rbd_inflight_requests` + l1() + ` 0
# HELP rbd_inflight_requests_max Most block requests ever in flight at once.
# TYPE rbd_inflight_requests_max gauge
rbd_inflight_requests_max` + l0() + ` 1
rbd_inflight_requests_max` + l1() + ` 1
# HELP rbd_ops_total Block requests completed, successfully or not, by op.
# TYPE rbd_ops_total counter
rbd_ops_total` + l0("op", "read") + ` 3
rbd_ops_total` + l0("op", "write") + ` 2
rbd_ops_total` + l0("op", "flush") + ` 0
rbd_ops_total` + l0("op", "trim") + ` 1
rbd_ops_total` + l0("op", "write_zeroes") + ` 0
rbd_ops_total` + l1("op", "read") + ` 0
rbd_ops_total` + l1("op", "write") + ` 0
rbd_ops_total` + l1("op", "flush") + ` 0
rbd_ops_total` + l1("op", "trim") + ` 0
rbd_ops_total` + l1("op", "write_zeroes") + ` 1
# HELP rbd_bytes_total Bytes read, written, trimmed or zeroed by successful requests, by op.
# TYPE rbd_bytes_total counter
rbd_bytes_total` + l0("op", "read") + ` 12288
rbd_bytes_total` + l0("op", "write") + ` 8192
rbd_bytes_total` + l0("op", "trim") + ` 1048576
rbd_bytes_total` + l0("op", "write_zeroes") + ` 0
rbd_bytes_total` + l1("op", "read") + ` 0
rbd_bytes_total` + l1("op", "write") + ` 0
rbd_bytes_total` + l1("op", "trim") + ` 0
rbd_bytes_total` + l1("op", "write_zeroes") + ` 65536
# HELP rbd_inline_ops_total Requests whose data travelled inline in the message instead of by RDMA, by op.
# TYPE rbd_inline_ops_total counter
rbd_inline_ops_total` + l0("op", "read") + ` 1
rbd_inline_ops_total` + l0("op", "write") + ` 2
rbd_inline_ops_total` + l1("op", "read") + ` 0
rbd_inline_ops_total` + l1("op", "write") + ` 0
# HELP rbd_stalls_total Submissions that waited for a full send queue (reason="sq_full") or a free request slot (reason="no_slot").
# TYPE rbd_stalls_total counter
rbd_stalls_total` + l0("reason", "sq_full") + ` 1
rbd_stalls_total` + l0("reason", "no_slot") + ` 3
rbd_stalls_total` + l1("reason", "sq_full") + ` 0
rbd_stalls_total` + l1("reason", "no_slot") + ` 0
# HELP rbd_cq_waits_total Times the completion poller slept on the completion channel.
# TYPE rbd_cq_waits_total counter
rbd_cq_waits_total` + l0() + ` 1
rbd_cq_waits_total` + l1() + ` 0
# HELP rbd_cq_polled_max Most completions returned by one poll.
# TYPE rbd_cq_polled_max gauge
rbd_cq_polled_max` + l0() + ` 12
rbd_cq_polled_max` + l1() + ` 0
# HELP rbd_reconnects_total Connections re-established.
# TYPE rbd_reconnects_total counter
rbd_reconnects_total` + l0() + ` 1
rbd_reconnects_total` + l1() + ` 0
# HELP rbd_device_info Static information about a device or export; always 1.
# TYPE rbd_device_info gauge
rbd_device_info` + l0("read_only", "false", "transport", "rxe") + ` 1
rbd_device_info` + l1("read_only", "", "transport", "siw") + ` 1
# HELP rbd_device_size_bytes Size of a device or export in bytes.
# TYPE rbd_device_size_bytes gauge
rbd_device_size_bytes` + l0() + ` 1.073741824e+09
rbd_device_size_bytes` + l1() + ` 1.048576e+06
`
	names := []string{
		"rbd_requests_started_total", "rbd_requests_completed_total", "rbd_inflight_requests",
		"rbd_inflight_requests_max", "rbd_ops_total", "rbd_bytes_total", "rbd_inline_ops_total",
		"rbd_stalls_total", "rbd_cq_waits_total", "rbd_cq_polled_max", "rbd_reconnects_total",
		"rbd_device_info", "rbd_device_size_bytes",
	}
	if err := testutil.CollectAndCompare(col, strings.NewReader(expected), names...); err != nil {
		t.Error(err)
	}

	reg := pedantic(t, col)
	for _, tc := range []struct {
		op, kind string
		want     float64
	}{
		{"write", "transport", 1},
		{"write", "io", 0},
		{"read", "transport", 0},
		{"none", "invalid", 1},
		{"none", "io", 0},
	} {
		m := series(t, reg, "rbd_errors_total", map[string]string{"device": "rbdi0", "op": tc.op, "kind": tc.kind})
		if m == nil || m.GetCounter().GetValue() != tc.want {
			t.Errorf("rbd_errors_total{op=%q,kind=%q} = %v, want %v", tc.op, tc.kind, m, tc.want)
		}
	}
	// One series per op and kind, plus op="none", for each device.
	if n, want := testutil.CollectAndCount(col, "rbd_errors_total"), 2*(int(NumOps)+1)*(int(NumErrKinds)-1); n != want {
		t.Errorf("%d rbd_errors_total series, want %d", n, want)
	}

	m := series(t, reg, "rbd_request_duration_seconds", map[string]string{"device": "rbdi0", "op": "read"})
	if m == nil {
		t.Fatal("no rbd_request_duration_seconds{device=rbdi0,op=read}")
	}
	h := m.GetHistogram()
	if h.GetSampleCount() != 3 || len(h.GetBucket()) != NumLatencyBuckets {
		t.Errorf("read histogram: count %d, %d buckets; want 3, %d", h.GetSampleCount(), len(h.GetBucket()), NumLatencyBuckets)
	}
	for i, b := range h.GetBucket() {
		if want := LatencyBounds()[i].Seconds(); b.GetUpperBound() != want {
			t.Errorf("bucket %d: le %v, want %v", i, b.GetUpperBound(), want)
		}
	}
	if last := h.GetBucket()[NumLatencyBuckets-1]; last.GetCumulativeCount() != 3 {
		t.Errorf("le=10 bucket = %d, want 3", last.GetCumulativeCount())
	}

	if problems, err := testutil.CollectAndLint(col); err != nil || len(problems) != 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func TestCollectorRemove(t *testing.T) {
	col, _, _ := initiatorFixture(t)
	reg := pedantic(t, col)
	col.Remove("rbdi0")
	col.Remove("nonexistent")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	perDevice := map[string]int{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "device" {
					perDevice[lp.GetValue()]++
				}
			}
		}
	}
	if perDevice["rbdi0"] != 0 || perDevice["rbdi1"] == 0 {
		t.Errorf("series per device after Remove(rbdi0): %v", perDevice)
	}
	col.Remove("rbdi1")
	if n := testutil.CollectAndCount(col); n != 0 {
		t.Errorf("%d series after removing everything, want 0", n)
	}
}

func TestCollectorTarget(t *testing.T) {
	col := NewCollector(RoleTarget)
	exp, sess := NewCounters(), NewCounters()
	start := exp.Start(OpRead)
	sess.Start(OpRead)
	exp.Done(OpRead, 512, start, ErrNone)
	sess.Done(OpRead, 512, start, ErrNone)
	if err := col.Add("disk0", Labels{Export: "disk0"}, exp); err != nil {
		t.Fatal(err)
	}
	if err := col.Add("disk0/1", Labels{Export: "disk0", Session: "1"}, sess); err != nil {
		t.Fatal(err)
	}
	if err := col.AddInfo("disk0", Labels{Export: "disk0"}, 4096, nil); err != nil {
		t.Fatal(err)
	}
	expected := `
# HELP rbd_ops_total Block requests completed, successfully or not, by op.
# TYPE rbd_ops_total counter
rbd_ops_total{export="disk0",op="read",role="target",session=""} 1
rbd_ops_total{export="disk0",op="write",role="target",session=""} 0
rbd_ops_total{export="disk0",op="flush",role="target",session=""} 0
rbd_ops_total{export="disk0",op="trim",role="target",session=""} 0
rbd_ops_total{export="disk0",op="write_zeroes",role="target",session=""} 0
rbd_ops_total{export="disk0",op="read",role="target",session="1"} 1
rbd_ops_total{export="disk0",op="write",role="target",session="1"} 0
rbd_ops_total{export="disk0",op="flush",role="target",session="1"} 0
rbd_ops_total{export="disk0",op="trim",role="target",session="1"} 0
rbd_ops_total{export="disk0",op="write_zeroes",role="target",session="1"} 0
# HELP rbd_device_size_bytes Size of a device or export in bytes.
# TYPE rbd_device_size_bytes gauge
rbd_device_size_bytes{export="disk0",role="target",session=""} 4096
# HELP rbd_device_info Static information about a device or export; always 1.
# TYPE rbd_device_info gauge
rbd_device_info{export="disk0",role="target",session=""} 1
`
	if err := testutil.CollectAndCompare(col, strings.NewReader(expected), "rbd_ops_total", "rbd_device_size_bytes", "rbd_device_info"); err != nil {
		t.Error(err)
	}
	if _, err := pedantic(t, col).Gather(); err != nil {
		t.Error(err)
	}
	ents := col.Entries()
	if len(ents) != 2 || ents[0].Key != "disk0" || ents[1].Key != "disk0/1" || ents[1].Labels.Session != "1" || ents[1].Stats.Ops[OpRead].Bytes != 512 {
		t.Errorf("Entries() = %+v", ents)
	}
	if col.Role() != RoleTarget {
		t.Errorf("Role() = %q", col.Role())
	}
}

func TestCollectorAddErrors(t *testing.T) {
	ini := NewCollector(RoleInitiator, "transport")
	tgt := NewCollector(RoleTarget)
	c := NewCounters()
	if err := ini.Add("rbdi0", Labels{Device: "rbdi0"}, c); err != nil {
		t.Fatal(err)
	}
	if err := ini.AddInfo("rbdi0", Labels{Device: "rbdi0"}, 1, nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"nil counters", ini.Add("x", Labels{Device: "rbdi9"}, nil)},
		{"initiator without device", ini.Add("x", Labels{Export: "e"}, c)},
		{"initiator with session", ini.Add("x", Labels{Device: "rbdi9", Session: "1"}, c)},
		{"target without export", tgt.Add("x", Labels{Session: "1"}, c)},
		{"target with device", tgt.Add("x", Labels{Device: "rbdi0", Export: "e"}, c)},
		{"duplicate labels", ini.Add("other", Labels{Device: "rbdi0"}, NewCounters())},
		{"info: unknown extra label", ini.AddInfo("rbdi1", Labels{Device: "rbdi1"}, 1, map[string]string{"colour": "red"})},
		{"info: bad labels", ini.AddInfo("x", Labels{}, 1, nil)},
		{"invalid UTF-8", ini.Add("x", Labels{Device: "rbdi\xff"}, c)},
		{"info: invalid UTF-8", ini.AddInfo("rbdi0", Labels{Device: "rbdi0"}, 1, map[string]string{"transport": "\xff"})},
		{"info: duplicate labels", ini.AddInfo("other", Labels{Device: "rbdi0"}, 1, nil)},
	} {
		if tc.err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
	// Replacing a key's own entry is fine.
	if err := ini.Add("rbdi0", Labels{Device: "rbdi0"}, NewCounters()); err != nil {
		t.Errorf("re-Add of the same key: %v", err)
	}
	if n := len(ini.Entries()); n != 1 {
		t.Errorf("%d entries, want 1", n)
	}
}

func TestNewCollectorPanics(t *testing.T) {
	for _, tc := range []struct {
		role string
		info []string
	}{
		{"client", nil},
		{"", nil},
		{RoleInitiator, []string{"device"}},
		{RoleInitiator, []string{"op"}},
		{RoleTarget, []string{"__name"}},
		{RoleTarget, []string{"has-dash"}},
		{RoleTarget, []string{"a", "a"}},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewCollector(%q, %q) did not panic", tc.role, tc.info)
				}
			}()
			NewCollector(tc.role, tc.info...)
		}()
	}
}

// TestCollectorConcurrent adds, removes and scrapes at once; run with -race.
func TestCollectorConcurrent(t *testing.T) {
	col := NewCollector(RoleInitiator)
	reg := pedantic(t, col)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				key := fmt.Sprintf("rbdi%d", g*1000+i%10)
				c := NewCounters()
				c.Done(OpRead, 1, c.Start(OpRead), ErrNone)
				if err := col.Add(key, Labels{Device: key}, c); err != nil {
					t.Error(err)
					return
				}
				if err := col.AddInfo(key, Labels{Device: key}, 1, nil); err != nil {
					t.Error(err)
					return
				}
				if i%3 == 0 {
					col.Remove(key)
				}
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for range 50 {
				if _, err := reg.Gather(); err != nil {
					t.Error(err)
					return
				}
				col.Entries()
			}
		})
	}
	wg.Wait()
}

func TestCollectorBuildInfo(t *testing.T) {
	for _, role := range []string{RoleInitiator, RoleTarget} {
		t.Run(role, func(t *testing.T) {
			col := NewCollector(role)
			reg := pedantic(t, col)
			if m := series(t, reg, "rbd_build_info", nil); m != nil {
				t.Fatalf("rbd_build_info before SetBuildInfo: %v", m)
			}
			col.SetBuildInfo("4f97d6e-dirty", "go1.26.8")
			col.SetBuildInfo("a9f9034", "go1.26.8") // the last call wins: one series
			want := "# HELP rbd_build_info The daemon's build: its version and the Go version it was built with; always 1.\n" +
				"# TYPE rbd_build_info gauge\n" +
				"rbd_build_info" + labelText("goversion", "go1.26.8", "version", "a9f9034") + " 1\n"
			if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "rbd_build_info"); err != nil {
				t.Fatal(err)
			}
			col.Remove("anything") // device and session changes leave it alone
			if m := series(t, reg, "rbd_build_info", map[string]string{"version": "a9f9034"}); m == nil || m.GetGauge().GetValue() != 1 {
				t.Fatalf("rbd_build_info after Remove: %v", m)
			}
		})
	}
}

func TestDeviceState(t *testing.T) {
	c := NewCollector(RoleInitiator)
	cur := "connected"
	var mu sync.Mutex
	l := Labels{Device: "rbdi0", Target: "10.0.0.1:65000", Export: "/dev/ram0"}
	if err := c.AddState("rbdi0", l, []string{"connected", "reconnecting", "failed"}, func() string { mu.Lock(); defer mu.Unlock(); return cur }); err != nil {
		t.Fatal(err)
	}
	read := func() map[string]float64 {
		reg := prometheus.NewRegistry()
		reg.MustRegister(c)
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() != "rbd_device_state" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == "state" {
						got[lp.GetValue()] = m.GetGauge().GetValue()
					}
				}
			}
		}
		return got
	}
	for _, want := range []string{"connected", "reconnecting", "failed"} {
		mu.Lock()
		cur = want
		mu.Unlock()
		got := read()
		if len(got) != 3 || got[want] != 1 || got["connected"]+got["reconnecting"]+got["failed"] != 1 {
			t.Fatalf("state %s: %v", want, got)
		}
	}
	c.Remove("rbdi0")
	if got := read(); len(got) != 0 {
		t.Fatalf("after Remove: %v", got)
	}
}

// TestCollectorInfoFunc: information read at scrape time appears once the
// func reports it, follows its changes, and goes with Remove.
func TestCollectorInfoFunc(t *testing.T) {
	col := NewCollector(RoleTarget, TargetInfoLabels...)
	var mu sync.Mutex
	size, ok := uint64(0), false
	l := Labels{Export: "/dev/ram0"}
	if err := col.AddInfoFunc("export:/dev/ram0", l, func() (uint64, map[string]string, bool) {
		mu.Lock()
		defer mu.Unlock()
		return size, map[string]string{"path": "/dev/ram0", "block_size": "512", "read_only": "false", "shared": "true", "colour": "ignored", "": "x"}, ok
	}); err != nil {
		t.Fatal(err)
	}
	if err := col.AddInfoFunc("other", l, func() (uint64, map[string]string, bool) { return 0, nil, true }); err == nil {
		t.Error("AddInfoFunc with labels another key has: no error")
	}
	if err := col.AddInfoFunc("x", l, nil); err == nil {
		t.Error("AddInfoFunc(nil): no error")
	}
	if err := col.AddInfoFunc("x", Labels{Device: "rbdi0"}, func() (uint64, map[string]string, bool) { return 0, nil, true }); err == nil {
		t.Error("AddInfoFunc with initiator labels on a target: no error")
	}
	if n := testutil.CollectAndCount(col, "rbd_device_info", "rbd_device_size_bytes"); n != 0 {
		t.Fatalf("%d series while the func reports nothing, want 0", n)
	}
	lbl := `{block_size="512",export="/dev/ram0",path="/dev/ram0",read_only="false",role="target",session="",shared="true"}`
	for _, sz := range []uint64{1 << 20, 1 << 30} {
		mu.Lock()
		size, ok = sz, true
		mu.Unlock()
		want := fmt.Sprintf(`
# HELP rbd_device_info Static information about a device or export; always 1.
# TYPE rbd_device_info gauge
rbd_device_info%s 1
# HELP rbd_device_size_bytes Size of a device or export in bytes.
# TYPE rbd_device_size_bytes gauge
rbd_device_size_bytes{export="/dev/ram0",role="target",session=""} %d
`, lbl, sz)
		if err := testutil.CollectAndCompare(col, strings.NewReader(want), "rbd_device_info", "rbd_device_size_bytes"); err != nil {
			t.Errorf("size %d: %v", sz, err)
		}
	}
	if _, err := pedantic(t, col).Gather(); err != nil {
		t.Error(err)
	}
	col.Remove("export:/dev/ram0")
	if n := testutil.CollectAndCount(col); n != 0 {
		t.Errorf("%d series after Remove, want 0", n)
	}
}
