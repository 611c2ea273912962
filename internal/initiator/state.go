package initiator

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"rbd/internal/wire"
)

// The state directory (Config.StateDir, /var/lib/rbd for rbdi) keeps one
// file per device, devices/rbdiN.json, for as long as the device exists:
// what a restarted rbdi needs to adopt the kernel device the old process
// left (its nbd index and backend identifier), to open the export again
// under the same session and queues, and to serve it on the same NBD socket.
// The session id is a secret of the initiator and the target, so the files
// are root's only (0600 in a 0700 directory). rbdi.lock, held (flock) by the
// running rbdi, keeps a second one from adopting devices that are not dead.

// stateVersion is the layout of a state file; a file of another version is
// left alone (and logged), not adopted.
const stateVersion = 1

// deviceState is one device's state file.
type deviceState struct {
	Version int `json:"version"`
	Num     int `json:"num"` // N of /dev/rbdiN
	// Kernel: the device has a kernel NBD device, /dev/nbd<Index>,
	// connected with Backend as its backend identifier.
	Kernel  bool   `json:"kernel"`
	Index   uint32 `json:"nbd_index"`
	Backend string `json:"backend,omitempty"`
	// Request is the AddRequest the device was made with (the key file by
	// its path only); TargetAddr what its target resolved to then.
	Request    AddRequest `json:"request"`
	TargetAddr string     `json:"target_addr"`
	Session    string     `json:"session"` // hex
	Queues     int        `json:"queues"`
}

func (st *deviceState) session() (wire.SessionID, error) {
	var id wire.SessionID
	b, err := hex.DecodeString(st.Session)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("session %q is not %d hex bytes", st.Session, len(id))
	}
	copy(id[:], b)
	return id, nil
}

func (st *deviceState) check() error {
	switch {
	case st.Version != stateVersion:
		return fmt.Errorf("state version %d, this rbdi knows %d", st.Version, stateVersion)
	case st.Num < 0 || st.Num >= 1<<16:
		return fmt.Errorf("device number %d out of range", st.Num)
	case st.Request.Export == "" || st.TargetAddr == "":
		return errors.New("no export or target")
	case st.Queues < 1 || st.Queues > 64:
		return fmt.Errorf("%d queues", st.Queues)
	case st.Kernel && st.Backend == "":
		return errors.New("a kernel device without a backend identifier")
	}
	_, err := st.session()
	return err
}

// ErrStateLocked: another rbdi holds the state directory.
var ErrStateLocked = errors.New("state directory locked by another rbdi")

// stateStore reads and writes the state directory; the zero value (no
// directory) keeps nothing.
type stateStore struct {
	dir  string
	lock *os.File
}

func (s *stateStore) enabled() bool { return s.dir != "" }

func (s *stateStore) path(num int) string {
	return filepath.Join(s.dir, "devices", "rbdi"+strconv.Itoa(num)+".json")
}

// open makes the directory and takes its lock. Another rbdi holding the
// lock is an error: it serves these devices.
func (s *stateStore) open() error {
	if !s.enabled() {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(s.dir, "devices"), 0o700); err != nil {
		s.dir = "" // keep nothing
		return fmt.Errorf("state directory: %w", err)
	}
	lp := filepath.Join(s.dir, "rbdi.lock")
	f, err := os.OpenFile(lp, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		s.dir = ""
		return fmt.Errorf("state directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		dir := s.dir
		s.dir = ""
		if errors.Is(err, unix.EWOULDBLOCK) {
			s.dir = dir // the other rbdi's: the caller stops
			return fmt.Errorf("%w: %s (%s): give each rbdi a --state-dir of its own", ErrStateLocked, s.dir, lp)
		}
		return fmt.Errorf("state directory: lock %s: %w", lp, err)
	}
	s.lock = f
	return nil
}

func (s *stateStore) close() {
	if s.lock != nil {
		s.lock.Close() // releases the flock
		s.lock = nil
	}
}

// save writes a device's file atomically (a temporary file, fsync, rename).
func (s *stateStore) save(st *deviceState) error {
	if !s.enabled() {
		return nil
	}
	st.Version = stateVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	p := s.path(st.Num)
	f, err := os.CreateTemp(filepath.Dir(p), ".rbdi*.tmp")
	if err != nil {
		return fmt.Errorf("saving the device state: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("saving the device state: %w", err)
	}
	return nil
}

// remove deletes a device's file.
func (s *stateStore) remove(num int) error {
	if !s.enabled() {
		return nil
	}
	if err := os.Remove(s.path(num)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the device state: %w", err)
	}
	return nil
}

// stateFile is a state file as load found it: its state, or why it cannot
// be used.
type stateFile struct {
	path string
	st   *deviceState
	err  error
}

// decode reads the state file at path p from its bytes b and checks it.
func (s *stateStore) decode(b []byte, p string) (*deviceState, error) {
	var st deviceState
	err := json.Unmarshal(b, &st)
	if err == nil {
		if err = st.check(); err == nil && s.path(st.Num) != p {
			err = fmt.Errorf("names device %d", st.Num)
		}
	}
	return &st, err
}

// load reads every device file, by device number.
func (s *stateStore) load() []stateFile {
	if !s.enabled() {
		return nil
	}
	ents, _ := os.ReadDir(filepath.Join(s.dir, "devices"))
	var out []stateFile
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "rbdi") || !strings.HasSuffix(name, ".json") {
			continue
		}
		p := filepath.Join(s.dir, "devices", name)
		sf := stateFile{path: p}
		b, err := os.ReadFile(p)
		if err == nil && len(b) > 1<<20 {
			err = errors.New("larger than 1 MiB")
		}
		if err == nil {
			sf.st, err = s.decode(b, p)
		}
		sf.err = err
		out = append(out, sf)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].err != nil || out[j].err != nil {
			return out[i].path < out[j].path
		}
		return out[i].st.Num < out[j].st.Num
	})
	return out
}
