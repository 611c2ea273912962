package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
# HELP rbd_device_state A device's connection state: one series per state, 1 for the current one.
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
