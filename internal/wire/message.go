package wire

import (
	"fmt"
	"strings"
	"syscall"
)

// Op is a request's opcode.
type Op uint8

const (
	OpOpen        Op = 1 // first message of a connection: which export, which session
	OpRead        Op = 2
	OpWrite       Op = 3
	OpFlush       Op = 4
	OpTrim        Op = 5
	OpWriteZeroes Op = 6
	OpKeepAlive   Op = 7
	OpDisconnect  Op = 8
	opMax         Op = 8
)

var opNames = [...]string{"", "OPEN", "READ", "WRITE", "FLUSH", "TRIM", "WRITE_ZEROES", "KEEPALIVE", "DISCONNECT"}

func (o Op) String() string {
	if o >= 1 && o <= opMax {
		return opNames[o]
	}
	return fmt.Sprintf("op %d", uint8(o))
}

// Request flags.
const (
	FlagFUA     uint8 = 1 // WRITE: on stable storage before the reply
	FlagInline  uint8 = 2 // WRITE: data follows the header; READ: return the data inline
	FlagNoUnmap uint8 = 4 // WRITE_ZEROES: keep the blocks allocated
	flagsKnown        = FlagFUA | FlagInline | FlagNoUnmap
)

// Request is a command header: 32 bytes, followed by Length bytes of data when
// a WRITE carries FlagInline, or by an OPEN payload.
type Request struct {
	Op     Op
	Flags  uint8
	Slot   uint16 // READ/WRITE without FlagInline: the target slot holding the data
	Length uint32 // bytes (READ, WRITE, TRIM, WRITE_ZEROES; OPEN: payload bytes)
	Handle uint64 // the initiator's tag, echoed in the reply
	Offset uint64 // bytes from the start of the device
}

// Encode writes the header into b[:HeaderSize].
func (r *Request) Encode(b []byte) {
	_ = b[HeaderSize-1]
	b[0], b[1] = byte(r.Op), r.Flags
	le.PutUint16(b[2:], r.Slot)
	le.PutUint32(b[4:], r.Length)
	le.PutUint64(b[8:], r.Handle)
	le.PutUint64(b[16:], r.Offset)
	le.PutUint64(b[24:], 0)
}

// DecodeRequest parses a request header. An error here is a protocol violation
// (the connection is dropped); whether the command itself is acceptable
// (ranges, alignment, slots) is the target's check.
func DecodeRequest(b []byte) (Request, error) {
	var r Request
	if len(b) < HeaderSize {
		return r, short("request", len(b), HeaderSize)
	}
	r.Op, r.Flags = Op(b[0]), b[1]
	r.Slot = le.Uint16(b[2:])
	r.Length = le.Uint32(b[4:])
	r.Handle = le.Uint64(b[8:])
	r.Offset = le.Uint64(b[16:])
	if r.Op == 0 || r.Op > opMax {
		return r, fmt.Errorf("%w: unknown opcode %d", ErrInvalid, b[0])
	}
	if r.Flags&^flagsKnown != 0 {
		return r, fmt.Errorf("%w: unknown flags %#x", ErrInvalid, r.Flags)
	}
	if le.Uint64(b[24:]) != 0 {
		return r, fmt.Errorf("%w: in request header", ErrReserved)
	}
	return r, nil
}

// Reply is a reply header: 32 bytes, followed by Length bytes of data (an
// inline READ, or an OPEN reply payload).
type Reply struct {
	Op     Op
	Flags  uint8 // FlagInline when READ data follows
	Status Status
	Handle uint64
	Length uint32
}

// Encode writes the header into b[:HeaderSize].
func (r *Reply) Encode(b []byte) {
	_ = b[HeaderSize-1]
	b[0], b[1] = byte(r.Op), r.Flags
	le.PutUint16(b[2:], 0)
	le.PutUint32(b[4:], uint32(r.Status))
	le.PutUint64(b[8:], r.Handle)
	le.PutUint32(b[16:], r.Length)
	le.PutUint32(b[20:], 0)
	le.PutUint64(b[24:], 0)
}

