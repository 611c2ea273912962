package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

var le = binary.LittleEndian

// Protocol versions this build speaks.
const (
	MinVersion = 1
	MaxVersion = 3
	// VersionPush is the first version in which the initiator registers its
	// slots and the target pushes READ data into them (RDMA WRITE before the
	// reply), so that a READ costs no RDMA READ round trip.
	VersionPush = 2
	// VersionAuth is the first version with pre-shared-key authentication:
	// the accept carries the target's nonce, an OPEN may carry the
	// initiator's nonce and proof (OpenAuth), and the OPEN reply the
	// target's proof (OpenReplyAuth). docs/protocol.md, section 2.4.
	VersionAuth = 3
)

// DefaultPort is the rdma_cm port rbdt listens on.
const DefaultPort = 65000

// Magic numbers of the connection-setup private data.
const (
	ConnectMagic = 0x43444252 // "RBDC"
	AcceptMagic  = 0x41444252 // "RBDA"
	RejectMagic  = 0x52444252 // "RBDR"
)

// Sizes of the fixed parts.
const (
	ConnectSize = 20
	// ConnectSizeV2 is a connect request that carries the initiator's slot
	// region (version 2).
	ConnectSizeV2 = 32
	AcceptSize    = 32
	// AcceptSizeV3 is an accept that carries the target's nonce (version 3).
	AcceptSizeV3 = AcceptSize + NonceSize
	// NonceSize is the size of each side's nonce; MACSize of a proof
	// (HMAC-SHA-256).
	NonceSize = 16
	MACSize   = 32
	RejectHdr = 8
	// MaxRejectMessage keeps a reject within InfiniBand's 148 bytes.
	MaxRejectMessage = 140
	HeaderSize       = 32 // request and reply headers
	// MinDataArea is the smallest data area of a posted receive: control
	// payloads (OPEN and its reply) fit in it.
	MinDataArea = 4096
	// MaxExportName bounds the export name in OPEN.
	MaxExportName = 1024
	// MaxMessage bounds the human-readable message in an OPEN reply.
	MaxMessage = 1024
)

// ErrShort, ErrMagic and ErrReserved are the framing errors a decoder reports
// (wrapped with details).
var (
	ErrShort    = errors.New("wire: message too short")
	ErrMagic    = errors.New("wire: bad magic")
	ErrReserved = errors.New("wire: reserved field not zero")
	ErrInvalid  = errors.New("wire: invalid field")
)

func short(what string, n, want int) error {
	return fmt.Errorf("%w: %s is %d bytes, want at least %d", ErrShort, what, n, want)
}

// ---- connection setup (rdma_cm private data)

// Connect is the private data of the initiator's connect request.
type Connect struct {
	MinVersion, MaxVersion uint8
	QueueDepth             uint16 // slots (and credits) wanted
	MaxIO                  uint32 // slot size wanted, bytes
	InlineMax              uint32 // inline data wanted, bytes (0: none)
	// The initiator's slot region (version 2): slot i at RegionAddr + i·S for
	// the granted slot size S, in the memory region of RegionKey, registered
	// for remote write. Zero (both): none, and the target picks version 1.
	RegionKey  uint32
	RegionAddr uint64
}

// HasRegion reports whether the request carries an initiator slot region.
func (c *Connect) HasRegion() bool { return c.RegionKey != 0 || c.RegionAddr != 0 }

// Encode writes c into b and returns the length: ConnectSizeV2 bytes when c
// carries a region (b must hold them), ConnectSize otherwise.
func (c *Connect) Encode(b []byte) int {
	_ = b[ConnectSize-1]
	le.PutUint32(b[0:], ConnectMagic)
	b[4], b[5] = c.MinVersion, c.MaxVersion
	le.PutUint16(b[6:], 0)
	le.PutUint16(b[8:], c.QueueDepth)
	le.PutUint16(b[10:], 0)
	le.PutUint32(b[12:], c.MaxIO)
	le.PutUint32(b[16:], c.InlineMax)
	if !c.HasRegion() {
		return ConnectSize
	}
	_ = b[ConnectSizeV2-1]
	le.PutUint32(b[20:], c.RegionKey)
	le.PutUint64(b[24:], c.RegionAddr)
	return ConnectSizeV2
}

