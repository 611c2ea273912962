package packaging

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// makeIn runs make in the module root with the given arguments. The
// environment of an enclosing make (make unit) is dropped so that its
// variables and jobserver do not leak in.
func makeIn(t *testing.T, args ...string) string {
	t.Helper()
	mk, err := exec.LookPath("make")
	if err != nil {
		t.Skipf("no make: %v", err)
	}
	cmd := exec.Command(mk, append([]string{"--no-print-directory"}, args...)...)
	cmd.Dir = repoRoot(t)
	for _, e := range os.Environ() {
		switch k, _, _ := strings.Cut(e, "="); k {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PREFIX", "DESTDIR",
			"SBINDIR", "MANDIR", "DOCDIR", "CONFDIR", "UNITDIR", "UDEVDIR":
		default:
			cmd.Env = append(cmd.Env, e)
		}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// unit is a systemd unit file, key=value lines by section.
type unit map[string][]string // "Section.Key" -> values

func readUnit(t *testing.T, path string) (unit, string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unit{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, _ := strings.Cut(line, "=")
			u[section+"."+k] = append(u[section+"."+k], v)
		}
	}
	return u, string(b)
}

func (u unit) get(key string) string {
	v := u[key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// checkTree checks an installed tree against what its units expect, and
// returns the units' paths.
func checkTree(t *testing.T, dest, prefix, unitDir string) []string {
	t.Helper()
	root := repoRoot(t)
	for _, b := range []string{"rbdt", "rbdi", "rbdctl"} {
		if p := filepath.Join(dest, prefix, "sbin", b); !executable(p) {
			t.Errorf("%s: not an executable file", p)
		}
	}
	for _, m := range []string{"rbdt", "rbdi", "rbdctl"} {
		if _, err := os.Stat(filepath.Join(dest, prefix, "share/man/man8", m+".8")); err != nil {
			t.Error(err)
		}
	}
	for _, d := range []string{"LICENSE", "CHANGELOG.md", "README.md", "docs/metrics.md", "docs/operations.md"} {
		if got, err := os.ReadFile(filepath.Join(dest, prefix, "share/doc/rbd", filepath.Base(d))); err != nil {
			t.Error(err)
		} else if want, _ := os.ReadFile(filepath.Join(root, d)); !bytes.Equal(got, want) {
			t.Errorf("share/doc/rbd/%s is not the tree's %s", filepath.Base(d), d)
		}
	}
	// the alert rules and the dashboard (docs/metrics.md, operations.md)
	for _, f := range []string{alertRules, alertTests, scrapeExample, dashboardJSON} {
		if got, err := os.ReadFile(filepath.Join(dest, prefix, "share/rbd", f)); err != nil {
			t.Error(err)
		} else if want, _ := os.ReadFile(filepath.Join(root, "packaging", f)); !bytes.Equal(got, want) {
			t.Errorf("share/rbd/%s is not the tree's packaging/%s", f, f)
		}
	}
	checkCompletions(t, dest, prefix)
	// udev reads no rules under /usr/local
	if got, err := os.ReadFile(filepath.Join(dest, "etc/udev/rules.d/60-rbd.rules")); err != nil {
		t.Error(err)
	} else if want, _ := os.ReadFile(filepath.Join(root, "packaging/udev/60-rbd.rules")); !bytes.Equal(got, want) {
		t.Error("etc/udev/rules.d/60-rbd.rules is not the tree's packaging/udev/60-rbd.rules")
	}
	var units []string
	placeholder := regexp.MustCompile(`@[A-Z]+@`)
	for _, name := range []string{"rbdt", "rbdi"} {
		path := filepath.Join(dest, unitDir, name+".service")
		units = append(units, path)
		u, text := readUnit(t, path)
		if p := placeholder.FindString(text); p != "" {
			t.Errorf("%s: %s not substituted", path, p)
		}
		// ExecStart names an installed binary and an installed configuration
		argv := strings.Fields(strings.TrimLeft(u.get("Service.ExecStart"), "-@:+!"))
		if len(argv) == 0 {
			t.Fatalf("%s: no ExecStart=", path)
		}
		if want := filepath.Join(prefix, "sbin", name); argv[0] != want {
			t.Errorf("%s: ExecStart runs %s, want %s", path, argv[0], want)
		}
		if !executable(filepath.Join(dest, argv[0])) {
			t.Errorf("%s: ExecStart's %s is not installed", path, argv[0])
		}
		cfg := ""
		for i, a := range argv[:len(argv)-1] {
			if a == "--config" || a == "-c" {
				cfg = argv[i+1]
			}
		}
		if cfg != "/etc/rbd/"+name+".toml" {
			t.Errorf("%s: ExecStart reads the configuration %q, want /etc/rbd/%s.toml", path, cfg, name)
		}
		if got, err := os.ReadFile(filepath.Join(dest, cfg)); err != nil {
			t.Error(err)
		} else if want, _ := os.ReadFile(filepath.Join(root, "packaging/etc", name+".toml")); !bytes.Equal(got, want) {
			t.Errorf("%s: not the example packaging/etc/%s.toml", cfg, name)
		}
		if _, err := os.Stat(filepath.Join(dest, prefix, "share/doc/rbd/examples", name+".toml")); err != nil {
			t.Error(err)
		}
		// what the daemons' code relies on (internal/daemon, cmd/*/main.go)
		for key, want := range map[string]string{
			"Service.Type":                     "notify", // READY=1
			"Service.LimitMEMLOCK":             "infinity",
			"Service.RuntimeDirectory":         "rbd", // /run/rbd/*.sock
			"Service.RuntimeDirectoryPreserve": "yes", // shared by both units
		} {
			if got := u.get(key); got != want {
				t.Errorf("%s: %s=%s, want %s", path, key, got, want)
			}
		}
		if u.get("Service.WatchdogSec") == "" {
			t.Errorf("%s: no WatchdogSec= (the daemons ping the watchdog)", path)
		}
		if name == "rbdi" {
			if v := u.get("Service.ProtectKernelTunables"); v != "" && v != "no" {
				t.Errorf("%s: ProtectKernelTunables=%s makes /sys read-only; rbdi writes /sys/block/nbdX/queue/*", path, v)
			}
			caps := u.get("Service.CapabilityBoundingSet")
			for _, c := range []string{"CAP_SYS_ADMIN", "CAP_IPC_LOCK", "CAP_SYS_RESOURCE"} {
				if !strings.Contains(caps, c) {
					t.Errorf("%s: CapabilityBoundingSet= lacks %s", path, c)
				}
			}
		}
	}
	return units
}

// completions are where bash-completion, zsh (Debian's vendor-completions)
// and fish look for rbdctl's, with what marks each shell's script.
var completions = []struct{ shell, path, mark string }{
	{"bash", "share/bash-completion/completions/rbdctl", "complete -o default -F __start_rbdctl rbdctl"},
	{"zsh", "share/zsh/vendor-completions/_rbdctl", "#compdef rbdctl"},
	{"fish", "share/fish/vendor_completions.d/rbdctl.fish", "complete -c rbdctl "},
}

// checkCompletions checks that make install generated rbdctl's completion
// scripts, that they are what rbdctl completion prints and that each shell
// there is loads its own: bash registers the completion of rbdctl and
// completes its commands.
func checkCompletions(t *testing.T, dest, prefix string) {
	t.Helper()
	rbdctl := filepath.Join(dest, prefix, "sbin/rbdctl")
	for _, c := range completions {
		path := filepath.Join(dest, prefix, c.path)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Error(err)
			continue
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v, want 0644", path, fi.Mode().Perm())
		}
		if !strings.Contains(string(b), c.mark) {
			t.Errorf("%s: no %q: not rbdctl's %s completion", path, c.mark, c.shell)
		}
		if want, err := exec.Command(rbdctl, "completion", c.shell).Output(); err != nil || !bytes.Equal(b, want) {
			t.Errorf("%s is not the output of rbdctl completion %s (%v)", path, c.shell, err)
		}
		sh, err := exec.LookPath(c.shell)
		if err != nil {
			t.Logf("%s not installed: %s not loaded", c.shell, path)
			continue
		}
		var script string
		switch c.shell {
		case "bash": // load it, then complete "rbdctl " as bash-completion would
			// (with bash-completion's _get_comp_words_by_ref, or a stand-in)
			script = `[ -r /usr/share/bash-completion/bash_completion ] && source /usr/share/bash-completion/bash_completion
declare -F _get_comp_words_by_ref >/dev/null || _get_comp_words_by_ref() {
	cur=${COMP_WORDS[COMP_CWORD]}; prev=${COMP_WORDS[COMP_CWORD-1]}; words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD; }
source "$1" && complete -p rbdctl && COMP_WORDS=(rbdctl ""); COMP_CWORD=1; COMP_LINE="rbdctl "; COMP_POINT=7;
__start_rbdctl rbdctl "" rbdctl; printf '%s\n' "${COMPREPLY[@]}"`
		case "zsh":
			script = `autoload -U compinit && compinit -u && source "$1"`
		case "fish":
			script = `source $argv[1]`
		}
		args := []string{"-c", script, c.shell, path}
		if c.shell == "fish" {
			args = []string{"-c", script, path}
		}
		cmd := exec.Command(sh, args...)
		cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(rbdctl)+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s cannot load %s: %v\n%s", c.shell, path, err, out)
			continue
		}
		if c.shell == "bash" {
			for _, w := range []string{"complete -o default -F __start_rbdctl rbdctl", "map", "unmap", "list", "stats", "completion"} {
				if !strings.Contains(string(out), w) {
					t.Errorf("bash with %s: no %q in\n%s", path, w, out)
				}
			}
		}
	}
}

// versionLine is what --version prints: "rbdt 2ee7d9b-dirty (go1.26.8)".
var versionLine = regexp.MustCompile(`^(rbdt|rbdi|rbdctl) (\S+) \((go1\.[0-9][^)]*)\)\n$`)

// checkVersions checks that the programs in dir, built by make, print the
// version the Makefile stamped in: git describe of a commit of this
// repository (the tree changes under other developers, so not necessarily
// HEAD's), and the Go version.
func checkVersions(t *testing.T, dir string) {
	t.Helper()
	for _, b := range []string{"rbdt", "rbdi", "rbdctl"} {
		out, err := exec.Command(filepath.Join(dir, b), "--version").Output()
		m := versionLine.FindStringSubmatch(string(out))
		if err != nil || m == nil || m[1] != b {
			t.Errorf("%s --version: %v %q", b, err, out)
			continue
		}
		if _, err := exec.LookPath("git"); err != nil {
			continue
		}
		if err := exec.Command("git", "-C", repoRoot(t), "rev-parse", "--git-dir").Run(); err != nil {
			continue // not a checkout: the build information's version
		}
		v := strings.TrimSuffix(m[2], "-dirty")
		if i := strings.LastIndex(v, "-g"); i >= 0 { // TAG-N-gHASH
			v = v[i+2:]
		}
		if err := exec.Command("git", "-C", repoRoot(t), "cat-file", "-e", v+"^{commit}").Run(); err != nil {
			t.Errorf("%s --version says %s: %s is no commit of this repository", b, m[2], v)
		}
	}
}

// verifyUnits runs systemd-analyze verify on the installed units, with the
// installed tree as root (--root) so that the binaries their ExecStart=
// names are looked up there. The root also needs the units they depend on
// (sysinit.target, ...): the host's are copied in. With a man command, the
// Documentation= pages are looked up in the installed tree too (MANPATH).
// Warnings (an unknown key, a bad value) fail the test as errors do.
func verifyUnits(t *testing.T, dest, prefix string, units []string) {
	t.Helper()
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skipf("systemd-analyze not found: the units are not verified (%v)", err)
	}
	hostUnits := ""
	for _, d := range []string{"/usr/lib/systemd/system", "/lib/systemd/system"} {
		if _, err := os.Stat(filepath.Join(d, "sysinit.target")); err == nil {
			hostUnits = d
			break
		}
	}
	if hostUnits == "" {
		t.Skip("the host's systemd units (sysinit.target) not found: the units are not verified")
	}
	sys := filepath.Join(dest, "usr/lib/systemd/system")
	if err := os.MkdirAll(sys, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", hostUnits+"/.", sys+"/").CombinedOutput(); err != nil {
		t.Fatalf("copying %s: %v\n%s", hostUnits, err, out)
	}
	args := []string{"verify", "--root=" + dest, "--man=no"}
	env := os.Environ()
	if _, err := exec.LookPath("man"); err == nil {
		args[2] = "--man=yes"
		env = append(env, "MANPATH="+filepath.Join(dest, prefix, "share/man"))
	}
	for _, u := range units {
		args = append(args, filepath.Base(u))
	}
	cmd := exec.Command(sa, args...)
	cmd.Env = env
	cmd.Dir = dest
	out, err := cmd.CombinedOutput()
	t.Logf("%s %s: %v\n%s", sa, strings.Join(args, " "), err, out)
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestInstall runs make install into a scratch DESTDIR with the default
// PREFIX and checks the tree the installed units expect, verifies them with
// systemd-analyze, checks that a second install keeps a changed
// configuration, and that make uninstall removes the rest.
func TestInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: make install (a build) skipped")
	}
	dest := t.TempDir()
	const prefix = "/usr/local"
	out := makeIn(t, "install", "DESTDIR="+dest, "PREFIX="+prefix)
	t.Logf("make install:\n%s", out)
	units := checkTree(t, dest, prefix, "/usr/local/lib/systemd/system")
	checkVersions(t, filepath.Join(dest, prefix, "sbin"))

	// the administrator's configuration survives a new install
	cfg := filepath.Join(dest, "etc/rbd/rbdt.toml")
	mine := []byte("# mine\nlisten = [\"192.0.2.1\"]\n")
	if err := os.WriteFile(cfg, mine, 0o644); err != nil {
		t.Fatal(err)
	}
	out = makeIn(t, "install", "DESTDIR="+dest, "PREFIX="+prefix)
	if got, _ := os.ReadFile(cfg); !bytes.Equal(got, mine) {
		t.Errorf("a second make install overwrote %s:\n%s", cfg, out)
	}

	t.Run("verify", func(t *testing.T) { verifyUnits(t, dest, prefix, units) })

	t.Run("uninstall", func(t *testing.T) {
		out := makeIn(t, "uninstall", "DESTDIR="+dest, "PREFIX="+prefix)
		t.Logf("make uninstall:\n%s", out)
		for _, p := range []string{
			"usr/local/sbin/rbdt", "usr/local/sbin/rbdi", "usr/local/sbin/rbdctl",
			"usr/local/lib/systemd/system/rbdt.service", "usr/local/lib/systemd/system/rbdi.service",
			"etc/udev/rules.d/60-rbd.rules",
			"usr/local/share/man/man8/rbdt.8", "usr/local/share/man/man8/rbdi.8", "usr/local/share/man/man8/rbdctl.8",
			"usr/local/share/doc/rbd", "usr/local/share/rbd", "etc/rbd/rbdi.toml",
			"usr/local/" + completions[0].path, "usr/local/" + completions[1].path, "usr/local/" + completions[2].path,
		} {
			if _, err := os.Lstat(filepath.Join(dest, p)); err == nil {
				t.Errorf("make uninstall left %s", p)
			}
		}
		if got, _ := os.ReadFile(cfg); !bytes.Equal(got, mine) {
			t.Errorf("make uninstall removed the changed %s", cfg)
		}
	})
}

