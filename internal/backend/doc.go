// Package backend is the storage end of the rbd target (rbdt): it owns the
// file descriptor of one exported block device or image file and every
// system call made on it.
//
// Open opens a block device or a regular image file with O_DIRECT, so that
// data moves between the caller's page-aligned buffers (the RDMA-registered
// memory from unix.Mmap) and the device without the page cache, and with
// O_EXCL on block devices when Options.Exclusive is set, so that the target
// host cannot mount what it exports. Other file types (character devices,
// directories, FIFOs, sockets) are refused.
//
// A Backend reports the geometry the target advertises to initiators (Size,
// LogicalBlockSize, PhysicalBlockSize, Rotational) and what it can do
// (CanDiscard, CanWriteZeroes, DiscardZeroes), and serves the block
// requests: ReadAt, WriteAt with optional FUA, Flush, Discard and
// WriteZeroes. Requests are validated before any system call: offsets and
// lengths must be non-negative multiples of the logical block size inside the
// device, and buffers must be aligned to it; violations return errors that
// match ErrRange or ErrAlignment. Every error the I/O methods return also
// matches a syscall.Errno through errors.As, so the target can answer an
// initiator with an errno without knowing this package's sentinels.
//
// All methods of a Backend are safe for concurrent use by many goroutines:
// I/O is positional (pread, pwrite, pwritev2, fallocate, ioctl) on one file
// descriptor, and Close waits for requests in flight before closing it.
//
// The package is pure Go (golang.org/x/sys/unix, no cgo) and Linux only.
package backend
