package backend

import (
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// zeroBufSize is the size of the zero buffer WriteZeroes writes from when
// fallocate cannot zero a range of a file: large enough to keep the number
// of system calls low, a multiple of every supported block size.
const zeroBufSize = 1 << 20

// AlignedBuffer returns n bytes of page-aligned anonymous memory
// (unix.Mmap, MAP_PRIVATE|MAP_ANONYMOUS, outside the Go heap), suitable for
// O_DIRECT requests on any Backend, and a function that unmaps it. The
// buffer must not be used after free has been called; free is idempotent and
// safe for concurrent use, and returns the munmap error of the first call.
func AlignedBuffer(n int) (buf []byte, free func() error, err error) {
	if n <= 0 {
		return nil, nil, newError(fmt.Sprintf("backend: aligned buffer: invalid size %d", n), unix.EINVAL)
	}
	page := unix.Getpagesize()
	if n > int(^uint(0)>>1)-page {
		return nil, nil, newError(fmt.Sprintf("backend: aligned buffer: invalid size %d", n), unix.EINVAL)
	}
	m, err := unix.Mmap(-1, 0, (n+page-1)&^(page-1), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, nil, newError(fmt.Sprintf("backend: aligned buffer: mmap %d bytes: %v", n, err), err)
	}
	var once sync.Once
	var ferr error
	free = func() error {
		once.Do(func() {
			if err := unix.Munmap(m); err != nil {
				ferr = newError(fmt.Sprintf("backend: aligned buffer: munmap: %v", err), err)
			}
		})
		return ferr
	}
	return m[:n:n], free, nil
}

// zeroes returns the backend's read-only buffer of zeroes, mapping it on
// first use. The caller holds b.mu shared; Close unmaps it.
func (b *Backend) zeroes() ([]byte, error) {
	b.zeroOnce.Do(func() {
		// PROT_READ: nothing can ever dirty it, and untouched anonymous
		// memory costs nothing (the kernel maps its shared zero page).
		b.zero, b.zeroErr = unix.Mmap(-1, 0, zeroBufSize, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	})
	return b.zero, b.zeroErr
}

// addr returns the address of p's first byte.
func addr(p []byte) uintptr {
	return uintptr(unsafe.Pointer(unsafe.SliceData(p)))
}
