package backend

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"testing"
)

// TestSparse16TiB checks 64-bit offsets on a sparse 16 TiB image. ext4 with
// 4 KiB blocks stops at 16 TiB - 4 KiB, so when the test's temporary
// directory cannot hold the file the test moves to tmpfs, and skips only if
// neither can.
func TestSparse16TiB(t *testing.T) {
	const (
		tib  = int64(1) << 40
		size = 16 * tib
	)
	path, err := sparseImage(t.TempDir(), size)
	if err != nil {
		t.Logf("temporary directory: %v; trying tmpfs", err)
		dir := shmDir(t)
		if path, err = sparseImage(dir, size); err != nil {
			t.Skipf("no filesystem here holds a %d-byte file: %v", size, err)
		}
	}
	b := openT(t, path, Options{})
	if b.Size() != size {
		t.Fatalf("Size: want %d, got %d", size, b.Size())
	}
	p := alignedBuf(t, 4096)
	q := alignedBuf(t, 4096)
	rng := rand.New(rand.NewPCG(16, 16))
	for _, off := range []int64{size - 4096, 3 * tib, 3*tib - 4096, 1<<32 - 4096} {
		fill(rng, p)
		if err := b.WriteAt(p, off, off == size-4096); err != nil {
			t.Fatalf("WriteAt(4096 bytes at %d): %v", off, err)
		}
		if err := b.ReadAt(q, off); err != nil {
			t.Fatalf("ReadAt(4096 bytes at %d): %v", off, err)
		}
		if !bytes.Equal(p, q) {
			t.Fatalf("ReadAt(4096 bytes at %d): data differs from what was written", off)
		}
	}
	if err := b.WriteZeroes(3*tib, 4096, false); err != nil {
		t.Fatalf("WriteZeroes at 3 TiB: %v", err)
	}
	if err := b.Discard(size-4096, 4096); err != nil {
		t.Fatalf("Discard at 16 TiB - 4096: %v", err)
	}
	for _, off := range []int64{3 * tib, size - 4096} {
		if err := b.ReadAt(q, off); err != nil || !isZero(q) {
			t.Fatalf("ReadAt(%d) after zeroing: want zeroes, got error %v, zero %v", off, err, isZero(q))
		}
	}
	if err := b.ReadAt(q, size); !errors.Is(err, ErrRange) {
		t.Fatalf("ReadAt at 16 TiB: want ErrRange, got %v", err)
	}
	if err := b.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if a := allocated(t, path); a > 1<<20 {
		t.Fatalf("allocated: want a sparse file (< 1 MiB), got %d bytes", a)
	}
}

// sparseImage creates a sparse file of size bytes in dir.
func sparseImage(dir string, size int64) (string, error) {
	f, err := os.CreateTemp(dir, "sparse-*.img")
	if err != nil {
		return "", err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}
