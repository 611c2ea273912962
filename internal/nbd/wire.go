package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
)

// Sizes and magic numbers of the transmission phase.
const (
	// RequestMagic starts every request the kernel sends.
	RequestMagic = 0x25609513
	// ReplyMagic starts every simple reply.
	ReplyMagic = 0x67446698
	// RequestSize is the size of an encoded request header; a WRITE's payload
	// follows it.
	RequestSize = 28
	// ReplySize is the size of an encoded simple reply header; a successful
	// READ's payload follows it.
	ReplySize = 16
)

// Request types (the low 16 bits of the request's type field).
const (
	CmdRead        uint16 = 0
	CmdWrite       uint16 = 1
	CmdDisc        uint16 = 2
	CmdFlush       uint16 = 3
	CmdTrim        uint16 = 4
	CmdCache       uint16 = 5
	CmdWriteZeroes uint16 = 6
)

// Command flags, as found in Request.Flags (the high 16 bits of the request's
// type field on the wire).
const (
	// CmdFlagFUA asks for the write to be on stable storage before the reply.
	CmdFlagFUA uint16 = 1 << 0
	// CmdFlagNoHole asks WRITE_ZEROES to allocate the range instead of
	// punching a hole.
	CmdFlagNoHole uint16 = 1 << 1
)

// Server (transmission) flags, passed to the kernel in
// ConnectConfig.ServerFlags. The kernel only sends FLUSH, FUA and TRIM when
// the corresponding flag is set, and it refuses more than one socket unless
// FlagCanMultiConn is set.
const (
	FlagHasFlags        = 1 << 0
	FlagReadOnly        = 1 << 1
	FlagSendFlush       = 1 << 2
	FlagSendFUA         = 1 << 3
	FlagRotational      = 1 << 4
	FlagSendTrim        = 1 << 5
	FlagSendWriteZeroes = 1 << 6
	FlagCanMultiConn    = 1 << 8
)

// NBD error numbers. They are Linux errno values; the kernel fails the whole
// block request with an I/O error for any non-zero value.
const (
	EPERM     uint32 = 1
	EIO       uint32 = 5
	ENOMEM    uint32 = 12
	EINVAL    uint32 = 22
	ENOSPC    uint32 = 28
	EOVERFLOW uint32 = 75
	ENOTSUP   uint32 = 95
	ESHUTDOWN uint32 = 108
)

// ErrBadMagic is wrapped by the errors that report a header whose magic
// number is wrong.
var ErrBadMagic = errors.New("nbd: bad magic")

// errShort is returned for buffers shorter than a header.
func errShort(what string, n, want int) error {
	return fmt.Errorf("nbd: %s of %d bytes is shorter than %d", what, n, want)
}

// A Request is the header of one transmission-phase request. For CmdWrite the
// Length bytes of payload follow it on the wire. A Request is a plain value
// and is safe to copy.
type Request struct {
	// Flags holds the command flags (CmdFlagFUA, CmdFlagNoHole).
	Flags uint16
	// Type is the command (CmdRead, CmdWrite, ...).
	Type uint16
	// Handle is the opaque cookie the reply must echo.
	Handle uint64
	// Offset is the byte offset on the device.
	Offset uint64
	// Length is the number of bytes the command covers.
	Length uint32
}