// DecodeReply parses a reply header.
func DecodeReply(b []byte) (Reply, error) {
	var r Reply
	if len(b) < HeaderSize {
		return r, short("reply", len(b), HeaderSize)
	}
	r.Op, r.Flags = Op(b[0]), b[1]
	r.Status = Status(le.Uint32(b[4:]))
	r.Handle = le.Uint64(b[8:])
	r.Length = le.Uint32(b[16:])
	if r.Op == 0 || r.Op > opMax {
		return r, fmt.Errorf("%w: unknown opcode %d in reply", ErrInvalid, b[0])
	}
	if r.Flags&^FlagInline != 0 {
		return r, fmt.Errorf("%w: unknown reply flags %#x", ErrInvalid, r.Flags)
	}
	if le.Uint16(b[2:]) != 0 || le.Uint32(b[20:]) != 0 || le.Uint64(b[24:]) != 0 {
		return r, fmt.Errorf("%w: in reply header", ErrReserved)
	}
	return r, nil
}

// Status is a reply's result: 0 or a Linux errno value.
type Status uint32

// Statuses the target uses.
const (
	StatusOK       Status = 0
	StatusPerm     Status = Status(syscall.EPERM)   // not allowed (e.g. export not offered)
	StatusNoEnt    Status = Status(syscall.ENOENT)  // no such export
	StatusIO       Status = Status(syscall.EIO)     // backend I/O error
	StatusBusy     Status = Status(syscall.EBUSY)   // export in use by another session
	StatusInval    Status = Status(syscall.EINVAL)  // bad command (range, alignment, slot)
	StatusNoSpace  Status = Status(syscall.ENOSPC)  // beyond the end / no space
	StatusROFS     Status = Status(syscall.EROFS)   // write to a read-only export
	StatusNoMem    Status = Status(syscall.ENOMEM)  // target out of memory
	StatusNotSupp  Status = Status(syscall.ENOTSUP) // operation not supported by the export
	StatusProto    Status = Status(syscall.EPROTO)  // protocol violation
	StatusShutdown Status = Status(syscall.ESHUTDOWN)
	// StatusAccess: authentication required, failed, or not possible
	// (EACCES); the OPEN reply's message says which.
	StatusAccess Status = Status(syscall.EACCES)
)

// Err returns nil for StatusOK and the errno otherwise.
func (s Status) Err() error {
	if s == StatusOK {
		return nil
	}
	return syscall.Errno(s)
}

func (s Status) String() string {
	if s == StatusOK {
		return "ok"
	}
	return syscall.Errno(s).Error()
}

// StatusOf maps an error to a status: its errno if it has one, else EIO.
func StatusOf(err error) Status {
	if err == nil {
		return StatusOK
	}
	var e syscall.Errno
	if ok := asErrno(err, &e); ok && e != 0 && e < 4096 {
		return Status(e)
	}
	return StatusIO
}

// ---- OPEN

// Open flags.
const (
	OpenReadOnly uint32 = 1 // the initiator wants read-only access
	// OpenAuth (version 3): the payload goes on after the export name with
	// the initiator's nonce and its proof (Open.Nonce, Open.MAC).
	OpenAuth  uint32 = 2
	openKnown        = OpenReadOnly | OpenAuth
)

// SessionID identifies an initiator session: all queues of one device send the
// same one, chosen at random by the initiator.
type SessionID [16]byte

func (s SessionID) String() string { return fmt.Sprintf("%x", s[:]) }

// Open is the payload of OpOpen.
type Open struct {
	Session    SessionID
	Queue      uint16 // this connection's index in the session
	Queues     uint16 // the session's number of connections
	Flags      uint32
	ExportName string
	// With OpenAuth: the initiator's fresh nonce and its proof,
	// HMAC-SHA-256 over both nonces and this OPEN (internal/auth).
	Nonce [NonceSize]byte
	MAC   [MACSize]byte
}

