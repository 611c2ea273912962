package backend

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func TestOpenFileGeometry(t *testing.T) {
	dir := t.TempDir()
	path := tempImage(t, dir, testSize+100) // a trailing partial block
	b := openT(t, path, Options{})

	lbs := b.LogicalBlockSize()
	if lbs < 512 || lbs > 65536 || lbs&(lbs-1) != 0 {
		t.Fatalf("LogicalBlockSize: want a power of two from 512 to 65536, got %d", lbs)
	}
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_DIOALIGN, &stx); err == nil &&
		stx.Mask&unix.STATX_DIOALIGN != 0 && stx.Dio_offset_align != 0 {
		if want := max(512, int(stx.Dio_offset_align)); lbs != want {
			t.Fatalf("LogicalBlockSize: want %d (STATX_DIOALIGN), got %d", want, lbs)
		}
	} else if lbs != 512 {
		t.Fatalf("LogicalBlockSize without STATX_DIOALIGN: want 512, got %d", lbs)
	}
	if want := int64(testSize+100) &^ int64(lbs-1); b.Size() != want {
		t.Fatalf("Size: want %d, got %d", want, b.Size())
	}
	if pbs := b.PhysicalBlockSize(); pbs < lbs || pbs&(pbs-1) != 0 {
		t.Fatalf("PhysicalBlockSize: want a power of two >= %d, got %d", lbs, pbs)
	}
	if b.Path() != path {
		t.Fatalf("Path: want %q, got %q", path, b.Path())
	}
	if b.IsBlockDevice() || b.ReadOnly() {
		t.Fatalf("IsBlockDevice, ReadOnly: want false, false, got %v, %v", b.IsBlockDevice(), b.ReadOnly())
	}
	if !b.CanDiscard() || !b.CanWriteZeroes() || !b.DiscardZeroes() {
		t.Fatalf("CanDiscard, CanWriteZeroes, DiscardZeroes: want all true, got %v, %v, %v",
			b.CanDiscard(), b.CanWriteZeroes(), b.DiscardZeroes())
	}

	// Through a symbolic link, read-only, with a forced block size.
	link := filepath.Join(dir, "link.img")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	b2 := openT(t, link, Options{ReadOnly: true, BlockSize: 4096})
	if b2.LogicalBlockSize() != 4096 || b2.PhysicalBlockSize() < 4096 || !b2.ReadOnly() {
		t.Fatalf("forced 4096, read-only: want 4096, >= 4096, true, got %d, %d, %v",
			b2.LogicalBlockSize(), b2.PhysicalBlockSize(), b2.ReadOnly())
	}
	if b2.Size() != testSize {
		t.Fatalf("Size with block size 4096: want %d, got %d", testSize, b2.Size())
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	image := tempImage(t, dir, testSize)
	tests := []struct {
		name  string
		path  string
		opts  Options
		is    error // the error must match this
		errno unix.Errno
		text  string // and contain this
	}{
		{"char device", "/dev/null", Options{}, ErrNotSupported, unix.EINVAL, "/dev/null: is a character device, not a block device or regular file"},
		{"directory", dir, Options{}, ErrNotSupported, unix.EINVAL, "is a directory"},
		{"fifo", fifo, Options{}, ErrNotSupported, unix.EINVAL, "is a FIFO"},
		{"missing", filepath.Join(dir, "missing"), Options{}, fs.ErrNotExist, unix.ENOENT, "no such file or directory"},
		{"empty path", "", Options{}, nil, unix.EINVAL, "empty path"},
		{"block size not a power of two", image, Options{BlockSize: 3 * 512}, nil, unix.EINVAL, "block size 1536 is not a power of two"},
		{"block size too small", image, Options{BlockSize: 256}, nil, unix.EINVAL, "block size 256"},
		{"block size too large", image, Options{BlockSize: 1 << 17}, nil, unix.EINVAL, "block size 131072"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Open(tt.path, tt.opts)
			if err == nil {
				b.Close()
				t.Fatalf("Open(%q): want an error, got nil", tt.path)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("Open(%q): want an error matching %v, got %v", tt.path, tt.is, err)
			}
			if errno(err) != tt.errno {
				t.Fatalf("Open(%q): want errno %v, got %v (%v)", tt.path, tt.errno, errno(err), err)
			}
			if !strings.HasPrefix(err.Error(), "backend: open") || !strings.Contains(err.Error(), tt.text) {
				t.Fatalf("Open(%q): want \"backend: open ...%s...\", got %q", tt.path, tt.text, err)
			}
		})
	}
}

