package packaging

import (
	"bytes"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// binDir holds rbdt and rbdi built from this tree by TestMain.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "rbd-packaging-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	return m.Run()
}

// repoRoot is the module root, packaging/.. .
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found: %v", err)
	}
	return root
}

var built = map[string]bool{}

// daemon builds cmd/name once (into binDir) and returns its path.
func daemon(t *testing.T, name string) string {
	t.Helper()
	bin := filepath.Join(binDir, name)
	if built[name] {
		return bin
	}
	gotool, err := exec.LookPath("go") // go test puts GOROOT/bin first in PATH
	if err != nil {
		t.Skipf("no go command to build %s: %v", name, err)
	}
	cmd := exec.Command(gotool, "build", "-trimpath", "-o", bin, "./cmd/"+name)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, out)
	}
	built[name] = true
	return bin
}

// settingLine is a commented-out setting of an example file: "#key = value"
// or "#[[table]]". Prose comments start with "# ".
var settingLine = regexp.MustCompile(`(?m)^#(\[\[[a-z_]+\]\]|[a-z_]+ = )`)

// enableAll uncomments every setting of an example file.
func enableAll(s string) string {
	return settingLine.ReplaceAllString(s, "$1")
}

// structKeys returns the TOML keys of struct typeName, declared in the Go
// files of dir: the toml tag, or the lower-cased field name (go-toml matches
// untagged fields case-insensitively). A field that is a slice of a struct
// of another rbd package is a table array; its keys come back in tables,
// by the table's key.
func structKeys(t *testing.T, root, dir, typeName string) (keys []string, tables map[string][]string) {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(root, dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		{
			imports := map[string]string{} // package name -> import path
			for _, im := range f.Imports {
				p, _ := strconv.Unquote(im.Path.Value)
				name := filepath.Base(p)
				if im.Name != nil {
					name = im.Name.Name
				}
				imports[name] = p
			}
			for _, decl := range f.Decls {
				gd, ok := decl.(*ast.GenDecl)
				if !ok || gd.Tok != token.TYPE {
					continue
				}
				for _, spec := range gd.Specs {
					ts := spec.(*ast.TypeSpec)
					st, ok := ts.Type.(*ast.StructType)
					if !ok || ts.Name.Name != typeName {
						continue
					}
					tables = map[string][]string{}
					for _, fl := range st.Fields.List {
						for _, name := range fl.Names {
							if !name.IsExported() {
								continue
							}
							key := strings.ToLower(name.Name)
							if fl.Tag != nil {
								tag, _ := strconv.Unquote(fl.Tag.Value)
								if v, ok := reflect.StructTag(tag).Lookup("toml"); ok {
									key, _, _ = strings.Cut(v, ",")
								}
							}
							if key == "-" {
								continue
							}
							if arr, ok := fl.Type.(*ast.ArrayType); ok {
								if sel, ok := arr.Elt.(*ast.SelectorExpr); ok {
									pkgPath := imports[sel.X.(*ast.Ident).Name]
									if sub, ok := strings.CutPrefix(pkgPath, "rbd/"); ok {
										tables[key], _ = structKeys(t, root, sub, sel.Sel.Name)
										continue
									}
								}
							}
							keys = append(keys, key)
						}
					}
					return keys, tables
				}
			}
		}
	}
	t.Fatalf("type %s not found in %s", typeName, dir)
	return nil, nil
}

// TestExampleDocumentsEveryKey checks that the example configurations show
// every key the daemons' configuration structs accept.
func TestExampleDocumentsEveryKey(t *testing.T) {
	root := repoRoot(t)
	for _, name := range []string{"rbdt", "rbdi"} {
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(root, "packaging", "etc", name+".toml"))
			if err != nil {
				t.Fatal(err)
			}
			example := enableAll(string(b))
			keys, tables := structKeys(t, root, "cmd/"+name, "fileConfig")
			if len(keys) == 0 || len(tables) == 0 {
				t.Fatalf("no keys or tables found in cmd/%s fileConfig: %v %v", name, keys, tables)
			}
			has := func(re string) bool { return regexp.MustCompile(`(?m)^` + re).MatchString(example) }
			for _, k := range keys {
				if !has(regexp.QuoteMeta(k) + ` = `) {
					t.Errorf("packaging/etc/%s.toml does not show the key %q", name, k)
				}
			}
			for table, tkeys := range tables {
				if !has(`\[\[` + regexp.QuoteMeta(table) + `\]\]`) {
					t.Errorf("packaging/etc/%s.toml does not show a [[%s]] table", name, table)
				}
				for _, k := range tkeys {
					if !has(regexp.QuoteMeta(k) + ` = `) {
						t.Errorf("packaging/etc/%s.toml does not show the [[%s]] key %q", name, table, k)
					}
				}
			}
		})
	}
}

