package backend

import (
	"fmt"
	"io"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Request names, as they appear in error messages.
const (
	opRead        = "read"
	opWrite       = "write"
	opFlush       = "flush"
	opDiscard     = "discard"
	opWriteZeroes = "write-zeroes"
)

// check validates the range [off, off+n) of request op: non-negative,
// aligned to the logical block size and inside the device.
func (b *Backend) check(op string, off, n int64) error {
	if off < 0 {
		return rangeError(op, b.path, "negative offset %d", off)
	}
	if n < 0 {
		return rangeError(op, b.path, "negative length %d", n)
	}
	mask := int64(b.lbs - 1)
	if off&mask != 0 {
		return alignmentError(op, b.path, "offset %d is not a multiple of the logical block size %d", off, b.lbs)
	}
	if n&mask != 0 {
		return alignmentError(op, b.path, "length %d is not a multiple of the logical block size %d", n, b.lbs)
	}
	if off > b.size || n > b.size-off {
		return rangeError(op, b.path, "offset %d length %d is beyond the end of the device (size %d)", off, n, b.size)
	}
	return nil
}

// checkBuffer validates the address of buffer p of request op for O_DIRECT,
// which the kernel would otherwise reject with a bare EINVAL.
func (b *Backend) checkBuffer(op string, p []byte) error {
	if len(p) > 0 && addr(p)&uintptr(b.memAlign-1) != 0 {
		return alignmentError(op, b.path, "buffer address %#x is not aligned to %d bytes for direct I/O", addr(p), b.memAlign)
	}
	return nil
}

// ReadAt reads len(p) bytes at byte offset off into p. The offset, len(p)
// and the address of p must be multiples of LogicalBlockSize (memory from
// AlignedBuffer or unix.Mmap is), and the range must lie within Size. Short
// reads are continued and EINTR is retried, so a nil error means p is full.
// ReadAt is safe for concurrent use.
func (b *Backend) ReadAt(p []byte, off int64) error {
	fd, err := b.acquire(opRead)
	if err != nil {
		return err
	}
	defer b.mu.RUnlock()
	if err := b.check(opRead, off, int64(len(p))); err != nil {
		return err
	}
	if err := b.checkBuffer(opRead, p); err != nil {
		return err
	}
	for done := 0; done < len(p); {
		n, err := unix.Pread(fd, p[done:], off+int64(done))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return ioError(opRead, b.path, off, int64(len(p)), err)
		case n == 0:
			// The file shrank under us (another process truncated it).
			return newError(fmt.Sprintf("backend: read %s at offset %d (%d bytes): unexpected end of file after %d bytes (image truncated?)",
				b.path, off, len(p), done), io.ErrUnexpectedEOF, unix.EIO)
		}
		done += n
	}
	return nil
}

// WriteAt writes p at byte offset off, with the same alignment and range
// rules as ReadAt. With fua set, the data is durable (on stable media, past
// any volatile write cache) when WriteAt returns: it is written with
// pwritev2(RWF_DSYNC), which becomes a FUA write on devices that support it,
// or, where the kernel lacks RWF_DSYNC, written and then fdatasync'ed.
// Short writes are continued and EINTR is retried. WriteAt is safe for
// concurrent use.
func (b *Backend) WriteAt(p []byte, off int64, fua bool) error {
	fd, err := b.acquire(opWrite)
	if err != nil {
		return err
	}
	defer b.mu.RUnlock()
	if b.readOnly {
		return readOnlyError(opWrite, b.path)
	}
	if err := b.check(opWrite, off, int64(len(p))); err != nil {
		return err
	}
	if err := b.checkBuffer(opWrite, p); err != nil {
		return err
	}
	if len(p) == 0 {
		return nil
	}
	synced, err := b.pwriteFull(fd, p, off, fua)
	if err != nil {
		return b.writeError(opWrite, off, int64(len(p)), err)
	}
	if fua && !synced {
		if err := ignoringEINTR(func() error { return unix.Fdatasync(fd) }); err != nil {
			return ioError(opWrite, b.path, off, int64(len(p)), err)
		}
	}
	return nil
}

// pwriteFull writes all of p at off on fd, continuing short writes and
// retrying EINTR. With dsync it writes with RWF_DSYNC where the kernel
// supports it, and reports whether every byte was written that way.
func (b *Backend) pwriteFull(fd int, p []byte, off int64, dsync bool) (synced bool, err error) {
	synced = dsync && !b.noDSync.Load()
	for len(p) > 0 {
		var n int
		if synced {
			n, err = unix.Pwritev2(fd, [][]byte{p}, off, unix.RWF_DSYNC)
			if err == unix.ENOSYS || err == unix.EOPNOTSUPP {
				// Before Linux 4.7 there is no pwritev2 or RWF_DSYNC;
				// nothing was written.
				b.noDSync.Store(true)
				synced = false
				continue
			}
		} else {
			n, err = unix.Pwrite(fd, p, off)
		}
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return synced, err
		case n == 0:
			return synced, io.ErrShortWrite
		}
		p = p[n:]
		off += int64(n)
	}
	return synced, nil
}

// writeError wraps an error from pwriteFull.
func (b *Backend) writeError(op string, off, n int64, err error) error {
	if err == io.ErrShortWrite {
		return newError(fmt.Sprintf("backend: %s %s at offset %d (%d bytes): short write", op, b.path, off, n), io.ErrShortWrite, unix.EIO)
	}
	return ioError(op, b.path, off, n, err)
}

