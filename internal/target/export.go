package target

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"rbd/internal/backend"
	"rbd/internal/stats"
)

// ExportConfig is one exported block device or image file.
type ExportConfig struct {
	// Path is the device or file; it is also the export's name, the one an
	// initiator asks for (rbdctl -n ... -d /dev/ram0).
	Path     string `toml:"path"`
	ReadOnly bool   `toml:"read_only"`
	// Shared lets several initiator sessions open the export read-write at
	// once (their own coordination, e.g. a cluster filesystem, is then needed).
	Shared bool `toml:"shared"`
	// BlockSize forces the logical block size of an image file (0: native).
	BlockSize int `toml:"block_size"`
}

// ParseExport parses the --export flag: PATH[,ro][,shared][,bs=N].
func ParseExport(s string) (ExportConfig, error) {
	parts := strings.Split(s, ",")
	e := ExportConfig{Path: parts[0]}
	for _, p := range parts[1:] {
		switch {
		case p == "ro":
			e.ReadOnly = true
		case p == "rw":
			e.ReadOnly = false
		case p == "shared":
			e.Shared = true
		case strings.HasPrefix(p, "bs="):
			if _, err := fmt.Sscan(p[3:], &e.BlockSize); err != nil {
				return e, fmt.Errorf("export %q: bad block size %q", s, p[3:])
			}
		default:
			return e, fmt.Errorf("export %q: unknown option %q (want ro, rw, shared or bs=N)", s, p)
		}
	}
	return e, e.check()
}

func (e *ExportConfig) check() error {
	if e.Path == "" {
		return fmt.Errorf("export without a path")
	}
	if !filepath.IsAbs(e.Path) || filepath.Clean(e.Path) != e.Path {
		return fmt.Errorf("export %q: the path must be absolute and clean (like /dev/ram0)", e.Path)
	}
	return nil
}

// Export is an exported device as the server keeps it: the backend is opened
// at start (exclusively for block devices, so the target host cannot mount
// what it exports) and reopened on demand when that failed.
type Export struct {
	cfg   ExportConfig
	Stats *stats.Counters

	mu      sync.Mutex
	be      *backend.Backend
	openErr error
	writer  *session // the read-write session of an unshared export
	users   int      // sessions
}

// Name is the name initiators use.
func (e *Export) Name() string { return e.cfg.Path }

// Config returns the export's configuration.
func (e *Export) Config() ExportConfig { return e.cfg }

// Geometry returns the size in bytes and the logical block size of the
// export's backend, and false while the backend is not open (it could not be
// opened at start and no initiator has opened it since). For metrics.
func (e *Export) Geometry() (size int64, blockSize int, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.be == nil {
		return 0, 0, false
	}
	return e.be.Size(), e.be.LogicalBlockSize(), true
}

func (e *Export) open() (*backend.Backend, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.openLocked()
}

func (e *Export) openLocked() (*backend.Backend, error) {
	if e.be != nil {
		return e.be, nil
	}
	be, err := backend.Open(e.cfg.Path, backend.Options{ReadOnly: e.cfg.ReadOnly, Exclusive: true, BlockSize: e.cfg.BlockSize})
	e.openErr = err
	if err != nil {
		return nil, err
	}
	e.be = be
	return be, nil
}

func (e *Export) close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.be == nil {
		return nil
	}
	// what the initiators wrote is on stable storage before the export goes
	err := errors.Join(e.be.Flush(), e.be.Close())
	e.be = nil
	return err
}

// exports is the fixed set of exports, looked up by name. An initiator's name
// is only ever compared with the configured names: it never reaches the
// filesystem, so `..` or a symlink cannot lead anywhere else.
type exports struct {
	byName map[string]*Export
	list   []*Export
}

func newExports(cfgs []ExportConfig) (*exports, error) {
	x := &exports{byName: map[string]*Export{}}
	for _, c := range cfgs {
		if err := c.check(); err != nil {
			return nil, err
		}
		if x.byName[c.Path] != nil {
			return nil, fmt.Errorf("export %s is listed twice", c.Path)
		}
		e := &Export{cfg: c, Stats: stats.NewCounters()}
		x.byName[c.Path] = e
		x.list = append(x.list, e)
	}
	sort.Slice(x.list, func(i, j int) bool { return x.list[i].cfg.Path < x.list[j].cfg.Path })
	return x, nil
}

// lookup finds the export an initiator asked for, or says why not.
func (x *exports) lookup(name string) (*Export, error) {
	if e := x.byName[name]; e != nil {
		return e, nil
	}
	if !filepath.IsAbs(name) || filepath.Clean(name) != name {
		return nil, fmt.Errorf("export name %q refused: it must be an exported path, absolute and clean (no .., no //)", name)
	}
	return nil, fmt.Errorf("%s is not exported by this target", name)
}
