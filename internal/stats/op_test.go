package stats

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"testing"
)

func TestOpNames(t *testing.T) {
	for _, tc := range []struct {
		op   Op
		want string
	}{
		{OpRead, "read"},
		{OpWrite, "write"},
		{OpFlush, "flush"},
		{OpTrim, "trim"},
		{OpWriteZeroes, "write_zeroes"},
		{NumOps, "op(5)"},
	} {
		if got := tc.op.String(); got != tc.want {
			t.Errorf("Op(%d).String() = %q, want %q", tc.op, got, tc.want)
		}
		b, err := tc.op.MarshalText()
		if tc.op >= NumOps {
			if err == nil {
				t.Errorf("Op(%d).MarshalText succeeded", tc.op)
			}
			continue
		}
		var back Op
		if err != nil || back.UnmarshalText(b) != nil || back != tc.op {
			t.Errorf("Op(%d) text round trip: %q, %v, back %d", tc.op, b, err, back)
		}
	}
	var op Op
	if op.UnmarshalText([]byte("erase")) == nil {
		t.Error(`UnmarshalText("erase") succeeded`)
	}
}

func TestErrKindNames(t *testing.T) {
	want := []string{"none", "io", "remote", "transport", "timeout", "invalid", "no_space", "read_only", "unsupported"}
	if len(want) != int(NumErrKinds) {
		t.Fatalf("NumErrKinds = %d, want %d", NumErrKinds, len(want))
	}
	for i, w := range want {
		k := ErrKind(i)
		if k.String() != w {
			t.Errorf("ErrKind(%d).String() = %q, want %q", i, k, w)
		}
		b, err := k.MarshalText()
		var back ErrKind
		if err != nil || back.UnmarshalText(b) != nil || back != k {
			t.Errorf("ErrKind(%d) text round trip: %q, %v, back %d", i, b, err, back)
		}
	}
	if NumErrKinds.String() != "kind(9)" {
		t.Errorf("invalid kind String = %q", NumErrKinds.String())
	}
	if _, err := NumErrKinds.MarshalText(); err == nil {
		t.Error("invalid kind MarshalText succeeded")
	}
}

func TestKindOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want ErrKind
	}{
		{nil, ErrNone},
		{errors.New("boom"), ErrIO},
		{syscall.EIO, ErrIO},
		{&fs.PathError{Op: "write", Path: "/dev/x", Err: syscall.ENOSPC}, ErrNoSpace},
		{fmt.Errorf("pwrite: %w", syscall.EROFS), ErrReadOnly},
		{syscall.EPERM, ErrReadOnly},
		{syscall.EINVAL, ErrInvalid},
		{syscall.EOPNOTSUPP, ErrUnsupported},
		{syscall.ETIMEDOUT, ErrTimeout},
		{context.DeadlineExceeded, ErrTimeout},
		{os.ErrDeadlineExceeded, ErrTimeout},
		{syscall.ECONNRESET, ErrTransport},
		{syscall.ENOTTY, ErrUnsupported},
		{errors.Join(errors.New("backend: read-only"), syscall.EROFS), ErrReadOnly},
	} {
		if got := KindOf(tc.err); got != tc.want {
			t.Errorf("KindOf(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
