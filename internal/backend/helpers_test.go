package backend

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// testSize is the size of the images and loop devices most tests use.
const testSize = 8 << 20

// tempImage creates a sparse file of size bytes in dir (t.TempDir() when dir
// is "") and returns its path.
func tempImage(t *testing.T, dir string, size int64) string {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	f, err := os.CreateTemp(dir, "image-*.img")
	if err != nil {
		t.Fatalf("create image: %v", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatalf("truncate image to %d: %v", size, err)
	}
	return f.Name()
}

// shmDir returns a fresh directory on tmpfs (/dev/shm), removed when the
// test ends, or skips the test when there is none or it lacks O_DIRECT.
func shmDir(t *testing.T) string {
	t.Helper()
	var sfs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &sfs); err != nil || sfs.Type != unix.TMPFS_MAGIC {
		t.Skip("no tmpfs at /dev/shm")
	}
	dir, err := os.MkdirTemp("/dev/shm", "backend-test-*")
	if err != nil {
		t.Skipf("cannot create a directory in /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	probe := filepath.Join(dir, "probe")
	fd, err := unix.Open(probe, unix.O_CREAT|unix.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Skipf("tmpfs does not support O_DIRECT on this kernel: %v", err)
	}
	unix.Close(fd)
	os.Remove(probe)
	return dir
}

// openT opens path with opts and closes it when the test ends.
func openT(t *testing.T, path string, opts Options) *Backend {
	t.Helper()
	b, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open(%s, %+v): %v", path, opts, err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// alignedBuf returns a page-aligned buffer of n bytes freed when the test
// ends.
func alignedBuf(t *testing.T, n int) []byte {
	t.Helper()
	p, free, err := AlignedBuffer(n)
	if err != nil {
		t.Fatalf("AlignedBuffer(%d): %v", n, err)
	}
	t.Cleanup(func() {
		if err := free(); err != nil {
			t.Errorf("free: %v", err)
		}
	})
	return p
}

// needLoop skips the test when loop devices cannot be used.
func needLoop(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("no loop devices: %v", err)
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("losetup is not installed")
	}
}

// losetupMu serialises "losetup -f", which can race with itself.
var losetupMu sync.Mutex

// newLoop attaches a direct-I/O loop device with the given logical sector
// size (and extra losetup arguments) over a fresh sparse file of size bytes,
// detaches it when the test ends, and returns the device and the backing
// file.
func newLoop(t *testing.T, size int64, sectorSize int, extra ...string) (dev, backing string) {
	t.Helper()
	needLoop(t)
	backing = tempImage(t, "", size)
	args := append([]string{"-f", "--show", "--direct-io=on", "--sector-size", strconv.Itoa(sectorSize)}, extra...)
	losetupMu.Lock()
	cmd := exec.Command("losetup", append(args, backing)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	losetupMu.Unlock()
	if err != nil {
		t.Fatalf("losetup -f %s: %v: %s", backing, err, strings.TrimSpace(stderr.String()))
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev, backing
}

// target is a kind of backend the data-path tests run on.
type target struct {
	name string
	// open returns a fresh, zeroed backend of testSize bytes and the
	// regular file that holds its data.
	open func(t *testing.T, opts Options) (b *Backend, backing string)
}

func fileTarget(name string, blockSize int, tmpfs bool) target {
	return target{name, func(t *testing.T, opts Options) (*Backend, string) {
		dir := ""
		if tmpfs {
			dir = shmDir(t)
		}
		path := tempImage(t, dir, testSize)
		opts.BlockSize = blockSize
		return openT(t, path, opts), path
	}}
}

func loopTarget(name string, sectorSize int) target {
	return target{name, func(t *testing.T, opts Options) (*Backend, string) {
		dev, backing := newLoop(t, testSize, sectorSize)
		return openT(t, dev, opts), backing
	}}
}

// targets lists the backends: files on the test's temporary directory (with
// the filesystem's block size and forced to 4096), a file on tmpfs (which
// lacks FALLOC_FL_ZERO_RANGE), and loop devices with 512 and 4096-byte
// sectors.
var targets = []target{
	fileTarget("file", 0, false),
	fileTarget("file-bs4096", 4096, false),
	fileTarget("tmpfs", 0, true),
	loopTarget("loop-512", 512),
	loopTarget("loop-4096", 4096),
}

// targetNamed returns the target called name.
func targetNamed(t *testing.T, name string) target {
	t.Helper()
	for _, tg := range targets {
		if tg.name == name {
			return tg
		}
	}
	t.Fatalf("no target %q", name)
	return target{}
}

// shadow is the expected content of a backend.
type shadow []byte

// fill fills p with random bytes from rng.
func fill(rng *rand.Rand, p []byte) {
	for i := 0; i+8 <= len(p); i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			p[i+j] = byte(v >> (8 * j))
		}
	}
}

// verify reads the whole backend and compares it with want.
func verify(t *testing.T, b *Backend, want shadow) {
	t.Helper()
	if b.Size() != int64(len(want)) {
		t.Fatalf("Size: want %d, got %d", len(want), b.Size())
	}
	const chunk = 1 << 20
	p := alignedBuf(t, chunk)
	for off := 0; off < len(want); off += chunk {
		n := min(chunk, len(want)-off)
		if err := b.ReadAt(p[:n], int64(off)); err != nil {
			t.Fatalf("ReadAt(%d bytes at %d): %v", n, off, err)
		}
		if !bytes.Equal(p[:n], want[off:off+n]) {
			i := 0
			for p[i] == want[off+i] {
				i++
			}
			t.Fatalf("content at byte %d: want %#x, got %#x", off+i, want[off+i], p[i])
		}
	}
}

// isZero reports whether p is all zeroes.
func isZero(p []byte) bool {
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}

// errno returns the errno err wraps, or 0.
func errno(err error) unix.Errno {
	var e unix.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

// allocated returns the bytes allocated to the file at path.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Blocks * 512
}