func TestFileExclusive(t *testing.T) {
	path := tempImage(t, "", testSize)
	b := openT(t, path, Options{Exclusive: true})
	_, err := Open(path, Options{Exclusive: true})
	if err == nil || errno(err) != unix.EBUSY || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second exclusive Open: want EBUSY \"locked by another process\", got %v", err)
	}
	shared := openT(t, path, Options{ReadOnly: true})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	shared.Close()
	openT(t, path, Options{Exclusive: true})
}

func TestAlignedBuffer(t *testing.T) {
	page := unix.Getpagesize()
	for _, n := range []int{1, 512, page, page + 1, 3 << 20} {
		p, free, err := AlignedBuffer(n)
		if err != nil {
			t.Fatalf("AlignedBuffer(%d): %v", n, err)
		}
		if len(p) != n || addr(p)%uintptr(page) != 0 {
			t.Fatalf("AlignedBuffer(%d): want %d page-aligned bytes, got %d at %#x", n, n, len(p), addr(p))
		}
		p[0], p[n-1] = 1, 2
		if err := free(); err != nil {
			t.Fatalf("free: %v", err)
		}
		if err := free(); err != nil {
			t.Fatalf("second free: want nil, got %v", err)
		}
	}
	for _, n := range []int{0, -1} {
		if _, _, err := AlignedBuffer(n); err == nil {
			t.Fatalf("AlignedBuffer(%d): want an error, got nil", n)
		}
	}
}

// TestRoundTrip writes random data at assorted offsets and sizes, with and
// without FUA, and checks the whole device after each write.
func TestRoundTrip(t *testing.T) {
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			b, _ := tg.open(t, Options{})
			lbs := int64(b.LogicalBlockSize())
			blocks := b.Size() / lbs
			want := make(shadow, b.Size())
			rng := rand.New(rand.NewPCG(1, uint64(lbs)))
			buf := alignedBuf(t, 2<<20)
			cases := []struct{ off, n int64 }{ // in blocks
				{0, 1},
				{1, 7},
				{blocks - 1, 1},
				{37, 256},
				{blocks / 2, (1 << 20) / lbs},
				{blocks - (2<<20)/lbs, (2 << 20) / lbs},
				{3, 1},
			}
			for i, c := range cases {
				off, n := c.off*lbs, c.n*lbs
				p := buf[:n]
				fill(rng, p)
				fua := i%2 == 1
				if err := b.WriteAt(p, off, fua); err != nil {
					t.Fatalf("WriteAt(%d bytes at %d, fua %v): %v", n, off, fua, err)
				}
				copy(want[off:], p)
				clear(p)
				if err := b.ReadAt(p, off); err != nil {
					t.Fatalf("ReadAt(%d bytes at %d): %v", n, off, err)
				}
				if !bytes.Equal(p, want[off:off+n]) {
					t.Fatalf("ReadAt(%d bytes at %d) after WriteAt: data differs", n, off)
				}
			}
			if err := b.Flush(); err != nil {
				t.Fatalf("Flush: %v", err)
			}
			verify(t, b, want)
			if b.noDSync.Load() {
				t.Logf("kernel lacks RWF_DSYNC: FUA fell back to fdatasync")
			}

			// Zero-length requests are valid no-ops, even at the end.
			if err := b.ReadAt(nil, b.Size()); err != nil {
				t.Fatalf("ReadAt(0 bytes at Size): want nil, got %v", err)
			}
			if err := b.WriteAt(nil, b.Size(), true); err != nil {
				t.Fatalf("WriteAt(0 bytes at Size): want nil, got %v", err)
			}
		})
	}
}