// DecodeConnect parses a connect request's private data (transports may pad it
// with zeroes).
func DecodeConnect(b []byte) (Connect, error) {
	var c Connect
	if len(b) < ConnectSize {
		return c, short("connect private data", len(b), ConnectSize)
	}
	if m := le.Uint32(b); m != ConnectMagic {
		return c, fmt.Errorf("%w: connect private data starts with %#x (not an rbd initiator?)", ErrMagic, m)
	}
	c.MinVersion, c.MaxVersion = b[4], b[5]
	if le.Uint16(b[6:]) != 0 || le.Uint16(b[10:]) != 0 {
		return c, fmt.Errorf("%w: in connect private data", ErrReserved)
	}
	c.QueueDepth = le.Uint16(b[8:])
	c.MaxIO = le.Uint32(b[12:])
	c.InlineMax = le.Uint32(b[16:])
	// a region only where version 2 is on offer: a version-1 initiator's
	// padding or trailing bytes are not one
	if len(b) >= ConnectSizeV2 && c.MaxVersion >= VersionPush {
		c.RegionKey = le.Uint32(b[20:])
		c.RegionAddr = le.Uint64(b[24:])
		if c.RegionAddr+uint64(c.QueueDepth)*uint64(c.MaxIO) < c.RegionAddr {
			return c, fmt.Errorf("%w: slot region at %#x wraps around", ErrInvalid, c.RegionAddr)
		}
	}
	if c.MinVersion == 0 || c.MinVersion > c.MaxVersion {
		return c, fmt.Errorf("%w: version range %d..%d", ErrInvalid, c.MinVersion, c.MaxVersion)
	}
	if c.QueueDepth == 0 || c.MaxIO == 0 {
		return c, fmt.Errorf("%w: queue depth %d, max I/O %d", ErrInvalid, c.QueueDepth, c.MaxIO)
	}
	return c, nil
}

// Negotiate picks the highest version both sides speak (0, false if none).
func Negotiate(peerMin, peerMax uint8) (uint8, bool) {
	v := min(peerMax, MaxVersion)
	if v < max(peerMin, MinVersion) {
		return 0, false
	}
	return v, true
}

// NegotiateConnect picks the version for a connect request: the highest both
// speak, but version 1 when the request carries no slot region (version 2
// needs one). ok is false when there is no common version, and why says so
// for a person.
func NegotiateConnect(c *Connect) (v uint8, ok bool, why string) {
	v, ok = Negotiate(c.MinVersion, c.MaxVersion)
	if ok && v >= VersionPush && !c.HasRegion() {
		if c.MinVersion <= 1 {
			return 1, true, ""
		}
		return 0, false, fmt.Sprintf("protocol version %d needs the initiator's slot region in the connect request, and it carries none", v)
	}
	if !ok {
		return 0, false, fmt.Sprintf("this target speaks protocol versions %d..%d, the initiator %d..%d", MinVersion, MaxVersion, c.MinVersion, c.MaxVersion)
	}
	return v, true, ""
}

// Accept is the private data of the target's accept: the negotiated version
// and limits and this connection's slots, Depth slots of SlotSize bytes from
// SlotAddr in the memory region of SlotRKey. From version 3 on it also
// carries the target's nonce for this connection (fresh random bytes, the
// challenge an authenticating OPEN answers).
type Accept struct {
	Version   uint8
	Depth     uint16
	SlotSize  uint32
	InlineMax uint32
	SlotRKey  uint32
	SlotAddr  uint64
	Nonce     [NonceSize]byte // version 3
}

// Encode writes a into b and returns the length: AcceptSizeV3 bytes from
// version 3 on (b must hold them), AcceptSize before.
func (a *Accept) Encode(b []byte) int {
	_ = b[AcceptSize-1]
	if a.Version >= VersionAuth {
		_ = b[AcceptSizeV3-1]
		copy(b[AcceptSize:], a.Nonce[:])
	}
	le.PutUint32(b[0:], AcceptMagic)
	b[4], b[5] = a.Version, 0
	le.PutUint16(b[6:], 0)
	le.PutUint16(b[8:], a.Depth)
	le.PutUint16(b[10:], 0)
	le.PutUint32(b[12:], a.SlotSize)
	le.PutUint32(b[16:], a.InlineMax)
	le.PutUint32(b[20:], a.SlotRKey)
	le.PutUint64(b[24:], a.SlotAddr)
	if a.Version >= VersionAuth {
		return AcceptSizeV3
	}
	return AcceptSize
}

