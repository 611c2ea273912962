package target

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"rbd/internal/auth"
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
	// KeyFile holds the export's pre-shared key (hex; root-only, e.g.
	// /etc/rbd/keys/db.key): initiators that give the same key authenticate,
	// and the target proves itself to them (protocol version 3).
	KeyFile string `toml:"key_file"`
	// RequireAuth: only authenticated initiators may open the export.
	// Default: true when KeyFile is set; false lets initiators without a key
	// in too (while they are being given one).
	RequireAuth *bool `toml:"require_auth"`
	// Allow lists the initiator addresses or networks that may open the
	// export: "10.0.0.0/24", "10.0.0.7 ro", "fd00::/64 rw"; an entry without
	// a mode is read-write (read-only on a read-only export), the longest
	// matching prefix decides. Empty: every address.
	Allow []string `toml:"allow"`
	// Key is the key itself (tests; otherwise read from KeyFile).
	Key auth.Key `toml:"-"`
}

// ParseExport parses the --export flag:
// PATH[,ro][,shared][,bs=N][,key=FILE][,auth=optional][,allow=PREFIX][,allow-ro=PREFIX].
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
		case strings.HasPrefix(p, "key="):
			e.KeyFile = p[4:]
		case p == "auth=optional" || p == "auth=required":
			req := p == "auth=required"
			e.RequireAuth = &req
		case strings.HasPrefix(p, "allow="):
			e.Allow = append(e.Allow, p[6:])
		case strings.HasPrefix(p, "allow-ro="):
			e.Allow = append(e.Allow, p[9:]+" ro")
		default:
			return e, fmt.Errorf("export %q: unknown option %q (want ro, rw, shared, bs=N, key=FILE, auth=optional, allow=PREFIX or allow-ro=PREFIX)", s, p)
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
	if e.RequireAuth != nil && *e.RequireAuth && e.KeyFile == "" && e.Key.IsZero() {
		return fmt.Errorf("export %s: require_auth needs a key_file", e.Path)
	}
	if e.KeyFile != "" && !filepath.IsAbs(e.KeyFile) {
		return fmt.Errorf("export %s: key_file %q must be an absolute path (like /etc/rbd/keys/ram0.key)", e.Path, e.KeyFile)
	}
	if _, err := ParseAllow(e.Allow); err != nil {
		return fmt.Errorf("export %s: %w", e.Path, err)
	}
	return nil
}

// AllowEntry is one entry of an export's allow list.
type AllowEntry struct {
	Prefix   netip.Prefix
	ReadOnly bool
}

// ParseAllow parses allow-list entries: "ADDR" or "ADDR/BITS", optionally
// followed by a space and "ro" or "rw".
func ParseAllow(list []string) ([]AllowEntry, error) {
	var out []AllowEntry
	for _, s := range list {
		f := strings.Fields(s)
		if len(f) == 0 || len(f) > 2 {
			return nil, fmt.Errorf("allow entry %q: want ADDR[/BITS] [ro|rw], e.g. \"10.0.0.0/24 rw\"", s)
		}
		var a AllowEntry
		if len(f) == 2 {
			switch f[1] {
			case "ro":
				a.ReadOnly = true
			case "rw":
			default:
				return nil, fmt.Errorf("allow entry %q: mode %q, want ro or rw", s, f[1])
			}
		}
		var err error
		if strings.Contains(f[0], "/") {
			a.Prefix, err = netip.ParsePrefix(f[0])
			if err == nil && a.Prefix.Masked() != a.Prefix {
				err = fmt.Errorf("host bits set (the network is %s)", a.Prefix.Masked())
			}
		} else {
			var ip netip.Addr
			if ip, err = netip.ParseAddr(f[0]); err == nil {
				a.Prefix = netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen())
			}
		}
		if err != nil {
			return nil, fmt.Errorf("allow entry %q: %v", s, err)
		}
		if a.Prefix.Addr().Is4In6() {
			a.Prefix = netip.PrefixFrom(a.Prefix.Addr().Unmap(), a.Prefix.Bits()-96)
		}
		out = append(out, a)
	}
	return out, nil
}

// allowed says whether addr may open the export, and whether only
// read-only: the longest matching prefix decides; no list allows all.
func (e *Export) allowed(addr netip.Addr) (ok, readOnly bool) {
	if len(e.allow) == 0 {
		return true, false
	}
	addr = addr.Unmap()
	best := -1
	for _, a := range e.allow {
		if a.Prefix.Contains(addr) && a.Prefix.Bits() > best {
			best, readOnly = a.Prefix.Bits(), a.ReadOnly
		}
	}
	return best >= 0, readOnly
}

// requireAuth: only authenticated initiators may open the export.
func (e *Export) requireAuth() bool {
	if e.cfg.RequireAuth != nil {
		return *e.cfg.RequireAuth
	}
	return !e.cfg.Key.IsZero()
}

// Export is an exported device as the server keeps it: the backend is opened
// at start (exclusively for block devices, so the target host cannot mount
// what it exports) and reopened on demand when that failed.
type Export struct {
	cfg   ExportConfig
	Stats *stats.Counters
	allow []AllowEntry

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
		if c.Key.IsZero() && c.KeyFile != "" {
			k, err := auth.LoadKeyFile(c.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("export %s: %w", c.Path, err)
			}
			c.Key = k
		}
		allow, _ := ParseAllow(c.Allow) // checked above
		e := &Export{cfg: c, Stats: stats.NewCounters(), allow: allow}
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