// TestFUAFallback forces the write+fdatasync path used where pwritev2 or
// RWF_DSYNC is missing.
func TestFUAFallback(t *testing.T) {
	b, _ := targetNamed(t, "file").open(t, Options{})
	b.noDSync.Store(true)
	p := alignedBuf(t, 64<<10)
	fill(rand.New(rand.NewPCG(2, 2)), p)
	if err := b.WriteAt(p, 4096, true); err != nil {
		t.Fatalf("WriteAt(fua) without RWF_DSYNC: %v", err)
	}
	want := make(shadow, b.Size())
	copy(want[4096:], p)
	verify(t, b, want)
}

func TestLoopGeometry(t *testing.T) {
	for _, ss := range []int{512, 4096} {
		t.Run(fmt.Sprint(ss), func(t *testing.T) {
			dev, _ := newLoop(t, testSize, ss)
			b := openT(t, dev, Options{Exclusive: true})
			if b.LogicalBlockSize() != ss {
				t.Fatalf("LogicalBlockSize: want %d, got %d", ss, b.LogicalBlockSize())
			}
			if b.PhysicalBlockSize() < ss {
				t.Fatalf("PhysicalBlockSize: want >= %d, got %d", ss, b.PhysicalBlockSize())
			}
			if b.Size() != testSize {
				t.Fatalf("Size: want %d, got %d", testSize, b.Size())
			}
			if !b.IsBlockDevice() || b.Path() != dev {
				t.Fatalf("IsBlockDevice, Path: want true, %s, got %v, %s", dev, b.IsBlockDevice(), b.Path())
			}
			if !b.CanDiscard() || !b.CanWriteZeroes() || b.DiscardZeroes() {
				t.Fatalf("CanDiscard, CanWriteZeroes, DiscardZeroes: want true, true, false, got %v, %v, %v",
					b.CanDiscard(), b.CanWriteZeroes(), b.DiscardZeroes())
			}
			t.Logf("%s: rotational %v, write_zeroes_max_bytes %d", dev, b.Rotational(), b.writeZeroesMax)

			// A 512-byte device can be exported with 4096-byte blocks, not
			// the other way round.
			if ss == 512 {
				b4 := openT(t, dev, Options{BlockSize: 4096})
				if b4.LogicalBlockSize() != 4096 {
					t.Fatalf("LogicalBlockSize with BlockSize 4096: want 4096, got %d", b4.LogicalBlockSize())
				}
			} else if _, err := Open(dev, Options{BlockSize: 512}); err == nil || errno(err) != unix.EINVAL {
				t.Fatalf("Open with BlockSize 512 on a 4096-byte device: want EINVAL, got %v", err)
			}
		})
	}
}

func TestLoopReadOnlyDevice(t *testing.T) {
	dev, _ := newLoop(t, testSize, 512, "--read-only")
	_, err := Open(dev, Options{})
	want := fmt.Sprintf("backend: open %s: device is read-only (open it read-only?)", dev)
	if !errors.Is(err, ErrReadOnly) || errno(err) != unix.EROFS || err.Error() != want {
		t.Fatalf("Open of a read-only device for writing: want %q (ErrReadOnly, EROFS), got %v", want, err)
	}
	b := openT(t, dev, Options{ReadOnly: true, Exclusive: true})
	if err := b.ReadAt(alignedBuf(t, 512), 0); err != nil {
		t.Fatalf("ReadAt: %v", err)
	}
}

func TestLoopExclusive(t *testing.T) {
	dev, _ := newLoop(t, testSize, 512)
	b := openT(t, dev, Options{Exclusive: true})

	_, err := Open(dev, Options{Exclusive: true})
	if err == nil {
		t.Fatalf("second exclusive Open(%s): want EBUSY, got nil", dev)
	}
	if !errors.Is(err, unix.EBUSY) {
		t.Fatalf("second exclusive Open(%s): want EBUSY, got %v", dev, err)
	}
	want := fmt.Sprintf("backend: open %s: device or resource busy (mounted or exported by another process?)", dev)
	if err.Error() != want {
		t.Fatalf("second exclusive Open: want %q, got %q", want, err)
	}
	// O_EXCL only excludes other exclusive openers (and mounts).
	openT(t, dev, Options{ReadOnly: true})

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	openT(t, dev, Options{Exclusive: true})
}