// TestInstallOtherPrefix: with a PREFIX that systemd does not search for
// units, they go to /etc/systemd/system and run the binaries from PREFIX.
func TestInstallOtherPrefix(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: make install (a build) skipped")
	}
	dest := t.TempDir()
	const prefix = "/opt/rbd"
	makeIn(t, "install", "DESTDIR="+dest, "PREFIX="+prefix)
	units := checkTree(t, dest, prefix, "/etc/systemd/system")
	t.Run("verify", func(t *testing.T) { verifyUnits(t, dest, prefix, units) })
}

// helpFlag is a flag line of cobra's --help: "  -c, --config string  ...".
var helpFlag = regexp.MustCompile(`(?m)^\s+(?:-([a-zA-Z]), )?--([a-z][a-z-]*)`)

// TestManPages checks that each man page documents every flag its program
// has (as --help lists them), and that groff formats it without a warning.
func TestManPages(t *testing.T) {
	root := repoRoot(t)
	for _, name := range []string{"rbdt", "rbdi", "rbdctl"} {
		t.Run(name, func(t *testing.T) {
			page := filepath.Join(root, "docs/man", name+".8")
			b, err := os.ReadFile(page)
			if err != nil {
				t.Fatal(err)
			}
			man := string(b)
			help, err := exec.Command(daemon(t, name), "--help").CombinedOutput()
			if err != nil {
				t.Fatalf("%s --help: %v\n%s", name, err, help)
			}
			flags := helpFlag.FindAllStringSubmatch(string(help), -1)
			if len(flags) < 5 {
				t.Fatalf("%s --help lists %d flags:\n%s", name, len(flags), help)
			}
			for _, f := range flags {
				// as roff writes it: \-\-read\-only, and ".BR \-r ", " \-\-rem"
				long := regexp.QuoteMeta(`\-\-` + strings.ReplaceAll(f[2], "-", `\-`))
				item := regexp.MustCompile(`(?m)^\.TP\n\.BI? ` + long + `\b`)
				if f[1] != "" {
					item = regexp.MustCompile(`(?m)^\.TP\n\.BR \\-` + f[1] + ` ", " ` + long + `\b`)
				}
				if !item.MatchString(man) {
					t.Errorf("%s.8 has no item for %s (want %s)", name, strings.TrimSpace(f[0]), item)
				}
			}
			for _, sec := range []string{"NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "FILES", "EXIT STATUS", "EXAMPLES", `"SEE ALSO"`} {
				if !strings.Contains(man, "\n.SH "+sec+"\n") && !(sec == `"SEE ALSO"` && strings.Contains(man, "\n.SH SEE ALSO\n")) {
					t.Errorf("%s.8 has no %s section", name, sec)
				}
			}
			groff, err := exec.LookPath("groff")
			if err != nil {
				t.Skipf("groff not found (Debian: groff-base): %s.8 not formatted", name)
			}
			out, err := exec.Command(groff, "-man", "-Tutf8", "-ww", "-z", page).CombinedOutput()
			if err != nil || len(out) > 0 {
				t.Errorf("groff -man -ww %s.8: %v\n%s", name, err, out)
			}
		})
	}
}
