package backend

import (
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Block size limits: the smallest logical block size Linux supports, and the
// largest this package accepts (the block layer's large-block-size limit).
const (
	minBlockSize = 512
	maxBlockSize = 64 << 10
)

// Options control how Open opens a backend. The zero value opens the path
// read-write and shared; the target daemon sets Exclusive for its exports.
type Options struct {
	// ReadOnly opens the path O_RDONLY; WriteAt, Discard and WriteZeroes
	// then fail with ErrReadOnly.
	ReadOnly bool

	// Exclusive claims the backend for this process. A block device is
	// opened with O_EXCL, so that opening fails with EBUSY while the device
	// is mounted, used by device-mapper, md or swap, or opened exclusively by
	// another process, and nobody can mount it while it is exported. A
	// regular file is locked with flock(LOCK_EX|LOCK_NB); that lock is
	// advisory and only stops other processes that take it too (such as a
	// second rbdt), and it is skipped on filesystems without lock support.
	Exclusive bool

	// BlockSize, if not zero, forces the logical block size: a power of two
	// from 512 to 65536 bytes that is a multiple of what the device or the
	// filesystem's direct I/O requires (for instance 4096 to export an image
	// file on a 512-byte filesystem as a 4Kn device). Zero means the
	// device's logical block size (BLKSSZGET) or, for a file, the
	// filesystem's direct I/O alignment (statx STATX_DIOALIGN, 512 when the
	// kernel does not report it).
	BlockSize int
}

// Backend is one open block device or image file. Its geometry is read once
// by Open and does not change; a device resized while open keeps its old
// Size until it is opened again.
//
// All methods are safe for concurrent use by multiple goroutines. I/O
// methods run in parallel; Close waits for them to return, and requests
// after Close fail with ErrClosed.
type Backend struct {
	path     string
	readOnly bool
	blockDev bool

	size       int64 // bytes, a multiple of lbs
	lbs        int   // logical block size: offset, length and buffer alignment
	pbs        int   // physical block size, >= lbs
	memAlign   int   // buffer address alignment, >= lbs
	rotational bool

	// Block devices: queue limits from sysfs.
	discardMax     uint64
	writeZeroesMax uint64

	// Regular files: what the filesystem turned out not to support, learnt
	// from EOPNOTSUPP on first use. Both files and devices: whether
	// pwritev2(RWF_DSYNC) is unavailable.
	noPunch     atomic.Bool
	noZeroRange atomic.Bool
	noDSync     atomic.Bool

	// mu guards fd: I/O holds it shared for the duration of its system
	// calls, Close holds it exclusively. fd is -1 after Close.
	mu sync.RWMutex
	fd int

	// zero is a read-only mapping of zeroes for WriteZeroes fallbacks,
	// mapped on first use and unmapped by Close.
	zeroOnce sync.Once
	zero     []byte
	zeroErr  error
}

// Open opens the block device or regular image file at path for O_DIRECT
// I/O (O_DIRECT|O_CLOEXEC, O_RDWR or O_RDONLY, plus O_EXCL for a block
// device when opts.Exclusive is set) and reads its geometry. It refuses
// other file types. Errors name the path and the cause and wrap the errno,
// for example "backend: open /dev/ram0: device or resource busy (mounted or
// exported by another process?)".
func Open(path string, opts Options) (*Backend, error) {
	if path == "" {
		return nil, newError("backend: open: empty path", unix.EINVAL)
	}
	if bs := opts.BlockSize; bs != 0 && (bs < minBlockSize || bs > maxBlockSize || bs&(bs-1) != 0) {
		return nil, newError(fmt.Sprintf("backend: open %s: block size %d is not a power of two from %d to %d", path, bs, minBlockSize, maxBlockSize), unix.EINVAL)
	}

	// Check the type before opening: opening a FIFO would block, and
	// opening a character device (a tape, a tty) may have side effects.
	var st unix.Stat_t
	if err := ignoringEINTR(func() error { return unix.Stat(path, &st) }); err != nil {
		return nil, newError(fmt.Sprintf("backend: open %s: %v", path, err), err)
	}
	if err := checkType(path, st.Mode); err != nil {
		return nil, err
	}
	blockDev := st.Mode&unix.S_IFMT == unix.S_IFBLK

	flags := unix.O_DIRECT | unix.O_CLOEXEC
	if opts.ReadOnly {
		flags |= unix.O_RDONLY
	} else {
		flags |= unix.O_RDWR
	}
	if blockDev && opts.Exclusive {
		// Without O_CREAT, O_EXCL is only defined for block devices.
		flags |= unix.O_EXCL
	}
	var fd int
	err := ignoringEINTR(func() (err error) {
		fd, err = unix.Open(path, flags, 0)
		return err
	})
	if err != nil {
		return nil, openError(path, err, blockDev, opts)
	}

	b := &Backend{path: path, readOnly: opts.ReadOnly, blockDev: blockDev, fd: fd}
	if err := b.init(&st, opts); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return b, nil
}

// checkType refuses everything but block devices and regular files.
func checkType(path string, mode uint32) error {
	var what string
	switch mode & unix.S_IFMT {
	case unix.S_IFBLK, unix.S_IFREG:
		return nil
	case unix.S_IFCHR:
		what = "a character device"
	case unix.S_IFDIR:
		what = "a directory"
	case unix.S_IFIFO:
		what = "a FIFO"
	case unix.S_IFSOCK:
		what = "a socket"
	default:
		what = fmt.Sprintf("of unknown type %#o", mode&unix.S_IFMT)
	}
	return newError(fmt.Sprintf("backend: open %s: is %s, not a block device or regular file", path, what), ErrNotSupported, unix.EINVAL)
}

// openError explains a failed open(2).
func openError(path string, err error, blockDev bool, opts Options) error {
	hint := ""
	switch err {
	case unix.EBUSY:
		if blockDev && opts.Exclusive {
			hint = " (mounted or exported by another process?)"
		}
	case unix.EINVAL:
		hint = " (does the filesystem support O_DIRECT?)"
	case unix.EROFS:
		if !opts.ReadOnly {
			hint = " (open it read-only?)"
		}
	}
	return newError(fmt.Sprintf("backend: open %s: %v%s", path, err, hint), err)
}

// init checks that fd is the file that was stat'ed, takes the file lock and
// reads the geometry and capabilities.
func (b *Backend) init(pre *unix.Stat_t, opts Options) error {
	var st unix.Stat_t
	if err := unix.Fstat(b.fd, &st); err != nil {
		return newError(fmt.Sprintf("backend: open %s: fstat: %v", b.path, err), err)
	}
	if st.Dev != pre.Dev || st.Ino != pre.Ino || st.Mode&unix.S_IFMT != pre.Mode&unix.S_IFMT {
		return newError(fmt.Sprintf("backend: open %s: replaced by another file while opening", b.path), unix.EAGAIN)
	}
	var err error
	if b.blockDev {
		err = b.initBlockDevice(&st)
	} else {
		err = b.initFile(&st, opts)
	}
	if err != nil {
		return err
	}
	if bs := opts.BlockSize; bs != 0 {
		if bs%b.lbs != 0 {
			what := "filesystem"
			if b.blockDev {
				what = "device"
			}
			return newError(fmt.Sprintf("backend: open %s: block size %d is not a multiple of the %d bytes the %s requires for direct I/O",
				b.path, bs, b.lbs, what), unix.EINVAL)
		}
		b.lbs = bs
	}
	b.memAlign = max(b.memAlign, b.lbs)
	b.pbs = max(b.pbs, b.lbs)
	// A file's trailing partial block cannot be accessed with O_DIRECT; it
	// is not exported.
	b.size &^= int64(b.lbs - 1)
	return nil
}

func (b *Backend) initBlockDevice(st *unix.Stat_t) error {
	size, err := unix.IoctlGetUint64(b.fd, unix.BLKGETSIZE64)
	if err != nil {
		return newError(fmt.Sprintf("backend: open %s: BLKGETSIZE64: %v", b.path, err), err)
	}
	lbs, err := unix.IoctlGetUint32(b.fd, unix.BLKSSZGET)
	if err != nil {
		return newError(fmt.Sprintf("backend: open %s: BLKSSZGET: %v", b.path, err), err)
	}
	pbs, err := unix.IoctlGetUint32(b.fd, unix.BLKPBSZGET)
	if err != nil {
		pbs = lbs
	}
	if lbs < minBlockSize || lbs > maxBlockSize || lbs&(lbs-1) != 0 {
		return newError(fmt.Sprintf("backend: open %s: unsupported logical block size %d", b.path, lbs), ErrNotSupported, unix.EINVAL)
	}
	if !b.readOnly {
		// Linux lets a read-only device be opened for writing and then
		// fails every write with EPERM; say so now instead.
		if ro, err := unix.IoctlGetUint32(b.fd, unix.BLKROGET); err == nil && ro != 0 {
			return newError(fmt.Sprintf("backend: open %s: device is read-only (open it read-only?)", b.path), ErrReadOnly, unix.EROFS)
		}
	}
	b.size = int64(size)
	b.lbs = int(lbs)
	b.pbs = int(pbs)
	b.memAlign = int(lbs)

	q := queueDir(uint64(st.Rdev))
	b.rotational = readSysfsUint(q, "rotational") == 1
	b.discardMax = readSysfsUint(q, "discard_max_bytes")
	b.writeZeroesMax = readSysfsUint(q, "write_zeroes_max_bytes")
	return nil
}

func (b *Backend) initFile(st *unix.Stat_t, opts Options) error {
	if opts.Exclusive {
		err := ignoringEINTR(func() error { return unix.Flock(b.fd, unix.LOCK_EX|unix.LOCK_NB) })
		switch {
		case err == unix.EWOULDBLOCK:
			return newError(fmt.Sprintf("backend: open %s: image file is locked by another process (exported twice?)", b.path), unix.EBUSY)
		case err == unix.ENOLCK || notSupported(err):
			// No locking on this filesystem: the lock is advisory anyway.
		case err != nil:
			return newError(fmt.Sprintf("backend: open %s: flock: %v", b.path, err), err)
		}
	}
	b.size = st.Size
	b.lbs = minBlockSize
	b.memAlign = minBlockSize
	b.pbs = int(st.Blksize)

	var stx unix.Statx_t
	err := ignoringEINTR(func() error {
		return unix.Statx(b.fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &stx)
	})
	// Older kernels fail with ENOSYS or EINVAL, or leave STATX_DIOALIGN out
	// of the mask; zero alignments mean the filesystem does not say.
	if err == nil && stx.Mask&unix.STATX_DIOALIGN != 0 && stx.Dio_offset_align != 0 {
		a := int(stx.Dio_offset_align)
		if a > maxBlockSize || a&(a-1) != 0 {
			return newError(fmt.Sprintf("backend: open %s: unsupported direct I/O alignment %d", b.path, a), ErrNotSupported, unix.EINVAL)
		}
		b.lbs = max(a, minBlockSize)
		if m := int(stx.Dio_mem_align); m > 0 && m <= maxBlockSize && m&(m-1) == 0 {
			b.memAlign = max(b.lbs, m)
		}
	}
	if b.pbs > maxBlockSize || b.pbs&(b.pbs-1) != 0 {
		b.pbs = b.lbs
	}

	// The rotational flag of the block device the filesystem is on, when
	// there is one (not for tmpfs, NFS, btrfs' anonymous devices...).
	b.rotational = readSysfsUint(queueDir(uint64(st.Dev)), "rotational") == 1
	return nil
}

// Path returns the path the backend was opened with.
func (b *Backend) Path() string { return b.path }

// IsBlockDevice reports whether the backend is a block device rather than a
// regular file.
func (b *Backend) IsBlockDevice() bool { return b.blockDev }

// ReadOnly reports whether the backend was opened read-only.
func (b *Backend) ReadOnly() bool { return b.readOnly }

// Size returns the size in bytes at Open: BLKGETSIZE64 for a block device,
// st_size rounded down to the logical block size for a file.
func (b *Backend) Size() int64 { return b.size }

// LogicalBlockSize returns the unit, in bytes, that offsets, lengths and
// buffer addresses of requests must be multiples of: BLKSSZGET for a block
// device, the filesystem's direct I/O alignment for a file, or
// Options.BlockSize when set.
func (b *Backend) LogicalBlockSize() int { return b.lbs }

// PhysicalBlockSize returns the device's physical block size (BLKPBSZGET)
// or, for a file, the filesystem's preferred I/O size (st_blksize); never
// less than LogicalBlockSize. Writes of this size and alignment avoid
// read-modify-write cycles.
func (b *Backend) PhysicalBlockSize() int { return b.pbs }

// Rotational reports whether the device (for a file: the block device its
// filesystem is on, if any) says it is rotational, from
// /sys/dev/block/MAJ:MIN/queue/rotational. It is false when unknown.
func (b *Backend) Rotational() bool { return b.rotational }

// CanDiscard reports whether Discard is expected to work. For a block device
// it is read from sysfs (queue/discard_max_bytes > 0). For a file it is true
// until Discard or WriteZeroes has seen the filesystem reject hole punching
// with EOPNOTSUPP: there is no side-effect-free probe for fallocate support,
// so the first use is the probe.
func (b *Backend) CanDiscard() bool {
	if b.blockDev {
		return b.discardMax > 0
	}
	return !b.noPunch.Load()
}

// DiscardZeroes reports whether ranges read back as zeroes after a
// successful Discard. That holds for files (Discard punches holes) but is
// not guaranteed for block devices, whose discarded contents are undefined;
// use WriteZeroes with mayUnmap to deallocate and zero.
func (b *Backend) DiscardZeroes() bool { return !b.blockDev }

// CanWriteZeroes reports whether WriteZeroes is available. It always is:
// BLKZEROOUT falls back to writing zeroes in the kernel, and for files the
// backend writes zeroes itself when fallocate cannot zero.
func (b *Backend) CanWriteZeroes() bool { return true }

// Close closes the file descriptor, after waiting for requests in flight.
// Later requests fail with ErrClosed. Close is idempotent: calls after the
// first return nil.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fd < 0 {
		return nil
	}
	fd := b.fd
	b.fd = -1
	if b.zero != nil {
		unix.Munmap(b.zero)
		b.zero = nil
	}
	// Not retried on EINTR: Linux releases the descriptor regardless.
	if err := unix.Close(fd); err != nil {
		return newError(fmt.Sprintf("backend: close %s: %v", b.path, err), err)
	}
	return nil
}

// acquire returns the file descriptor held shared for request op; the caller
// must call b.mu.RUnlock when done.
func (b *Backend) acquire(op string) (int, error) {
	b.mu.RLock()
	if b.fd < 0 {
		b.mu.RUnlock()
		return -1, closedError(op, b.path)
	}
	return b.fd, nil
}

// ignoringEINTR calls f until it does not fail with EINTR.
func ignoringEINTR(f func() error) error {
	for {
		if err := f(); err != unix.EINTR {
			return err
		}
	}
}