// TestDiscard discards ranges and checks that they read back as zeroes (on
// a loop device, discard punches holes in the backing file) and that the
// space is released.
func TestDiscard(t *testing.T) {
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			b, backing := tg.open(t, Options{})
			lbs := int64(b.LogicalBlockSize())
			want := make(shadow, b.Size())
			p := alignedBuf(t, int(b.Size()))
			fill(rand.New(rand.NewPCG(3, 3)), p)
			if err := b.WriteAt(p, 0, false); err != nil {
				t.Fatalf("WriteAt: %v", err)
			}
			copy(want, p)
			if err := b.Flush(); err != nil {
				t.Fatalf("Flush: %v", err)
			}
			before := allocated(t, backing)

			const mib = 1 << 20
			for _, c := range []struct{ off, n int64 }{
				{mib, 4 * mib},     // whole file-system blocks
				{lbs, lbs},         // one logical block
				{7 * mib, 3 * lbs}, // a few
				{b.Size() - 64<<10, 64 << 10},
				{0, 0},
			} {
				if err := b.Discard(c.off, c.n); err != nil {
					t.Fatalf("Discard(%d, %d): %v", c.off, c.n, err)
				}
				clear(want[c.off : c.off+c.n])
			}
			if err := b.Flush(); err != nil {
				t.Fatalf("Flush: %v", err)
			}
			verify(t, b, want)
			if after := allocated(t, backing); after > before-4*mib {
				t.Fatalf("allocated bytes after discarding 4 MiB: want <= %d, got %d", before-4*mib, after)
			}
			if !b.CanDiscard() {
				t.Fatalf("CanDiscard after Discard: want true, got false")
			}
		})
	}
}

// TestWriteZeroes zeroes ranges, with and without unmapping, and checks that
// they read back as zeroes and the blocks around them are untouched.
func TestWriteZeroes(t *testing.T) {
	for _, tg := range targets {
		for _, mayUnmap := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/mayUnmap=%v", tg.name, mayUnmap), func(t *testing.T) {
				b, backing := tg.open(t, Options{})
				writeZeroesTest(t, b, backing, mayUnmap, true)
			})
		}
	}
	// Where the filesystem can neither punch holes nor zero ranges, zeroes
	// are written from the zero buffer.
	for _, mayUnmap := range []bool{false, true} {
		t.Run(fmt.Sprintf("buffer/mayUnmap=%v", mayUnmap), func(t *testing.T) {
			b, backing := targetNamed(t, "file").open(t, Options{})
			b.noPunch.Store(true)
			b.noZeroRange.Store(true)
			writeZeroesTest(t, b, backing, mayUnmap, false)
			if b.CanDiscard() {
				t.Fatalf("CanDiscard without hole punching: want false, got true")
			}
			if err := b.Discard(0, int64(b.LogicalBlockSize())); !errors.Is(err, ErrNotSupported) || errno(err) != unix.EOPNOTSUPP {
				t.Fatalf("Discard without hole punching: want ErrNotSupported and EOPNOTSUPP, got %v", err)
			}
		})
	}
}

