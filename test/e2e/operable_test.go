package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPrometheusScrape: Debian's Prometheus server scrapes both daemons
// every second, under the job names the alert rules expect, with those
// rules loaded, while fio reads and writes a device; queries through its
// HTTP API then return the device's operation rate on the initiator and the
// export's on the target, both targets up, and the rules healthy.
func TestPrometheusScrape(t *testing.T) {
	if tr, _, _ := env(t); tr == "siw" {
		t.Skip("above the transport: soft-RoCE covers it (the suite's time budget)")
	}
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("no prometheus (make deps installs Debian's package)")
	}
	root := filepath.Dir(binDir(t))
	d := startDaemons(t, daemonOpts{exports: []string{"/dev/ram1"}})
	dev := d.add("/dev/ram1")
	name := filepath.Base(dev)
	dir := t.TempDir()
	web := freePort(t)
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
  - job_name: rbdt
    static_configs: [{targets: [%q]}]
  - job_name: rbdi
    static_configs: [{targets: [%q]}]
`, filepath.Join(root, "packaging/prometheus/rbd-alerts.yml"), d.tmetrics, d.imetrics)), 0o644); err != nil {
		t.Fatal(err)
	}
	plog := &lockedWriter{w: &bytes.Buffer{}, mu: make(chan struct{}, 1)}
	p := exec.Command(prom, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+web, "--log.level=warn")
	p.Stdout, p.Stderr = plog, plog
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Process.Kill(); p.Wait() })
	api := "http://" + web
	deadline := time.Now().Add(90 * time.Second)
	for {
		resp, err := http.Get(api + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 90 s: %v\n%s", err, plog.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fio := exec.CommandContext(ctx, "fio", "--name=scrape", "--filename="+dev, "--ioengine=libaio", "--direct=1",
		"--rw=randrw", "--bs=4k", "--iodepth=4", "--time_based", "--runtime=20", "--minimal")
	fioDone := make(chan error, 1)
	go func() { out, err := fio.CombinedOutput(); fioDone <- fmtErr(err, out) }()
	// the queries while fio runs: a rate over 10 s needs a few scrapes
	var ini, tgt float64
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end) && (ini == 0 || tgt == 0); {
		time.Sleep(2 * time.Second)
		ini = promScalar(t, api, `sum(rate(rbd_ops_total{job="rbdi",device="`+name+`"}[10s]))`)
		// the export's series (the per-session ones repeat it)
		tgt = promScalar(t, api, `sum(rate(rbd_ops_total{job="rbdt",export="/dev/ram1",session=""}[10s]))`)
	}
	if ini <= 0 || tgt <= 0 {
		t.Errorf("operation rates through Prometheus: initiator %v/s, target %v/s; want both above 0\n%s", ini, tgt, plog.String())
	}
	if up := promScalar(t, api, `sum(up{job=~"rbdi|rbdt"})`); up != 2 {
		t.Errorf("sum(up) of the two jobs = %v, want 2", up)
	}
	var rules struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name, Health, LastError string
				}
			}
		}
	}
	promGet(t, api+"/api/v1/rules", &rules)
	n := 0
	for _, g := range rules.Data.Groups {
		for _, r := range g.Rules {
			n++
			if r.Health == "err" {
				t.Errorf("rule %s: %s", r.Name, r.LastError)
			}
		}
	}
	if n == 0 {
		t.Errorf("prometheus loaded no rule from rbd-alerts.yml")
	}
	if err := <-fioDone; err != nil {
		t.Fatal(err)
	}
	t.Logf("through Prometheus: %s %.0f ops/s, target %.0f ops/s, %d rules", name, ini, tgt, n)
	d.remove(dev)
}

func fmtErr(err error, out []byte) error {
	if err != nil {
		return fmt.Errorf("fio: %v\n%s", err, out)
	}
	return nil
}

// promGet decodes the JSON answer of a Prometheus API call into v.
func promGet(t *testing.T, u string, v any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %s", u, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s: %v", u, err)
	}
}

// promScalar is the value of an instant query with one result (0 for none).
func promScalar(t *testing.T, api, q string) float64 {
	t.Helper()
	var r struct {
		Status string
		Data   struct {
			Result []struct {
				Value []any
			}
		}
	}
	promGet(t, api+"/api/v1/query?query="+url.QueryEscape(q), &r)
	if r.Status != "success" || len(r.Data.Result) == 0 || len(r.Data.Result[0].Value) != 2 {
		return 0
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, _ := strconv.ParseFloat(s, 64)
	return v
}

// TestDebInstall: the package that make deb built (bin/deb, made by make
// e2e) installs with dpkg into the guest's own root (its overlay: the host
// is not touched), its programs run from /usr/sbin and name the build, its
// units and configurations are where the man pages say; dpkg -r removes
// all but the conffiles, and dpkg -P those too.
func TestDebInstall(t *testing.T) {
	if tr, _, _ := env(t); tr == "siw" {
		t.Skip("no transport involved: the soft-RoCE pass covers it (the suite's time budget)")
	}
	debs, _ := filepath.Glob(filepath.Join(binDir(t), "deb", "rbd_*.deb"))
	if len(debs) != 1 {
		t.Skipf("want one bin/deb/rbd_*.deb (make e2e builds it), found %d", len(debs))
	}
	if _, err := os.Stat("/vmout"); err != nil {
		t.Skip("not in the test guest: dpkg -i would install into this machine")
	}
	// dpkg's database, not dpkg -s: each dpkg run reads all of it, over 9p
	// and under emulation (the suite's time budget)
	const list = "/var/lib/dpkg/info/rbd.list"
	if _, err := os.Stat(list); err == nil {
		t.Skip("an rbd package is installed already")
	}
	t.Cleanup(func() { exec.Command("dpkg", "-P", "rbd").Run() })
	// man-db's trigger would rebuild the whole manual database, minutes
	// under emulation; without this file it skips (in the overlay only)
	os.Remove("/var/lib/man-db/auto-update")
	out := run(t, "dpkg", "-i", debs[0])
	if !strings.Contains(out, "not enabled") {
		t.Errorf("postinst did not say the units are not enabled:\n%s", out)
	}
	want := []string{"/usr/sbin/rbdt", "/usr/sbin/rbdi", "/usr/sbin/rbdctl", "/usr/lib/systemd/system/rbdt.service",
		"/usr/lib/systemd/system/rbdi.service", "/etc/rbd/rbdt.toml", "/etc/rbd/rbdi.toml", "/usr/share/man/man8/rbdi.8.gz"}
	for _, f := range want {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("after dpkg -i: %v", err)
		}
	}
	bv := run(t, filepath.Join(binDir(t), "rbdt"), "--version")
	if v := run(t, "/usr/sbin/rbdt", "--version"); v != bv {
		t.Errorf("/usr/sbin/rbdt --version = %q, the build's is %q", v, bv)
	}
	run(t, "/usr/sbin/rbdctl", "--version")
	if l, err := os.ReadFile(list); err != nil || !strings.Contains(string(l), "/usr/sbin/rbdi\n") {
		t.Errorf("dpkg's file list of rbd does not hold /usr/sbin/rbdi (%v):\n%s", err, l)
	}
	run(t, "dpkg", "-r", "rbd")
	for _, f := range want {
		_, err := os.Stat(f)
		conf := strings.HasPrefix(f, "/etc/")
		if conf && err != nil {
			t.Errorf("dpkg -r removed the conffile %s", f)
		}
		if !conf && err == nil {
			t.Errorf("dpkg -r left %s", f)
		}
	}
	run(t, "dpkg", "-P", "rbd")
	for _, f := range []string{"/etc/rbd/rbdt.toml", "/etc/rbd/rbdi.toml"} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("dpkg -P left %s", f)
		}
	}
	if _, err := os.Stat(list); err == nil {
		t.Errorf("%s: still there after the purge", list)
	}
}
