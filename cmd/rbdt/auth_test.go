package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"rbd/internal/target"
)

// TestConfigAuth: rbdt.toml's per-export key files, require_auth and allow
// lists, and the per-peer limits, reach the target's configuration.
func TestConfigAuth(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "rbdt.toml")
	os.WriteFile(cfgPath, []byte(`
open_timeout = "5s"
max_connections_per_peer = 8
max_handshakes_per_peer = 2
max_pinned_per_peer = 1073741824

[[export]]
path = "/dev/vg0/db"
key_file = "/etc/rbd/keys/db.key"
allow = ["10.0.0.0/24 rw", "10.0.1.0/24 ro"]

[[export]]
path = "/dev/ram0"
key_file = "/etc/rbd/keys/ram0.key"
require_auth = false
`), 0o600)
	cmd := newRootCmd()
	cmd.SetArgs([]string{"--config", cfgPath, "--max-handshakes-per-peer", "3"})
	cmd.ParseFlags([]string{"--config", cfgPath, "--max-handshakes-per-peer", "3"})
	var o options
	o.config = cfgPath
	f := cmd.Flags()
	o.peerHS, _ = f.GetInt("max-handshakes-per-peer")
	o.peerConns, _ = f.GetInt("max-connections-per-peer")
	o.peerPinned, _ = f.GetInt64("max-pinned-per-peer")
	o.open, _ = f.GetDuration("open-timeout")
	o.depth, o.slotSize, o.inline, o.maxConns = target.DefaultQueueDepth, target.DefaultSlotSize, target.DefaultInline, target.DefaultMaxConns
	cfg, _, _, _, err := buildConfig(cmd, &o)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OpenTimeout.String() != "5s" || cfg.MaxConnsPerPeer != 8 || cfg.MaxHandshakesPerPeer != 3 || cfg.MaxPinnedPerPeer != 1<<30 {
		t.Errorf("limits: open %v, conns %d, handshakes %d (the flag wins), pinned %d", cfg.OpenTimeout, cfg.MaxConnsPerPeer, cfg.MaxHandshakesPerPeer, cfg.MaxPinnedPerPeer)
	}
	if len(cfg.Exports) != 2 {
		t.Fatalf("exports %+v", cfg.Exports)
	}
	db, ram := cfg.Exports[0], cfg.Exports[1]
	if db.KeyFile != "/etc/rbd/keys/db.key" || db.RequireAuth != nil || strings.Join(db.Allow, ",") != "10.0.0.0/24 rw,10.0.1.0/24 ro" {
		t.Errorf("db export %+v", db)
	}
	if ram.RequireAuth == nil || *ram.RequireAuth {
		t.Errorf("ram0 export %+v: want require_auth false", ram)
	}
}

// TestConfigKeyRefused: a loose key file stops rbdt at start with the fix.
func TestConfigKeyRefused(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "db.key")
	os.WriteFile(key, []byte(strings.Repeat("ab", 32)), 0o644)
	os.Chmod(key, 0o644)
	_, err := target.NewServer(target.Config{Exports: []target.ExportConfig{{Path: "/dev/vg0/db", KeyFile: key}}})
	if err == nil || !strings.Contains(err.Error(), "chmod 600 "+key) {
		t.Fatalf("NewServer: %v, want the chmod fix", err)
	}
}

// TestLimitsCollector: the refusal reasons are there from the start.
func TestLimitsCollector(t *testing.T) {
	srv, err := target.NewServer(target.Config{Exports: []target.ExportConfig{{Path: "/nonexistent/img"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c := target.LimitsCollector(srv.Usage)
	if n := testutil.CollectAndCount(c, "rbd_target_refused_total"); n != len(target.RefusalReasons) {
		t.Fatalf("%d refusal series, want %d", n, len(target.RefusalReasons))
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(`
# HELP rbd_target_refused_total Connections and OPENs refused, by reason: connection_limit, peer_connections, peer_handshakes, peer_memory, not_allowed, auth_required, auth_failed, open_timeout.
# TYPE rbd_target_refused_total counter
rbd_target_refused_total{reason="auth_failed"} 0
rbd_target_refused_total{reason="auth_required"} 0
rbd_target_refused_total{reason="connection_limit"} 0
rbd_target_refused_total{reason="not_allowed"} 0
rbd_target_refused_total{reason="open_timeout"} 0
rbd_target_refused_total{reason="peer_connections"} 0
rbd_target_refused_total{reason="peer_handshakes"} 0
rbd_target_refused_total{reason="peer_memory"} 0
`), "rbd_target_refused_total"); err != nil {
		t.Fatal(err)
	}
}