func writeZeroesTest(t *testing.T, b *Backend, backing string, mayUnmap, unmaps bool) {
	t.Helper()
	lbs := int64(b.LogicalBlockSize())
	want := make(shadow, b.Size())
	p := alignedBuf(t, int(b.Size()))
	fill(rand.New(rand.NewPCG(4, 4)), p)
	if err := b.WriteAt(p, 0, false); err != nil {
		t.Fatalf("WriteAt: %v", err)
	}
	copy(want, p)
	const mib = 1 << 20
	for _, c := range []struct{ off, n int64 }{
		{lbs, lbs},
		{5 * lbs, 3 * lbs},
		{mib, 3 * mib}, // more than the zero buffer
		{b.Size() - lbs, lbs},
		{6 * mib, 0},
	} {
		if err := b.WriteZeroes(c.off, c.n, mayUnmap); err != nil {
			t.Fatalf("WriteZeroes(%d, %d, %v): %v", c.off, c.n, mayUnmap, err)
		}
		clear(want[c.off : c.off+c.n])
	}
	if err := b.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	verify(t, b, want)
	// Zeroing without unmapping keeps every block allocated; unmapping
	// (where the backend can) releases at least the 3 MiB range.
	a := allocated(t, backing)
	if !mayUnmap || !unmaps {
		if a < b.Size() {
			t.Fatalf("allocated after write-zeroes without unmap: want >= %d, got %d", b.Size(), a)
		}
	} else if a > b.Size()-3*mib {
		t.Fatalf("allocated after write-zeroes with unmap: want <= %d, got %d", b.Size()-3*mib, a)
	}
}

// TestTmpfsLearnsZeroRange checks that a filesystem without
// FALLOC_FL_ZERO_RANGE (tmpfs) is detected on first use and remembered.
func TestTmpfsLearnsZeroRange(t *testing.T) {
	b, _ := fileTarget("tmpfs", 0, true).open(t, Options{})
	lbs := int64(b.LogicalBlockSize())
	if err := b.WriteZeroes(0, lbs, false); err != nil {
		t.Fatalf("WriteZeroes: %v", err)
	}
	if !b.noZeroRange.Load() {
		t.Fatalf("tmpfs FALLOC_FL_ZERO_RANGE: want remembered as unsupported, got supported")
	}
	if b.noPunch.Load() || !b.CanDiscard() {
		t.Fatalf("tmpfs hole punching: want supported, got unsupported")
	}
}

// TestValidation checks the errors for misaligned and out-of-range
// requests of every kind.
func TestValidation(t *testing.T) {
	for _, tg := range []target{targetNamed(t, "file"), targetNamed(t, "file-bs4096"), targetNamed(t, "loop-4096")} {
		t.Run(tg.name, func(t *testing.T) {
			b, _ := tg.open(t, Options{})
			lbs := int64(b.LogicalBlockSize())
			size := b.Size()
			buf := alignedBuf(t, int(4*lbs))
			ops := []struct {
				name string
				do   func(p []byte, off, n int64) error
			}{
				{"read", func(p []byte, off, n int64) error { return b.ReadAt(p, off) }},
				{"write", func(p []byte, off, n int64) error { return b.WriteAt(p, off, false) }},
				{"discard", func(p []byte, off, n int64) error { return b.Discard(off, n) }},
				{"write-zeroes", func(p []byte, off, n int64) error { return b.WriteZeroes(off, n, true) }},
			}
			tests := []struct {
				name string
				p    []byte // for read and write; n is len(p)
				off  int64
				is   error
				text string
			}{
				{"offset", buf[:lbs], 1, ErrAlignment, "offset 1 is not a multiple of the logical block size"},
				{"offset half block", buf[:lbs], lbs / 2, ErrAlignment, "is not a multiple of the logical block size"},
				{"length", buf[:lbs+1], 0, ErrAlignment, fmt.Sprintf("length %d is not a multiple", lbs+1)},
				{"negative offset", buf[:lbs], -lbs, ErrRange, "negative offset"},
				{"at end", buf[:lbs], size, ErrRange, "beyond the end of the device"},
				{"across end", buf[:2*lbs], size - lbs, ErrRange, "beyond the end of the device"},
				{"far beyond", buf[:lbs], 1 << 62, ErrRange, "beyond the end of the device"},
			}
			for _, op := range ops {
				for _, tt := range tests {
					err := op.do(tt.p, tt.off, int64(len(tt.p)))
					if !errors.Is(err, tt.is) || errno(err) != unix.EINVAL {
						t.Fatalf("%s %s: want %v and EINVAL, got %v", op.name, tt.name, tt.is, err)
					}
					prefix := "backend: " + op.name + " " + b.Path() + ": "
					if !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tt.text) {
						t.Fatalf("%s %s: want %q...%q, got %q", op.name, tt.name, prefix, tt.text, err)
					}
				}
			}
			// Negative lengths exist only for Discard and WriteZeroes.
			if err := b.Discard(0, -lbs); !errors.Is(err, ErrRange) {
				t.Fatalf("Discard with negative length: want ErrRange, got %v", err)
			}
			if err := b.WriteZeroes(0, -lbs, false); !errors.Is(err, ErrRange) {
				t.Fatalf("WriteZeroes with negative length: want ErrRange, got %v", err)
			}
			// Misaligned buffers, for the data-carrying requests.
			for _, off := range []int64{1, 8, lbs / 2} {
				p := buf[off : off+lbs]
				if err := b.ReadAt(p, 0); !errors.Is(err, ErrAlignment) || !strings.Contains(err.Error(), "buffer address") {
					t.Fatalf("ReadAt into buffer at +%d: want ErrAlignment for the buffer address, got %v", off, err)
				}
				if err := b.WriteAt(p, 0, true); !errors.Is(err, ErrAlignment) || !strings.Contains(err.Error(), "buffer address") {
					t.Fatalf("WriteAt from buffer at +%d: want ErrAlignment for the buffer address, got %v", off, err)
				}
			}
			// Go heap memory is accepted when it happens to be aligned.
			if err := b.ReadAt(buf[lbs:2*lbs], lbs); err != nil {
				t.Fatalf("ReadAt into an aligned sub-slice: %v", err)
			}
		})
	}
}