// DecodeRequest decodes the request header at the start of b. It returns an
// error that wraps ErrBadMagic when the magic number is wrong, and an error
// when b is shorter than RequestSize. Bytes after the header are ignored.
func DecodeRequest(b []byte) (Request, error) {
	if len(b) < RequestSize {
		return Request{}, errShort("request", len(b), RequestSize)
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != RequestMagic {
		return Request{}, fmt.Errorf("%w 0x%08x in request (want 0x%08x)", ErrBadMagic, m, RequestMagic)
	}
	t := binary.BigEndian.Uint32(b[4:8])
	return Request{
		Flags:  uint16(t >> 16),
		Type:   uint16(t),
		Handle: binary.BigEndian.Uint64(b[8:16]),
		Offset: binary.BigEndian.Uint64(b[16:24]),
		Length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// Encode writes the request header into b[:RequestSize]. It panics if b is
// shorter than RequestSize.
func (r Request) Encode(b []byte) {
	_ = b[RequestSize-1]
	binary.BigEndian.PutUint32(b[0:4], RequestMagic)
	binary.BigEndian.PutUint32(b[4:8], uint32(r.Flags)<<16|uint32(r.Type))
	binary.BigEndian.PutUint64(b[8:16], r.Handle)
	binary.BigEndian.PutUint64(b[16:24], r.Offset)
	binary.BigEndian.PutUint32(b[24:28], r.Length)
}

// String formats the request for logs, e.g. "WRITE+FUA handle=0x2a off=4096 len=512".
func (r Request) String() string {
	s := CommandName(r.Type)
	if r.Flags&CmdFlagFUA != 0 {
		s += "+FUA"
	}
	if r.Flags&CmdFlagNoHole != 0 {
		s += "+NO_HOLE"
	}
	if rest := r.Flags &^ (CmdFlagFUA | CmdFlagNoHole); rest != 0 {
		s += fmt.Sprintf("+0x%x", rest)
	}
	return fmt.Sprintf("%s handle=%#x off=%d len=%d", s, r.Handle, r.Offset, r.Length)
}

// CommandName returns the protocol's name of a request type ("READ",
// "WRITE", ...), or "CMD(n)" for an unknown one.
func CommandName(t uint16) string {
	switch t {
	case CmdRead:
		return "READ"
	case CmdWrite:
		return "WRITE"
	case CmdDisc:
		return "DISC"
	case CmdFlush:
		return "FLUSH"
	case CmdTrim:
		return "TRIM"
	case CmdCache:
		return "CACHE"
	case CmdWriteZeroes:
		return "WRITE_ZEROES"
	}
	return fmt.Sprintf("CMD(%d)", t)
}

// A Reply is a simple reply header. For a successful READ, the request's
// Length bytes of data follow it on the wire. A Reply is a plain value and is
// safe to copy.
type Reply struct {
	// Error is 0 on success, else an NBD error number (EIO, EINVAL, ...).
	Error uint32
	// Handle echoes the request's handle.
	Handle uint64
}

// EncodeReply writes a simple reply header into b[:ReplySize]. It panics if
// b is shorter than ReplySize.
func EncodeReply(b []byte, handle uint64, errno uint32) {
	_ = b[ReplySize-1]
	binary.BigEndian.PutUint32(b[0:4], ReplyMagic)
	binary.BigEndian.PutUint32(b[4:8], errno)
	binary.BigEndian.PutUint64(b[8:16], handle)
}

// Encode writes the reply header into b[:ReplySize]. It panics if b is
// shorter than ReplySize.
func (r Reply) Encode(b []byte) { EncodeReply(b, r.Handle, r.Error) }

// DecodeReply decodes the simple reply header at the start of b. It returns
// an error that wraps ErrBadMagic when the magic number is wrong, and an
// error when b is shorter than ReplySize.
func DecodeReply(b []byte) (Reply, error) {
	if len(b) < ReplySize {
		return Reply{}, errShort("reply", len(b), ReplySize)
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != ReplyMagic {
		return Reply{}, fmt.Errorf("%w 0x%08x in reply (want 0x%08x)", ErrBadMagic, m, ReplyMagic)
	}
	return Reply{
		Error:  binary.BigEndian.Uint32(b[4:8]),
		Handle: binary.BigEndian.Uint64(b[8:16]),
	}, nil
}

// ErrnoFor maps a Go error to the NBD error number a reply should carry: 0
// for nil; for an error that wraps a syscall.Errno, that errno when NBD
// defines it (EROFS and EACCES become EPERM, EFBIG and EDQUOT become ENOSPC,
// EOPNOTSUPP becomes ENOTSUP); EIO for everything else.
func ErrnoFor(err error) uint32 {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if !errors.As(err, &e) {
		return EIO
	}
	switch e {
	case syscall.EPERM, syscall.EROFS, syscall.EACCES:
		return EPERM
	case syscall.ENOMEM:
		return ENOMEM
	case syscall.EINVAL:
		return EINVAL
	case syscall.ENOSPC, syscall.EFBIG, syscall.EDQUOT:
		return ENOSPC
	case syscall.EOVERFLOW:
		return EOVERFLOW
	case syscall.ENOTSUP:
		return ENOTSUP
	case syscall.ESHUTDOWN:
		return ESHUTDOWN
	}
	return EIO
}