// DecodeAccept parses the target's accept private data.
func DecodeAccept(b []byte) (Accept, error) {
	var a Accept
	if len(b) < AcceptSize {
		return a, short("accept private data", len(b), AcceptSize)
	}
	if m := le.Uint32(b); m != AcceptMagic {
		return a, fmt.Errorf("%w: accept private data starts with %#x (not an rbd target?)", ErrMagic, m)
	}
	if b[5] != 0 || le.Uint16(b[6:]) != 0 || le.Uint16(b[10:]) != 0 {
		return a, fmt.Errorf("%w: in accept private data", ErrReserved)
	}
	a.Version = b[4]
	a.Depth = le.Uint16(b[8:])
	a.SlotSize = le.Uint32(b[12:])
	a.InlineMax = le.Uint32(b[16:])
	a.SlotRKey = le.Uint32(b[20:])
	a.SlotAddr = le.Uint64(b[24:])
	if a.Version < MinVersion || a.Version > MaxVersion {
		return a, fmt.Errorf("%w: the target chose version %d, this initiator speaks %d..%d", ErrInvalid, a.Version, MinVersion, MaxVersion)
	}
	if a.Version >= VersionAuth {
		if len(b) < AcceptSizeV3 {
			return a, short("version-3 accept private data", len(b), AcceptSizeV3)
		}
		copy(a.Nonce[:], b[AcceptSize:AcceptSizeV3])
	}
	if a.Depth == 0 || a.SlotSize == 0 {
		return a, fmt.Errorf("%w: depth %d, slot size %d", ErrInvalid, a.Depth, a.SlotSize)
	}
	if uint64(a.Depth)*uint64(a.SlotSize) > 1<<40 || a.SlotAddr+uint64(a.Depth)*uint64(a.SlotSize) < a.SlotAddr {
		return a, fmt.Errorf("%w: %d slots of %d bytes at %#x", ErrInvalid, a.Depth, a.SlotSize, a.SlotAddr)
	}
	return a, nil
}

// RejectReason says why the target refused a connection.
type RejectReason uint16

const (
	RejectVersion      RejectReason = 1 // no common protocol version
	RejectBadRequest   RejectReason = 2 // malformed connect private data
	RejectResources    RejectReason = 3 // out of memory, QPs or locked memory
	RejectShuttingDown RejectReason = 4
	RejectTooMany      RejectReason = 5 // connection limit reached (global or this peer's)
	RejectNotAllowed   RejectReason = 6 // no export is offered to the initiator's address
)

func (r RejectReason) String() string {
	switch r {
	case RejectVersion:
		return "no common protocol version"
	case RejectBadRequest:
		return "bad connect request"
	case RejectResources:
		return "target out of resources"
	case RejectShuttingDown:
		return "target shutting down"
	case RejectTooMany:
		return "too many connections"
	case RejectNotAllowed:
		return "not allowed from this address"
	}
	return fmt.Sprintf("reason %d", uint16(r))
}

// Reject is the private data of the target's reject.
type Reject struct {
	MinVersion, MaxVersion uint8 // what the target speaks
	Reason                 RejectReason
	Message                string // at most MaxRejectMessage bytes
}

// Encode writes r into b (at least RejectHdr+MaxRejectMessage bytes) and
// returns the length; a longer message is cut.
func (r *Reject) Encode(b []byte) int {
	le.PutUint32(b[0:], RejectMagic)
	b[4], b[5] = r.MinVersion, r.MaxVersion
	le.PutUint16(b[6:], uint16(r.Reason))
	m := r.Message
	if len(m) > MaxRejectMessage {
		m = m[:MaxRejectMessage]
	}
	return RejectHdr + copy(b[RejectHdr:], m)
}

// DecodeReject parses a reject's private data. ok is false when it is not an
// rbd reject (a transport's own reject, or another application's).
func DecodeReject(b []byte) (r Reject, ok bool) {
	if len(b) < RejectHdr || le.Uint32(b) != RejectMagic {
		return r, false
	}
	r.MinVersion, r.MaxVersion = b[4], b[5]
	r.Reason = RejectReason(le.Uint16(b[6:]))
	m := b[RejectHdr:]
	if len(m) > MaxRejectMessage {
		m = m[:MaxRejectMessage]
	}
	r.Message = printable(strings.TrimRight(string(m), "\x00"))
	return r, true
}

// printable replaces control characters, so a peer's text is safe to print.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return '?'
		}
		return r
	}, s)
}