func TestReadOnly(t *testing.T) {
	for _, tg := range []target{targetNamed(t, "file"), targetNamed(t, "loop-512")} {
		t.Run(tg.name, func(t *testing.T) {
			b, _ := tg.open(t, Options{ReadOnly: true})
			lbs := b.LogicalBlockSize()
			p := alignedBuf(t, lbs)
			if !b.ReadOnly() {
				t.Fatalf("ReadOnly: want true, got false")
			}
			if err := b.ReadAt(p, 0); err != nil {
				t.Fatalf("ReadAt: %v", err)
			}
			for name, err := range map[string]error{
				"write":        b.WriteAt(p, 0, false),
				"discard":      b.Discard(0, int64(lbs)),
				"write-zeroes": b.WriteZeroes(0, int64(lbs), false),
				"misaligned":   b.WriteAt(p, 1, false), // read-only comes first
			} {
				if !errors.Is(err, ErrReadOnly) || errno(err) != unix.EROFS || !strings.Contains(err.Error(), "opened read-only") {
					t.Fatalf("%s on a read-only backend: want ErrReadOnly and EROFS, got %v", name, err)
				}
			}
			if err := b.Flush(); err != nil {
				t.Fatalf("Flush on a read-only backend: want nil, got %v", err)
			}
		})
	}
}

func TestClose(t *testing.T) {
	path := tempImage(t, "", testSize)
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	lbs := b.LogicalBlockSize()
	p := alignedBuf(t, lbs)
	// Map the zero buffer, which Close unmaps.
	b.noZeroRange.Store(true)
	if err := b.WriteZeroes(0, int64(lbs), false); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := b.Close(); err != nil {
			t.Fatalf("Close #%d: want nil, got %v", i+1, err)
		}
	}
	for name, err := range map[string]error{
		"read":         b.ReadAt(p, 0),
		"write":        b.WriteAt(p, 0, false),
		"flush":        b.Flush(),
		"discard":      b.Discard(0, int64(lbs)),
		"write-zeroes": b.WriteZeroes(0, int64(lbs), false),
	} {
		if !errors.Is(err, ErrClosed) || errno(err) != unix.EBADF {
			t.Fatalf("%s after Close: want ErrClosed and EBADF, got %v", name, err)
		}
	}
}