// runDaemon runs bin with args until it exits or, if it is still running
// after a few seconds (it got far enough to serve), until SIGTERM stops it.
// It returns its standard error and exit code, and whether it was stopped.
func runDaemon(t *testing.T, bin string, args ...string) (stderr string, code int, stopped bool) {
	t.Helper()
	var buf bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stderr = &buf
	cmd.Stdout = &buf
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET=", "WATCHDOG_USEC=")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(5 * time.Second):
		stopped = true
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err = <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Fatalf("%s did not stop on SIGTERM within 30 s:\n%s", filepath.Base(bin), buf.String())
		}
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return buf.String(), code, stopped
}

// TestExampleConfigs runs the daemons on the example configurations, as
// shipped and with every commented-out setting enabled, and checks that they
// get past reading them. Every configuration error of rbdt and rbdi names
// the file; a negative control (an unknown key) shows that it does.
//
// On a host without RDMA rbdt then fails to listen; rbdi fails at
// prctl(PR_SET_IO_FLUSHER) without CAP_SYS_RESOURCE, or runs and reports
// its persistent devices as not mapped. Where a daemon gets further and
// serves, SIGTERM stops it. Flags keep the runs off the host's sockets: a
// private control socket, no metrics port.
func TestExampleConfigs(t *testing.T) {
	root := repoRoot(t)
	type variant struct {
		name string
		edit func(string) string
	}
	variants := []variant{
		{"shipped", func(s string) string { return s }},
		{"enabled", enableAll},
		{"control", func(s string) string { return "bogus_key = 1\n" + s }},
	}
	for _, name := range []string{"rbdt", "rbdi"} {
		for _, v := range variants {
			t.Run(name+"/"+v.name, func(t *testing.T) {
				b, err := os.ReadFile(filepath.Join(root, "packaging", "etc", name+".toml"))
				if err != nil {
					t.Fatal(err)
				}
				dir := t.TempDir()
				cfg := filepath.Join(dir, name+".toml")
				// the examples' key files, made for the run (root-only, as
				// the daemons demand)
				key := filepath.Join(dir, "test.key")
				if err := os.WriteFile(key, []byte(strings.Repeat("5a", 32)), 0o600); err != nil {
					t.Fatal(err)
				}
				text := regexp.MustCompile(`(?m)^key_file = "[^"]*"`).ReplaceAllString(v.edit(string(b)), `key_file = "`+key+`"`)
				if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
				args := []string{"--config", cfg, "--control", filepath.Join(dir, name+".sock"), "--metrics-addr="}
				if name == "rbdt" {
					args = append(args, "--listen", "127.0.0.1:1")
				} else {
					args = append(args, "--no-mlock")
				}
				stderr, code, stopped := runDaemon(t, daemon(t, name), args...)
				t.Logf("%s exit %d (stopped by SIGTERM: %v):\n%s", name, code, stopped, stderr)
				configError := strings.Contains(stderr, cfg)
				if v.name == "control" {
					if !configError || code == 0 {
						t.Fatalf("an unknown key was not reported as an error in %s", cfg)
					}
					return
				}
				if configError {
					t.Fatalf("%s rejects packaging/etc/%s.toml (%s)", name, name, v.name)
				}
				if stopped {
					if code != 0 {
						t.Fatalf("%s exited %d after SIGTERM", name, code)
					}
					return
				}
				// it stopped by itself: with an error after the configuration
				var after []string
				switch {
				case name == "rbdt" && v.name == "shipped":
					after = []string{"nothing to export"} // the shipped file exports nothing
				case name == "rbdt":
					after = []string{"listen on 127.0.0.1:1"}
				default:
					after = []string{"prctl(PR_SET_IO_FLUSHER)", "mlockall", "control socket"}
				}
				found := false
				for _, a := range after {
					found = found || strings.Contains(stderr, a)
				}
				if code == 0 || !found {
					t.Fatalf("%s stopped (exit %d) without one of the errors expected after reading the configuration: %q", name, code, after)
				}
				if name == "rbdt" && v.name == "enabled" {
					// the exports were read from the file
					for _, m := range regexp.MustCompile(`(?m)^path = "([^"]+)"`).FindAllStringSubmatch(v.edit(string(b)), -1) {
						if !strings.Contains(stderr, "export="+m[1]) {
							t.Errorf("rbdt did not report the export %s of the example", m[1])
						}
					}
				}
			})
		}
	}
}