const openFixed = 26

// Encode writes the payload into b and returns its length.
func (o *Open) Encode(b []byte) (int, error) {
	n := openFixed + len(o.ExportName)
	if o.Flags&OpenAuth != 0 {
		n += NonceSize + MACSize
	}
	if len(o.ExportName) == 0 || len(o.ExportName) > MaxExportName {
		return 0, fmt.Errorf("%w: export name of %d bytes (1..%d)", ErrInvalid, len(o.ExportName), MaxExportName)
	}
	if len(b) < n {
		return 0, short("OPEN buffer", len(b), n)
	}
	copy(b[0:16], o.Session[:])
	le.PutUint16(b[16:], o.Queue)
	le.PutUint16(b[18:], o.Queues)
	le.PutUint32(b[20:], o.Flags)
	le.PutUint16(b[24:], uint16(len(o.ExportName)))
	copy(b[openFixed:], o.ExportName)
	if o.Flags&OpenAuth != 0 {
		a := b[openFixed+len(o.ExportName):]
		copy(a, o.Nonce[:])
		copy(a[NonceSize:], o.MAC[:])
	}
	return n, nil
}

// DecodeOpen parses an OPEN payload.
func DecodeOpen(b []byte) (Open, error) {
	var o Open
	if len(b) < openFixed {
		return o, short("OPEN", len(b), openFixed)
	}
	copy(o.Session[:], b[0:16])
	o.Queue = le.Uint16(b[16:])
	o.Queues = le.Uint16(b[18:])
	o.Flags = le.Uint32(b[20:])
	n := int(le.Uint16(b[24:]))
	if o.Flags&^openKnown != 0 {
		return o, fmt.Errorf("%w: unknown OPEN flags %#x", ErrInvalid, o.Flags)
	}
	if o.Queues == 0 || o.Queue >= o.Queues {
		return o, fmt.Errorf("%w: queue %d of %d", ErrInvalid, o.Queue, o.Queues)
	}
	if n == 0 || n > MaxExportName {
		return o, fmt.Errorf("%w: export name of %d bytes (1..%d)", ErrInvalid, n, MaxExportName)
	}
	if len(b) < openFixed+n {
		return o, short("OPEN", len(b), openFixed+n)
	}
	o.ExportName = string(b[openFixed : openFixed+n])
	if strings.ContainsRune(o.ExportName, 0) {
		return o, fmt.Errorf("%w: NUL in export name", ErrInvalid)
	}
	if o.Flags&OpenAuth != 0 {
		a := b[openFixed+n:]
		if len(a) < NonceSize+MACSize {
			return o, short("authenticated OPEN", len(b), openFixed+n+NonceSize+MACSize)
		}
		copy(o.Nonce[:], a)
		copy(o.MAC[:], a[NonceSize:])
	}
	return o, nil
}

// Capabilities of an export, in the OPEN reply.
const (
	CapFlush       uint32 = 1 << 0
	CapFUA         uint32 = 1 << 1
	CapTrim        uint32 = 1 << 2
	CapWriteZeroes uint32 = 1 << 3
	CapReadOnly    uint32 = 1 << 4
	// CapMultiConn: a FLUSH on any connection of the session covers writes
	// completed on all of them (the target has no cache of its own).
	CapMultiConn  uint32 = 1 << 5
	CapRotational uint32 = 1 << 6
)

// OpenReply is the payload of the reply to OpOpen: the export's geometry and
// capabilities, or (with an error status) a message saying why not.
type OpenReply struct {
	Size              uint64
	LogicalBlockSize  uint32
	PhysicalBlockSize uint32
	Caps              uint32
	MaxDiscard        uint32 // bytes per TRIM / WRITE_ZEROES (0: any up to 4 GiB - 1)
	OptimalIO         uint32
	// Flags (version 3; before: reserved, 0): OpenReplyAuth when MAC, the
	// target's proof, follows the message.
	Flags   uint32
	Session SessionID
	Message string
	MAC     [MACSize]byte
}

