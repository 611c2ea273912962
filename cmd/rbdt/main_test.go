package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"rbd/internal/stats"
	"rbd/internal/target"
)

func TestOrdinals(t *testing.T) {
	o := newOrdinals()
	steps := []struct {
		take       bool
		export, id string
		want       int // for take
	}{
		{true, "/dev/ram0", "s1", 1},
		{true, "/dev/ram0", "s2", 2},
		{true, "/dev/ram1", "s3", 1}, // per export
		{true, "/dev/ram0", "s1", 1}, // a session keeps its number
		{false, "/dev/ram0", "s1", 0},
		{true, "/dev/ram0", "s4", 1}, // the smallest free number
		{true, "/dev/ram0", "s5", 3},
		{false, "/dev/ram1", "s3", 0},
		{true, "/dev/ram1", "s6", 1},
		{false, "/dev/ram9", "never", 0}, // releasing what was never taken is harmless
	}
	for i, s := range steps {
		if !s.take {
			o.release(s.export, s.id)
			continue
		}
		if got := o.take(s.export, s.id); got != s.want {
			t.Errorf("step %d: take(%s, %s) = %d, want %d", i, s.export, s.id, got, s.want)
		}
	}
}

// TestExportMetrics: an export's info, size and state come from its backend,
// and an export that could not be opened at start is "unavailable" without
// info or size.
func TestExportMetrics(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 8<<20); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.img")
	srv, err := target.NewServer(target.Config{
		Exports: []target.ExportConfig{{Path: img, ReadOnly: true, Shared: true}, {Path: missing}},
		Log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	coll := stats.NewCollector(stats.RoleTarget, stats.TargetInfoLabels...)
	for _, e := range srv.Exports() {
		if err := addExportMetrics(coll, e); err != nil {
			t.Fatal(err)
		}
	}
	want := `
# HELP rbd_device_info Static information about a device or export; always 1.
# TYPE rbd_device_info gauge
rbd_device_info{block_size="512",export="` + img + `",path="` + img + `",read_only="true",role="target",session="",shared="true"} 1
# HELP rbd_device_size_bytes Size of a device or export in bytes.
# TYPE rbd_device_size_bytes gauge
rbd_device_size_bytes{export="` + img + `",role="target",session=""} 8.388608e+06
# HELP rbd_device_state The state of a device (initiator: its connection) or export (target: its backend): one series per state, 1 for the current one.
# TYPE rbd_device_state gauge
rbd_device_state{export="` + img + `",role="target",session="",state="ready"} 1
rbd_device_state{export="` + img + `",role="target",session="",state="unavailable"} 0
rbd_device_state{export="` + missing + `",role="target",session="",state="ready"} 0
rbd_device_state{export="` + missing + `",role="target",session="",state="unavailable"} 1
`
	if err := testutil.CollectAndCompare(coll, strings.NewReader(want), "rbd_device_info", "rbd_device_size_bytes", "rbd_device_state"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(coll, "rbd_ops_total"); n != 2*int(stats.NumOps) {
		t.Errorf("%d rbd_ops_total series, want %d (every op of both exports)", n, 2*int(stats.NumOps))
	}
}

// TestSessionMetrics: sessions are labelled and keyed by their ordinal on
// their export, never by their id, and rbdctl -s gets each session's
// initiator.
func TestSessionMetrics(t *testing.T) {
	coll := stats.NewCollector(stats.RoleTarget, stats.TargetInfoLabels...)
	sm := newSessionMetrics(coll)
	const (
		idA = "0123456789abcdef0123456789abcdef"
		idB = "fedcba9876543210fedcba9876543210"
		idC = "00112233445566778899aabbccddeeff"
		idD = "ffeeddccbbaa99887766554433221100"
	)
	sess := func(id, export, peer string) target.SessionInfo {
		c := stats.NewCounters()
		c.Done(stats.OpRead, 4096, c.Start(stats.OpRead), stats.ErrNone)
		return target.SessionInfo{ID: id, Export: export, Peer: peer, Stats: c}
	}
	a, b, c := sess(idA, "/dev/ram0", "10.0.0.2:1234"), sess(idB, "/dev/ram0", "10.0.0.3:1234"), sess(idC, "/dev/ram1", "10.0.0.2:1240")
	for _, s := range []target.SessionInfo{a, b, c} {
		sm.update(s, true)
	}
	sm.update(a, false)
	d := sess(idD, "/dev/ram0", "10.0.0.4:1234")
	sm.update(d, true) // takes a's number, 1

	want := map[string]string{"/dev/ram0#1": "10.0.0.4:1234", "/dev/ram0#2": "10.0.0.3:1234", "/dev/ram1#1": "10.0.0.2:1240"}
	got := map[string]string{}
	for _, m := range gatherSessions(t, coll) {
		got[m] = ""
	}
	rec := httptest.NewRecorder()
	controlHandler(nil, coll, sm.peerOf).ServeHTTP(rec, httptest.NewRequest("GET", "/v1/stats", nil))
	body := rec.Body.String()
	if rec.Code != 200 {
		t.Fatalf("GET /v1/stats: %d %s", rec.Code, body)
	}
	var entries []StatsEntry
	if err := json.Unmarshal(rec.Body.Bytes(), &entries); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		got[e.Labels.Export+"#"+e.Labels.Session] = e.Peer
	}
	if !maps.Equal(got, want) {
		t.Errorf("sessions (export#ordinal: peer) = %v, want %v", got, want)
	}
	if n := len(sm.exports()); n != 3 {
		t.Errorf("%d sessions for STATUS=, want 3", n)
	}
	// no session id anywhere a scrape or rbdctl sees
	var scrape strings.Builder
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(coll)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				scrape.WriteString(lp.GetName() + "=" + lp.GetValue() + "\n")
			}
		}
	}
	if !strings.Contains(scrape.String(), "session=2") {
		t.Fatalf("the scrape has no session=2 series:\n%s", scrape.String())
	}
	for _, id := range []string{idA, idB, idC, idD} {
		for _, part := range []string{id, id[:12]} {
			if strings.Contains(body, part) || strings.Contains(scrape.String(), part) {
				t.Errorf("session id %s shows in the metrics or /v1/stats", part)
			}
		}
	}
	for _, s := range []target.SessionInfo{b, c, d} {
		sm.update(s, false)
	}
	if n := testutil.CollectAndCount(coll); n != 0 {
		t.Errorf("%d series after every session ended, want 0", n)
	}
}

// gatherSessions returns export#session of every session-level series.
func gatherSessions(t *testing.T, coll *stats.Collector) []string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(coll)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var export, session string
			for _, lp := range m.GetLabel() {
				switch lp.GetName() {
				case "export":
					export = lp.GetValue()
				case "session":
					session = lp.GetValue()
				}
			}
			if session != "" {
				seen[export+"#"+session] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(seen))
}
