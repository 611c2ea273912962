package packaging

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// debFiles are files the package must hold, with the mode dpkg-deb -c shows.
var debFiles = map[string]string{
	"usr/sbin/rbdt":                                "-rwxr-xr-x",
	"usr/sbin/rbdi":                                "-rwxr-xr-x",
	"usr/sbin/rbdctl":                              "-rwxr-xr-x",
	"usr/lib/systemd/system/rbdt.service":          "-rw-r--r--",
	"usr/lib/systemd/system/rbdi.service":          "-rw-r--r--",
	"usr/lib/udev/rules.d/60-rbd.rules":            "-rw-r--r--",
	"etc/rbd/rbdt.toml":                            "-rw-r--r--",
	"etc/rbd/rbdi.toml":                            "-rw-r--r--",
	"usr/share/man/man8/rbdt.8.gz":                 "-rw-r--r--",
	"usr/share/man/man8/rbdi.8.gz":                 "-rw-r--r--",
	"usr/share/man/man8/rbdctl.8.gz":               "-rw-r--r--",
	"usr/share/doc/rbd/copyright":                  "-rw-r--r--",
	"usr/share/doc/rbd/CHANGELOG.md":               "-rw-r--r--",
	"usr/share/doc/rbd/README.md":                  "-rw-r--r--",
	"usr/share/doc/rbd/metrics.md":                 "-rw-r--r--",
	"usr/share/doc/rbd/operations.md":              "-rw-r--r--",
	"usr/share/doc/rbd/examples/rbdt.toml":         "-rw-r--r--",
	"usr/share/doc/rbd/examples/rbdi.toml":         "-rw-r--r--",
	"usr/" + completions[0].path:                   "-rw-r--r--",
	"usr/" + completions[1].path:                   "-rw-r--r--",
	"usr/" + completions[2].path:                   "-rw-r--r--",
	"usr/share/rbd/prometheus/rbd-alerts.yml":      "-rw-r--r--",
	"usr/share/rbd/prometheus/rbd-alerts.test.yml": "-rw-r--r--",
	"usr/share/rbd/grafana/rbd-dashboard.json":     "-rw-r--r--",
}

