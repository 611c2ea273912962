package version

import (
	"runtime"
	"runtime/debug"
)

// Version is set by the Makefile's -ldflags -X from git describe --always
// --dirty; empty in a plain go build, which falls back on the build
// information.
var Version string

// Info is a build's identity.
type Info struct {
	Version   string // "v1.2.0-3-g1a2b3c4-dirty", "1a2b3c4d5e6f", or "unknown"
	GoVersion string // "go1.26.8"
}

// Get returns this binary's Info.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return resolve(Version, bi)
}

// String is Get as one line: "1a2b3c4-dirty (go1.26.8)".
func String() string {
	i := Get()
	return i.Version + " (" + i.GoVersion + ")"
}

// revisionLen is how much of a VCS revision is shown, as git's short form
// with room to spare.
const revisionLen = 12

// resolve picks the version: the stamped one, else the module version (go
// install module@version), else the VCS revision, marked -dirty when the
// tree had changes; "unknown" when there is nothing.
func resolve(stamped string, bi *debug.BuildInfo) Info {
	i := Info{Version: stamped, GoVersion: runtime.Version()}
	if bi == nil {
		if i.Version == "" {
			i.Version = "unknown"
		}
		return i
	}
	if bi.GoVersion != "" {
		i.GoVersion = bi.GoVersion
	}
	if i.Version != "" {
		return i
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		i.Version = v
		return i
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		i.Version = "unknown"
		return i
	}
	if len(rev) > revisionLen {
		rev = rev[:revisionLen]
	}
	if dirty {
		rev += "-dirty"
	}
	i.Version = rev
	return i
}
