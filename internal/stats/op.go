package stats

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
)

// Op is the type of a block request. Its String is the value of the op label.
type Op uint8

// The request types, in the order Snapshot.Ops lists them.
const (
	OpRead Op = iota
	OpWrite
	OpFlush
	OpTrim
	OpWriteZeroes

	// NumOps is the number of request types; valid Ops are below it.
	NumOps
)

var opNames = [NumOps]string{"read", "write", "flush", "trim", "write_zeroes"}

// String returns the op's name: "read", "write", "flush", "trim" or
// "write_zeroes" ("op(N)" for an invalid Op).
func (op Op) String() string {
	if op < NumOps {
		return opNames[op]
	}
	return fmt.Sprintf("op(%d)", uint8(op))
}

// MarshalText encodes the op as its name, so that JSON shows "read" rather
// than 0.
func (op Op) MarshalText() ([]byte, error) {
	if op >= NumOps {
		return nil, fmt.Errorf("stats: invalid op %d", uint8(op))
	}
	return []byte(opNames[op]), nil
}

// UnmarshalText decodes an op's name.
func (op *Op) UnmarshalText(b []byte) error {
	for i, n := range opNames {
		if string(b) == n {
			*op = Op(i)
			return nil
		}
	}
	return fmt.Errorf("stats: unknown op %q", b)
}

// ErrKind classifies a failure. Its String is the value of the kind label.
type ErrKind uint8

// The error kinds. ErrNone, the zero value, means success.
const (
	// ErrNone means the request succeeded.
	ErrNone ErrKind = iota
	// ErrIO is an I/O error of the backing device.
	ErrIO
	// ErrRemote is an error status from the peer that no more specific kind
	// describes.
	ErrRemote
	// ErrTransport is an RDMA completion error or the loss of the connection.
	ErrTransport
	// ErrTimeout is a request or connection attempt that took too long.
	ErrTimeout
	// ErrInvalid is a bad request or a protocol violation.
	ErrInvalid
	// ErrNoSpace is a write that found no space (ENOSPC, EDQUOT).
	ErrNoSpace
	// ErrReadOnly is a write, trim or write_zeroes to a read-only device.
	ErrReadOnly
	// ErrUnsupported is an operation the device or peer does not support.
	ErrUnsupported

	// NumErrKinds is the number of kinds including ErrNone; valid kinds are
	// below it.
	NumErrKinds
)

var kindNames = [NumErrKinds]string{
	"none", "io", "remote", "transport", "timeout", "invalid", "no_space", "read_only", "unsupported",
}

// String returns the kind's name: "none", "io", "remote", "transport",
// "timeout", "invalid", "no_space", "read_only" or "unsupported"
// ("kind(N)" for an invalid ErrKind).
func (k ErrKind) String() string {
	if k < NumErrKinds {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// MarshalText encodes the kind as its name, so that JSON maps are keyed by
// "io" rather than 1.
func (k ErrKind) MarshalText() ([]byte, error) {
	if k >= NumErrKinds {
		return nil, fmt.Errorf("stats: invalid error kind %d", uint8(k))
	}
	return []byte(kindNames[k]), nil
}

// UnmarshalText decodes a kind's name.
func (k *ErrKind) UnmarshalText(b []byte) error {
	for i, n := range kindNames {
		if string(b) == n {
			*k = ErrKind(i)
			return nil
		}
	}
	return fmt.Errorf("stats: unknown error kind %q", b)
}

// KindOf classifies err: ErrNone for nil, ErrTimeout for deadlines, the
// matching kind for the errnos that block devices and NBD report (ENOSPC,
// EROFS, EPERM, EINVAL, EOPNOTSUPP, connection errors, ...), and ErrIO for
// anything else. Callers that know better (an error status from the peer, an
// RDMA completion error) pass ErrRemote or ErrTransport directly.
func KindOf(err error) ErrKind {
	if err == nil {
		return ErrNone
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return ErrTimeout
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return ErrIO
	}
	switch errno {
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
		return ErrNoSpace
	case syscall.EROFS, syscall.EPERM:
		return ErrReadOnly
	case syscall.EINVAL, syscall.EOVERFLOW, syscall.ERANGE:
		return ErrInvalid
	case syscall.EOPNOTSUPP, syscall.ENOSYS, syscall.ENOTTY:
		return ErrUnsupported
	case syscall.ETIMEDOUT:
		return ErrTimeout
	case syscall.ECONNRESET, syscall.ECONNREFUSED, syscall.ECONNABORTED, syscall.ENOTCONN,
		syscall.ESHUTDOWN, syscall.EPIPE, syscall.EHOSTUNREACH, syscall.ENETUNREACH:
		return ErrTransport
	}
	return ErrIO
}