func command(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestDeb builds the package with make deb and checks it as dpkg sees it:
// its control fields, contents, conffiles and maintainer scripts, then
// installs, removes and purges it in a scratch dpkg root.
func TestDeb(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: make deb (a build) skipped")
	}
	for _, tool := range []string{"dpkg-deb", "dpkg"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s (not a Debian system): %v", tool, err)
		}
	}
	out := t.TempDir()
	const version = "1.2.3~test"
	got := strings.TrimSpace(makeIn(t, "deb", "DEBOUT="+out, "DEBVERSION="+version))
	arch := strings.TrimSpace(command(t, "dpkg", "--print-architecture"))
	deb := filepath.Join(out, "rbd_"+version+"_"+arch+".deb")
	if !strings.HasSuffix(got, deb) {
		t.Fatalf("make deb printed %q, want the path %s", got, deb)
	}

	t.Run("control", func(t *testing.T) {
		for field, want := range map[string]*regexp.Regexp{
			"Package":        regexp.MustCompile(`^rbd$`),
			"Version":        regexp.MustCompile(`^` + regexp.QuoteMeta(version) + `$`),
			"Architecture":   regexp.MustCompile(`^` + arch + `$`),
			"Maintainer":     regexp.MustCompile(`^.+ <.+@.+>$`),
			"Installed-Size": regexp.MustCompile(`^[1-9][0-9]*$`),
			"Section":        regexp.MustCompile(`^admin$`),
			"Depends":        regexp.MustCompile(`libc6 \(>= [0-9.]+\).*libibverbs1.*librdmacm1.*ibverbs-providers`),
			"Description":    regexp.MustCompile(`(?s)RDMA.+rbdt.+rbdi`),
		} {
			v := strings.TrimSpace(command(t, "dpkg-deb", "-f", deb, field))
			if !want.MatchString(v) {
				t.Errorf("%s: %q, want it to match %s", field, v, want)
			}
		}
		info := command(t, "dpkg-deb", "-I", deb)
		for _, f := range []string{"control", "conffiles", "md5sums", "postinst", "prerm", "postrm"} {
			if !regexp.MustCompile(`(?m)^\s+\d+ bytes,\s+\d+ lines\s+\*?\s+` + f + `\b`).MatchString(info) {
				t.Errorf("dpkg-deb -I shows no %s:\n%s", f, info)
			}
		}
	})

	t.Run("contents", func(t *testing.T) {
		have := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(command(t, "dpkg-deb", "-c", deb)), "\n") {
			f := strings.Fields(l)
			if len(f) < 6 {
				t.Fatalf("dpkg-deb -c line %q", l)
			}
			mode, owner, path := f[0], f[1], strings.TrimSuffix(strings.TrimPrefix(f[len(f)-1], "./"), "/")
			if owner != "root/root" {
				t.Errorf("%s is owned by %s, want root/root", path, owner)
			}
			if strings.HasPrefix(path, "usr/local") || strings.HasPrefix(path, "DEBIAN") {
				t.Errorf("the package holds %s", path)
			}
			if mode[0] == 'd' && mode != "drwxr-xr-x" {
				t.Errorf("directory %s has mode %s, want drwxr-xr-x", path, mode)
			}
			have[path] = mode
		}
		for _, p := range slices.Sorted(func(yield func(string) bool) {
			for p := range debFiles {
				if !yield(p) {
					return
				}
			}
		}) {
			if mode, ok := have[p]; !ok {
				t.Errorf("the package lacks %s", p)
			} else if mode != debFiles[p] {
				t.Errorf("%s has mode %s, want %s", p, mode, debFiles[p])
			}
		}
	})

	ctl := t.TempDir()
	command(t, "dpkg-deb", "-e", deb, ctl)
	t.Run("conffiles", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(ctl, "conffiles"))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := strings.Fields(string(b)), []string{"/etc/rbd/rbdi.toml", "/etc/rbd/rbdt.toml"}; !slices.Equal(got, want) {
			t.Errorf("conffiles: %q, want %q", got, want)
		}
	})
	t.Run("maintainer scripts", func(t *testing.T) {
		// systemd learns of the units; nothing is enabled, started, stopped
		// or restarted by the package
		forbidden := regexp.MustCompile(`systemctl[^\n]*\b(enable|start|restart|stop|try-restart|reload-or-restart)\b`)
		for _, s := range []string{"postinst", "prerm", "postrm"} {
			path := filepath.Join(ctl, s)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if st, _ := os.Stat(path); st.Mode().Perm() != 0o755 {
				t.Errorf("%s: mode %v, want 0755", s, st.Mode().Perm())
			}
			if out, err := exec.Command("sh", "-n", path).CombinedOutput(); err != nil {
				t.Errorf("sh -n %s: %v\n%s", s, err, out)
			}
			code := regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(string(b), "")
			code = regexp.MustCompile(`"[^"\n]*"`).ReplaceAllString(code, `""`) // messages may name commands
			if m := forbidden.FindString(code); m != "" {
				t.Errorf("%s runs %q", s, m)
			}
			if (s == "postinst" || s == "postrm") && !strings.Contains(code, "systemctl --system daemon-reload") {
				t.Errorf("%s does not run systemctl daemon-reload", s)
			}
		}
	})

	root := t.TempDir()
	t.Run("tree", func(t *testing.T) {
		command(t, "dpkg-deb", "-x", deb, root)
		// what the units run is in the package
		for _, name := range []string{"rbdt", "rbdi"} {
			u, _ := readUnit(t, filepath.Join(root, "usr/lib/systemd/system", name+".service"))
			want := "/usr/sbin/" + name + " --config /etc/rbd/" + name + ".toml"
			if got := u.get("Service.ExecStart"); got != want {
				t.Errorf("%s.service: ExecStart=%s, want %s", name, got, want)
			}
		}
		checkVersions(t, filepath.Join(root, "usr/sbin"))
		for _, f := range []string{"etc/rbd/rbdt.toml", "usr/share/rbd/prometheus/rbd-alerts.yml", "usr/share/rbd/grafana/rbd-dashboard.json"} {
			src := map[string]string{
				"etc/rbd/rbdt.toml":                        "packaging/etc/rbdt.toml",
				"usr/share/rbd/prometheus/rbd-alerts.yml":  "packaging/" + alertRules,
				"usr/share/rbd/grafana/rbd-dashboard.json": "packaging/" + dashboardJSON,
			}[f]
			got, err := os.ReadFile(filepath.Join(root, f))
			want, _ := os.ReadFile(filepath.Join(repoRoot(t), src))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s is not the tree's %s (%v)", f, src, err)
			}
		}
		lic, _ := os.ReadFile(filepath.Join(repoRoot(t), "LICENSE"))
		if got, _ := os.ReadFile(filepath.Join(root, "usr/share/doc/rbd/copyright")); !bytes.Equal(got, lic) {
			t.Error("usr/share/doc/rbd/copyright is not LICENSE")
		}
		// md5sums covers every file, and is right
		cmd := exec.Command("md5sum", "--quiet", "-c", filepath.Join(ctl, "md5sums"))
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("md5sum -c md5sums: %v\n%s", err, out)
		}
	})

	t.Run("install remove purge", func(t *testing.T) { dpkgCycle(t, deb) })
}

