package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"rbd/internal/api"
)

// writeKey writes a key file of random hex digits with mode perm.
func writeKey(t *testing.T, dir, name string, perm os.FileMode) string {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDaemonsAuth: rbdt with a keyed export and rbdi through rbdctl: the
// right key maps a working device; no key, a wrong key and a key file
// others can read fail with a message that names the fix; the refusals
// show in rbdt's metrics. An allow-list entry "ro" maps the export
// read-only.
func TestDaemonsAuth(t *testing.T) {
	_, addr, _ := env(t)
	keys := filepath.Join(t.TempDir(), "keys")
	if err := os.Mkdir(keys, 0o700); err != nil {
		t.Fatal(err)
	}
	key := writeKey(t, keys, "ram2.key", 0o600)
	wrong := writeKey(t, keys, "wrong.key", 0o600)
	loose := writeKey(t, keys, "loose.key", 0o644)
	ap := netip.MustParseAddr(addr)
	net16 := netip.PrefixFrom(ap, 16).Masked()
	d := startDaemons(t, daemonOpts{exports: []string{"/dev/ram2,key=" + key, "/dev/ram3,allow-ro=" + net16.String()}})
	try := func(extra ...string) (string, string, error) {
		return d.ctl(append([]string{"-n", "-a", addr, "-p", "65000", "-d", "/dev/ram2"}, extra...)...)
	}
	for _, tc := range []struct {
		name  string
		extra []string
		want  []string
	}{
		{"no key", nil, []string{"target " + addr + " requires authentication for /dev/ram2: give --key-file", "hint: rbdctl -n"}},
		{"wrong key", []string{"--key-file", wrong}, []string{"target " + addr + " refused the key for /dev/ram2", "authentication for export /dev/ram2 failed"}},
		{"loose key file", []string{"--key-file", loose}, []string{"has mode 0644: it must be readable by its owner only (chmod 600 " + loose}},
	} {
		out, serr, err := try(tc.extra...)
		if err == nil {
			t.Errorf("%s: rbdctl -n succeeded: %s", tc.name, out)
			d.ctl("-r", "-d", strings.TrimSpace(out))
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(serr, w) {
				t.Errorf("%s: want %q in:\n%s", tc.name, w, serr)
			}
		}
		t.Logf("%s: %s", tc.name, strings.TrimSpace(serr))
	}
	dev := d.add("/dev/ram2", "--key-file", key)
	data := bytes.Repeat([]byte("authenticated rbd\n"), 4096*16/18+1)[:4096*16]
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, 1<<20); err != nil {
		t.Fatalf("write %s: %v", dev, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got := readDevice(t, "/dev/ram2", 1<<20, len(data)); !bytes.Equal(got, data) {
		t.Fatal("the target's device does not hold what was written through the keyed mapping")
	}
	m := metrics(t, d.tmetrics)
	if metric(m, "rbd_target_refused_total", `reason="auth_failed"`) < 1 || metric(m, "rbd_target_refused_total", `reason="auth_required"`) < 1 {
		t.Errorf("refusals not counted: auth_failed %v, auth_required %v", metric(m, "rbd_target_refused_total", `reason="auth_failed"`),
			metric(m, "rbd_target_refused_total", `reason="auth_required"`))
	}
	if metric(m, "rbd_target_peer_connections") < 1 {
		t.Errorf("no rbd_target_peer_connections series with the device mapped")
	}
	// the rbdt log shows session tags, not session ids: no 32-hex-digit id
	for _, l := range strings.Split(d.tlog.String(), "\n") {
		if i := strings.Index(l, "session="); i >= 0 {
			v := strings.Fields(l[i+len("session="):])[0]
			if len(v) > 12 {
				t.Errorf("rbdt logs a session id: %s", l)
			}
		}
	}
	d.remove(dev)

	// an allow-list entry "ro" makes the mapping read-only
	out, serr, err := d.ctl("-n", "-a", addr, "-p", "65000", "-d", "/dev/ram3", "-o", "json")
	if err != nil {
		t.Fatalf("map /dev/ram3: %v\n%s", err, serr)
	}
	var info api.Device
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { d.ctl("-r", "-d", info.Path) })
	if !info.ReadOnly {
		t.Errorf("/dev/ram3 through an ro allow entry mapped read-write: %+v", info)
	}
}
