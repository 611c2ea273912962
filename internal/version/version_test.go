package version

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	vcs := func(main string, kv ...string) *debug.BuildInfo {
		bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "rbd", Version: main}}
		for i := 0; i+1 < len(kv); i += 2 {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return bi
	}
	const rev = "4f97d6e0c1b2a3948576abcdef0123456789abcd"
	for _, tc := range []struct {
		name    string
		stamped string
		bi      *debug.BuildInfo
		want    Info
	}{
		{"stamped by the Makefile wins", "v0.1.0-2-g4f97d6e-dirty", vcs("(devel)", "vcs.revision", rev, "vcs.modified", "false"),
			Info{"v0.1.0-2-g4f97d6e-dirty", "go1.26.8"}},
		{"clean checkout", "", vcs("(devel)", "vcs.revision", rev, "vcs.modified", "false"), Info{"4f97d6e0c1b2", "go1.26.8"}},
		{"changed checkout", "", vcs("(devel)", "vcs.revision", rev, "vcs.modified", "true"), Info{"4f97d6e0c1b2-dirty", "go1.26.8"}},
		{"short revision kept whole", "", vcs("", "vcs.revision", "abc123"), Info{"abc123", "go1.26.8"}},
		{"go install module@version", "", vcs("v1.2.3", "vcs.revision", rev), Info{"v1.2.3", "go1.26.8"}},
		{"no VCS information (-buildvcs=false)", "", vcs("(devel)", "-trimpath", "true"), Info{"unknown", "go1.26.8"}},
		{"no build information", "", nil, Info{"unknown", runtime.Version()}},
		{"no build information, stamped", "v2", nil, Info{"v2", runtime.Version()}},
	} {
		if got := resolve(tc.stamped, tc.bi); got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// TestThisBinary: a test binary has build information, so there is always
// a Go version and some version.
func TestThisBinary(t *testing.T) {
	i := Get()
	if i.Version == "" || !strings.HasPrefix(i.GoVersion, "go") {
		t.Fatalf("Get() = %+v", i)
	}
	if s := String(); s != i.Version+" ("+i.GoVersion+")" {
		t.Fatalf("String() = %q", s)
	}
}
