package daemon

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestSysmonEnv(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     []string
		want    []string
		changed bool
	}{
		{"no GODEBUG", []string{"A=1"}, []string{"A=1", "GODEBUG=" + awakeSysmon}, true},
		{"empty GODEBUG", []string{"GODEBUG=", "A=1"}, []string{"GODEBUG=" + awakeSysmon, "A=1"}, true},
		{"other settings", []string{"GODEBUG=gctrace=1"}, []string{"GODEBUG=gctrace=1," + awakeSysmon}, true},
		{"schedtrace given", []string{"GODEBUG=gctrace=1,schedtrace=0"}, []string{"GODEBUG=gctrace=1,schedtrace=0"}, false},
		{"schedtrace given with a space", []string{"GODEBUG=gctrace=1, schedtrace=1000"}, []string{"GODEBUG=gctrace=1, schedtrace=1000"}, false},
		{"two GODEBUGs: the first counts", []string{"GODEBUG=a=1", "GODEBUG=b=2"}, []string{"GODEBUG=a=1," + awakeSysmon}, true},
		{"a name that only ends in GODEBUG", []string{"XGODEBUG=1"}, []string{"XGODEBUG=1", "GODEBUG=" + awakeSysmon}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, changed := sysmonEnv(tc.env)
			if changed != tc.changed || !slices.Equal(got, tc.want) {
				t.Fatalf("sysmonEnv(%q) = %q, %v; want %q, %v", tc.env, got, changed, tc.want, tc.changed)
			}
		})
	}
}

// TestTuneRuntime: the process executes itself again with the setting, once,
// with its arguments; a GODEBUG that names schedtrace is left alone.
func TestTuneRuntime(t *testing.T) {
	if os.Getenv("RBD_TEST_TUNE") == "1" {
		TuneRuntime()
		comm, _ := os.ReadFile("/proc/self/comm")
		os.Stdout.WriteString(os.Getenv("GODEBUG") + "|" + strings.Join(os.Args[1:], " ") + "|" + strings.TrimSpace(string(comm)) + "\n")
		os.Exit(0)
	}
	for _, tc := range []struct{ godebug, want string }{
		{"", awakeSysmon},
		{"gctrace=0", "gctrace=0," + awakeSysmon},
		{"schedtrace=0", "schedtrace=0"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestTuneRuntime$")
		cmd.Env = append(os.Environ(), "RBD_TEST_TUNE=1", "GODEBUG="+tc.godebug)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("GODEBUG=%q: %v", tc.godebug, err)
		}
		// the process keeps its name (comm, at most 15 bytes), not "exe"
		comm := filepath.Base(os.Args[0])
		if len(comm) > 15 {
			comm = comm[:15]
		}
		if got, want := strings.TrimSpace(string(out)), tc.want+"|-test.run=^TestTuneRuntime$|"+comm; got != want {
			t.Fatalf("GODEBUG=%q: the daemon ran with %q, want %q", tc.godebug, got, want)
		}
	}
}