// OpenReplyAuth: the OPEN reply carries the target's proof after its message.
const OpenReplyAuth uint32 = 1

// OpenReplyProved is how many leading bytes of an OPEN reply payload the
// target's proof covers: the geometry, capabilities, flags and session id.
const OpenReplyProved = 48

const openReplyFixed = 50

// Encode writes the payload into b and returns its length.
func (r *OpenReply) Encode(b []byte) (int, error) {
	m := r.Message
	if len(m) > MaxMessage {
		m = m[:MaxMessage]
	}
	n := openReplyFixed + len(m)
	if r.Flags&OpenReplyAuth != 0 {
		n += MACSize
	}
	if len(b) < n {
		return 0, short("OPEN reply buffer", len(b), n)
	}
	le.PutUint64(b[0:], r.Size)
	le.PutUint32(b[8:], r.LogicalBlockSize)
	le.PutUint32(b[12:], r.PhysicalBlockSize)
	le.PutUint32(b[16:], r.Caps)
	le.PutUint32(b[20:], r.MaxDiscard)
	le.PutUint32(b[24:], r.OptimalIO)
	le.PutUint32(b[28:], r.Flags)
	copy(b[32:48], r.Session[:])
	le.PutUint16(b[48:], uint16(len(m)))
	copy(b[openReplyFixed:], m)
	if r.Flags&OpenReplyAuth != 0 {
		copy(b[openReplyFixed+len(m):], r.MAC[:])
	}
	return n, nil
}

// DecodeOpenReply parses an OPEN reply payload. Geometry is checked only when
// ok (the status was 0): an error reply carries just the message.
func DecodeOpenReply(b []byte, ok bool) (OpenReply, error) {
	var r OpenReply
	if len(b) < openReplyFixed {
		return r, short("OPEN reply", len(b), openReplyFixed)
	}
	r.Size = le.Uint64(b[0:])
	r.LogicalBlockSize = le.Uint32(b[8:])
	r.PhysicalBlockSize = le.Uint32(b[12:])
	r.Caps = le.Uint32(b[16:])
	r.MaxDiscard = le.Uint32(b[20:])
	r.OptimalIO = le.Uint32(b[24:])
	r.Flags = le.Uint32(b[28:])
	copy(r.Session[:], b[32:48])
	n := int(le.Uint16(b[48:]))
	if n > MaxMessage || len(b) < openReplyFixed+n {
		return r, fmt.Errorf("%w: OPEN reply message of %d bytes", ErrInvalid, n)
	}
	r.Message = printable(string(b[openReplyFixed : openReplyFixed+n]))
	if r.Flags&^OpenReplyAuth != 0 {
		return r, fmt.Errorf("%w: unknown OPEN reply flags %#x", ErrInvalid, r.Flags)
	}
	if r.Flags&OpenReplyAuth != 0 {
		if len(b) < openReplyFixed+n+MACSize {
			return r, short("authenticated OPEN reply", len(b), openReplyFixed+n+MACSize)
		}
		copy(r.MAC[:], b[openReplyFixed+n:])
	}
	if !ok {
		return r, nil
	}
	lbs := r.LogicalBlockSize
	if lbs < 512 || lbs > 65536 || lbs&(lbs-1) != 0 {
		return r, fmt.Errorf("%w: logical block size %d", ErrInvalid, lbs)
	}
	if r.PhysicalBlockSize != 0 && (r.PhysicalBlockSize < lbs || r.PhysicalBlockSize&(r.PhysicalBlockSize-1) != 0) {
		return r, fmt.Errorf("%w: physical block size %d", ErrInvalid, r.PhysicalBlockSize)
	}
	if r.Size%uint64(lbs) != 0 {
		return r, fmt.Errorf("%w: size %d is not a multiple of the block size %d", ErrInvalid, r.Size, lbs)
	}
	return r, nil
}
