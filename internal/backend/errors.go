package backend

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Sentinel errors. Errors returned by this package wrap them so that callers
// can test with errors.Is; each such error also wraps the syscall.Errno named
// in the sentinel's comment, for callers that map errors to errno values with
// errors.As.
var (
	// ErrRange reports a request with a negative offset or length, or one
	// that extends past Size (EINVAL).
	ErrRange = errors.New("backend: request out of range")

	// ErrAlignment reports an offset, length or buffer address that is not a
	// multiple of the logical block size (EINVAL).
	ErrAlignment = errors.New("backend: misaligned request")

	// ErrReadOnly reports a write, discard or write-zeroes request on a
	// Backend opened with Options.ReadOnly (EROFS).
	ErrReadOnly = errors.New("backend: read-only")

	// ErrNotSupported reports a request that the device or filesystem cannot
	// serve, such as Discard on a filesystem without hole punching
	// (EOPNOTSUPP, or the errno the kernel returned).
	ErrNotSupported = errors.New("backend: operation not supported")

	// ErrClosed reports a request on a Backend after Close (EBADF).
	ErrClosed = errors.New("backend: closed")
)

// opError is the error type of this package: a complete message and the
// errors it matches (a sentinel and/or an errno), without repeating their
// text.
type opError struct {
	msg  string
	errs []error
}

func (e *opError) Error() string   { return e.msg }
func (e *opError) Unwrap() []error { return e.errs }

// newError returns an error with message msg that matches each of errs.
func newError(msg string, errs ...error) error {
	return &opError{msg: msg, errs: errs}
}

// rangeError, alignmentError and friends build the validation errors of
// request op on the backend at path.
func rangeError(op, path, format string, args ...any) error {
	return newError(fmt.Sprintf("backend: %s %s: ", op, path)+fmt.Sprintf(format, args...), ErrRange, unix.EINVAL)
}

func alignmentError(op, path, format string, args ...any) error {
	return newError(fmt.Sprintf("backend: %s %s: ", op, path)+fmt.Sprintf(format, args...), ErrAlignment, unix.EINVAL)
}

func readOnlyError(op, path string) error {
	return newError(fmt.Sprintf("backend: %s %s: opened read-only", op, path), ErrReadOnly, unix.EROFS)
}

func closedError(op, path string) error {
	return newError(fmt.Sprintf("backend: %s %s: backend is closed", op, path), ErrClosed, unix.EBADF)
}

// notSupported reports whether errno err means that the file, filesystem or
// device does not implement an operation (as opposed to an I/O failure).
func notSupported(err error) bool {
	return err == unix.EOPNOTSUPP || err == unix.ENOSYS || err == unix.ENOTTY
}

// ioError wraps errno err of request op over [off, off+n).
func ioError(op, path string, off, n int64, err error) error {
	if notSupported(err) {
		return newError(fmt.Sprintf("backend: %s %s: not supported by the device or filesystem (%v)", op, path, err), ErrNotSupported, err)
	}
	return newError(fmt.Sprintf("backend: %s %s at offset %d (%d bytes): %v", op, path, off, n, err), err)
}