// TestCloseWhileBusy closes a backend under concurrent I/O: requests either
// complete or fail with ErrClosed.
func TestCloseWhileBusy(t *testing.T) {
	b, err := Open(tempImage(t, "", testSize), Options{})
	if err != nil {
		t.Fatal(err)
	}
	chunk := 16 * int64(b.LogicalBlockSize())
	slots := b.Size() / chunk
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		p := alignedBuf(t, int(chunk))
		wg.Go(func() {
			for i := int64(0); ; i++ {
				off := (int64(g)*97 + i) % slots * chunk
				var err error
				if i%2 == 0 {
					err = b.WriteAt(p, off, false)
				} else {
					err = b.ReadAt(p, off)
				}
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("I/O during Close: want nil or ErrClosed, got %v", err)
	}
}

// TestConcurrentWriters runs 8 goroutines writing, zeroing and reading back
// disjoint ranges of one backend.
func TestConcurrentWriters(t *testing.T) {
	for _, tg := range []target{targetNamed(t, "file"), targetNamed(t, "loop-4096")} {
		t.Run(tg.name, func(t *testing.T) {
			b, _ := tg.open(t, Options{})
			const writers = 8
			lbs := int64(b.LogicalBlockSize())
			region := b.Size() / writers
			want := make(shadow, b.Size())
			var wg sync.WaitGroup
			errs := make(chan error, writers)
			for g := range writers {
				base := int64(g) * region
				mine := want[base : base+region]
				p := alignedBuf(t, 256<<10)
				q := alignedBuf(t, 256<<10)
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(5, uint64(g)))
					for i := range 32 {
						n := (1 + rng.Int64N(int64(len(p))/lbs)) * lbs
						off := rng.Int64N((region-n)/lbs+1) * lbs
						if i%8 == 7 {
							if err := b.WriteZeroes(base+off, n, i%16 == 7); err != nil {
								errs <- err
								return
							}
							clear(mine[off : off+n])
							continue
						}
						fill(rng, p[:n])
						if err := b.WriteAt(p[:n], base+off, i%4 == 0); err != nil {
							errs <- err
							return
						}
						copy(mine[off:], p[:n])
						if err := b.ReadAt(q[:n], base+off); err != nil {
							errs <- err
							return
						}
						if !bytes.Equal(p[:n], q[:n]) {
							errs <- fmt.Errorf("writer %d: %d bytes at %d read back differently", g, n, base+off)
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if err := b.Flush(); err != nil {
				t.Fatalf("Flush: %v", err)
			}
			verify(t, b, want)
		})
	}
}

// TestTruncatedUnderneath reads from an image that another process has
// shrunk since Open: the short read is an error, not silent zeroes.
func TestTruncatedUnderneath(t *testing.T) {
	path := tempImage(t, "", testSize)
	b := openT(t, path, Options{})
	if err := os.Truncate(path, testSize/2); err != nil {
		t.Fatal(err)
	}
	p := alignedBuf(t, 64<<10)
	err := b.ReadAt(p, testSize/2-32<<10)
	if !errors.Is(err, io.ErrUnexpectedEOF) || errno(err) != unix.EIO || !strings.Contains(err.Error(), "after 32768 bytes") {
		t.Fatalf("ReadAt across the new end: want io.ErrUnexpectedEOF and EIO after 32768 bytes, got %v", err)
	}
}

// TestIOErrno fills a small tmpfs and checks that the write's ENOSPC
// reaches the caller as an errno.
func TestIOErrno(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	probe := filepath.Join(dir, "probe")
	if fd, err := unix.Open(probe, unix.O_CREAT|unix.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0o600); err != nil {
		t.Skipf("tmpfs does not support O_DIRECT on this kernel: %v", err)
	} else {
		unix.Close(fd)
	}
	b := openT(t, tempImage(t, dir, testSize), Options{})
	p := alignedBuf(t, 2<<20)
	err := b.WriteAt(p, 0, false)
	if errno(err) != unix.ENOSPC {
		t.Fatalf("WriteAt 2 MiB to a 1 MiB tmpfs: want ENOSPC, got %v", err)
	}
	want := fmt.Sprintf("backend: write %s at offset 0 (2097152 bytes): no space left on device", b.Path())
	if err.Error() != want {
		t.Fatalf("WriteAt error: want %q, got %q", want, err)
	}
}