// Flush makes all completed writes durable: fsync for a block device, which
// also flushes the device's volatile write cache, and fdatasync for a file,
// which also commits the file's allocation metadata and flushes the cache of
// the device underneath. On a read-only backend it does nothing. Flush is
// safe for concurrent use; it covers the writes that completed before it
// was called.
func (b *Backend) Flush() error {
	fd, err := b.acquire(opFlush)
	if err != nil {
		return err
	}
	defer b.mu.RUnlock()
	if b.readOnly {
		return nil
	}
	sync := unix.Fdatasync
	if b.blockDev {
		sync = unix.Fsync
	}
	if err := ignoringEINTR(func() error { return sync(fd) }); err != nil {
		if notSupported(err) {
			return ioError(opFlush, b.path, 0, 0, err)
		}
		return newError(fmt.Sprintf("backend: flush %s: %v", b.path, err), err)
	}
	return nil
}

// Discard tells the device that the range [off, off+length) is no longer
// needed: BLKDISCARD for a block device, after which the contents of the
// range are undefined (see DiscardZeroes), and
// fallocate(FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE) for a file, after which
// the range reads as zeroes and takes no space. The range follows the rules
// of ReadAt. If the device or filesystem cannot discard, Discard fails with
// an error matching ErrNotSupported (and CanDiscard becomes false for a
// file); since discards are advisory, callers may treat that as success.
// Discard is safe for concurrent use.
func (b *Backend) Discard(off, length int64) error {
	fd, err := b.acquire(opDiscard)
	if err != nil {
		return err
	}
	defer b.mu.RUnlock()
	if b.readOnly {
		return readOnlyError(opDiscard, b.path)
	}
	if err := b.check(opDiscard, off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	if !b.CanDiscard() {
		what := "filesystem does not support hole punching"
		if b.blockDev {
			what = "device does not support discard"
		}
		return newError(fmt.Sprintf("backend: discard %s: %s", b.path, what), ErrNotSupported, unix.EOPNOTSUPP)
	}
	if b.blockDev {
		err = ioctlRange(fd, unix.BLKDISCARD, off, length)
	} else {
		err = b.punchHole(fd, off, length)
	}
	if err != nil {
		return ioError(opDiscard, b.path, off, length, err)
	}
	return nil
}

// WriteZeroes makes the range [off, off+length) read as zeroes. With
// mayUnmap the backend may deallocate the range instead of writing it
// (thin provisioning); without it the blocks stay allocated, so that later
// writes to them cannot fail for lack of space.
//
// On a block device, mayUnmap uses fallocate(FALLOC_FL_PUNCH_HOLE), which
// issues an unmapping REQ_OP_WRITE_ZEROES, when the device supports write
// zeroes; otherwise, and without mayUnmap, BLKZEROOUT, which never unmaps
// and which the kernel falls back to emulating with ordinary writes. On a
// file, mayUnmap punches a hole and otherwise
// fallocate(FALLOC_FL_ZERO_RANGE|FALLOC_FL_KEEP_SIZE) zeroes in place; when
// the filesystem supports neither, zeroes are written from an aligned
// buffer. The range follows the rules of ReadAt. WriteZeroes is safe for
// concurrent use.
func (b *Backend) WriteZeroes(off, length int64, mayUnmap bool) error {
	fd, err := b.acquire(opWriteZeroes)
	if err != nil {
		return err
	}
	defer b.mu.RUnlock()
	if b.readOnly {
		return readOnlyError(opWriteZeroes, b.path)
	}
	if err := b.check(opWriteZeroes, off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	if b.blockDev {
		err = unix.EOPNOTSUPP
		if mayUnmap && b.writeZeroesMax > 0 {
			err = fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		}
		if notSupported(err) {
			err = ioctlRange(fd, unix.BLKZEROOUT, off, length)
		}
		if err != nil {
			return ioError(opWriteZeroes, b.path, off, length, err)
		}
		return nil
	}

	err = unix.EOPNOTSUPP
	if mayUnmap && !b.noPunch.Load() {
		err = b.punchHole(fd, off, length)
	}
	if notSupported(err) && !b.noZeroRange.Load() {
		err = fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if notSupported(err) {
			b.noZeroRange.Store(true)
		}
	}
	if notSupported(err) {
		return b.writeZeroBuffer(fd, off, length)
	}
	if err != nil {
		return ioError(opWriteZeroes, b.path, off, length, err)
	}
	return nil
}

// writeZeroBuffer writes zeroes over [off, off+length) of a file from the
// backend's zero buffer.
func (b *Backend) writeZeroBuffer(fd int, off, length int64) error {
	z, err := b.zeroes()
	if err != nil {
		return newError(fmt.Sprintf("backend: write-zeroes %s: mmap zero buffer: %v", b.path, err), err)
	}
	for done := int64(0); done < length; {
		n := min(length-done, int64(len(z)))
		if _, err := b.pwriteFull(fd, z[:n], off+done, false); err != nil {
			return b.writeError(opWriteZeroes, off, length, err)
		}
		done += n
	}
	return nil
}

// punchHole deallocates [off, off+length) of a file, remembering when the
// filesystem cannot.
func (b *Backend) punchHole(fd int, off, length int64) error {
	err := fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if notSupported(err) {
		b.noPunch.Store(true)
	}
	return err
}

// fallocate is fallocate(2), retried on EINTR.
func fallocate(fd int, mode uint32, off, length int64) error {
	return ignoringEINTR(func() error { return unix.Fallocate(fd, mode, off, length) })
}

// ioctlRange issues BLKDISCARD or BLKZEROOUT, whose argument is a
// {start, length} pair of bytes, retried on EINTR.
func ioctlRange(fd int, req uint, off, length int64) error {
	r := [2]uint64{uint64(off), uint64(length)}
	return ignoringEINTR(func() error {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(&r)))
		if errno != 0 {
			return errno
		}
		return nil
	})
}