// dpkgCycle installs deb into a scratch dpkg root, changes a conffile, and
// checks that remove keeps the configuration and purge takes it. The
// maintainer scripts run outside a chroot with DPKG_ROOT set, so they leave
// this host's systemd alone.
func dpkgCycle(t *testing.T, deb string) {
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"var/lib/dpkg/status", "var/lib/dpkg/available"} {
		if err := os.WriteFile(filepath.Join(root, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dpkg := func(args ...string) string {
		t.Helper()
		// the scratch database has none of the dependencies
		return command(t, "dpkg", append([]string{"--root=" + root, "--force-script-chrootless", "--force-depends", "--log=/dev/null"}, args...)...)
	}
	exists := func(p string) bool { _, err := os.Lstat(filepath.Join(root, p)); return err == nil }

	out := dpkg("-i", deb)
	if !strings.Contains(out, "not enabled") {
		t.Errorf("a first install does not say the units are not enabled:\n%s", out)
	}
	for p := range debFiles {
		if !exists(p) {
			t.Errorf("installed: %s missing", p)
		}
	}
	if st := command(t, "dpkg", "--root="+root, "-s", "rbd"); !strings.Contains(st, "Status: install ok installed") {
		t.Fatalf("after dpkg -i:\n%s", st)
	}
	cfg := filepath.Join(root, "etc/rbd/rbdt.toml")
	mine := []byte("# mine\n[[export]]\npath = \"/dev/ram0\"\n")
	if err := os.WriteFile(cfg, mine, 0o644); err != nil {
		t.Fatal(err)
	}
	// reinstalling (an upgrade to the same version) keeps the changed conffile
	dpkg("--force-confold", "-i", deb)
	if got, _ := os.ReadFile(cfg); !bytes.Equal(got, mine) {
		t.Errorf("a reinstall replaced the changed %s", cfg)
	}
	dpkg("-r", "rbd")
	for p := range debFiles {
		if strings.HasPrefix(p, "etc/") {
			if !exists(p) {
				t.Errorf("dpkg -r removed the configuration %s", p)
			}
		} else if exists(p) {
			t.Errorf("dpkg -r left %s", p)
		}
	}
	dpkg("-P", "rbd")
	for _, p := range []string{"etc/rbd/rbdt.toml", "etc/rbd/rbdi.toml", "etc/rbd", "usr/share/rbd", "usr/sbin/rbdt"} {
		if exists(p) {
			t.Errorf("dpkg -P left %s", p)
		}
	}
}
