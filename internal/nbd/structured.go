package nbd

import (
	"encoding/binary"
	"fmt"
)

// Structured replies, for a connection whose handshake negotiated
// NBD_OPT_STRUCTURED_REPLY (Negotiated.StructuredReplies). A READ must then
// be answered with chunks: one or more NBD_REPLY_TYPE_OFFSET_DATA chunks
// covering the request (the last one may carry ReplyFlagDone), or an
// NBD_REPLY_TYPE_ERROR chunk, or data chunks and then NBD_REPLY_TYPE_NONE
// with ReplyFlagDone. Other commands may keep using simple replies
// (EncodeReply). The kernel never negotiates structured replies.
const (
	// StructuredReplyMagic starts every structured reply chunk.
	StructuredReplyMagic = 0x668e33ef
	// StructuredReplySize is the size of a chunk header; Length bytes of
	// payload follow it.
	StructuredReplySize = 20
	// OffsetDataHeaderSize is the size of an NBD_REPLY_TYPE_OFFSET_DATA
	// chunk header with its offset field; the data follows it.
	OffsetDataHeaderSize = StructuredReplySize + 8

	// ReplyFlagDone marks the last chunk of a reply.
	ReplyFlagDone uint16 = 1 << 0

	ReplyTypeNone       uint16 = 0
	ReplyTypeOffsetData uint16 = 1
	ReplyTypeOffsetHole uint16 = 2
	ReplyTypeError      uint16 = 1<<15 | 1
	ReplyTypeErrorOff   uint16 = 1<<15 | 2

	// MaxOffsetDataLength is the most data one OFFSET_DATA chunk carries:
	// the chunk's 32-bit length also counts the 8-byte offset.
	MaxOffsetDataLength = 1<<32 - 1 - 8
)

// A StructuredReply is the header of one structured reply chunk. A
// StructuredReply is a plain value and is safe to copy.
type StructuredReply struct {
	// Flags holds the reply flags (ReplyFlagDone).
	Flags uint16
	// Type is the chunk type (ReplyTypeNone, ReplyTypeOffsetData, ...).
	Type uint16
	// Handle echoes the request's handle.
	Handle uint64
	// Length is the size of the payload that follows the header.
	Length uint32
}

// Encode writes the chunk header into b[:StructuredReplySize]. It panics if
// b is shorter.
func (r StructuredReply) Encode(b []byte) {
	_ = b[StructuredReplySize-1]
	binary.BigEndian.PutUint32(b[0:4], StructuredReplyMagic)
	binary.BigEndian.PutUint16(b[4:6], r.Flags)
	binary.BigEndian.PutUint16(b[6:8], r.Type)
	binary.BigEndian.PutUint64(b[8:16], r.Handle)
	binary.BigEndian.PutUint32(b[16:20], r.Length)
}

// DecodeStructuredReply decodes the chunk header at the start of b. It returns
// an error that wraps ErrBadMagic when the magic number is wrong, and an error
// when b is shorter than StructuredReplySize.
func DecodeStructuredReply(b []byte) (StructuredReply, error) {
	if len(b) < StructuredReplySize {
		return StructuredReply{}, errShort("structured reply", len(b), StructuredReplySize)
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != StructuredReplyMagic {
		return StructuredReply{}, fmt.Errorf("%w 0x%08x in structured reply (want 0x%08x)", ErrBadMagic, m, StructuredReplyMagic)
	}
	return StructuredReply{
		Flags:  binary.BigEndian.Uint16(b[4:6]),
		Type:   binary.BigEndian.Uint16(b[6:8]),
		Handle: binary.BigEndian.Uint64(b[8:16]),
		Length: binary.BigEndian.Uint32(b[16:20]),
	}, nil
}

// EncodeReplyNone writes the NBD_REPLY_TYPE_NONE chunk (with ReplyFlagDone)
// that ends a successful reply into b[:StructuredReplySize]. It panics if b
// is shorter.
func EncodeReplyNone(b []byte, handle uint64) {
	StructuredReply{Flags: ReplyFlagDone, Type: ReplyTypeNone, Handle: handle}.Encode(b)
}

// EncodeOffsetData writes the header of an NBD_REPLY_TYPE_OFFSET_DATA chunk
// carrying n bytes of data read at offset into b[:OffsetDataHeaderSize]; the
// n bytes follow it on the wire. With done the chunk ends the reply, which is
// only allowed once the data is known to be good. It panics if b is shorter
// than OffsetDataHeaderSize, or n is 0 or more than MaxOffsetDataLength.
func EncodeOffsetData(b []byte, handle, offset uint64, n uint32, done bool) {
	if n == 0 || n > MaxOffsetDataLength {
		panic(fmt.Sprintf("nbd: OFFSET_DATA chunk of %d bytes", n))
	}
	_ = b[OffsetDataHeaderSize-1]
	var flags uint16
	if done {
		flags = ReplyFlagDone
	}
	StructuredReply{Flags: flags, Type: ReplyTypeOffsetData, Handle: handle, Length: n + 8}.Encode(b)
	binary.BigEndian.PutUint64(b[StructuredReplySize:], offset)
}

// AppendReplyError appends an NBD_REPLY_TYPE_ERROR chunk to b and returns the
// extended slice: the NBD error number errno (EIO, EINVAL, ...; 0 is sent as
// EIO, since the protocol forbids it) and msg for a human, cut to
// MaxStringLength bytes. With done (the usual case) the chunk ends the reply.
func AppendReplyError(b []byte, handle uint64, errno uint32, msg string, done bool) []byte {
	if errno == 0 {
		errno = EIO
	}
	if len(msg) > MaxStringLength {
		msg = msg[:MaxStringLength]
	}
	var flags uint16
	if done {
		flags = ReplyFlagDone
	}
	var hdr [StructuredReplySize]byte
	StructuredReply{Flags: flags, Type: ReplyTypeError, Handle: handle, Length: uint32(6 + len(msg))}.Encode(hdr[:])
	b = append(b, hdr[:]...)
	b = binary.BigEndian.AppendUint32(b, errno)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

// DecodeReplyError decodes the payload of an error chunk (ReplyTypeError or
// ReplyTypeErrorOff): the error number and the message.
func DecodeReplyError(p []byte) (errno uint32, msg string, err error) {
	if len(p) < 6 {
		return 0, "", errShort("error chunk payload", len(p), 6)
	}
	errno = binary.BigEndian.Uint32(p[0:4])
	ml := int(binary.BigEndian.Uint16(p[4:6]))
	if ml > len(p)-6 {
		return 0, "", fmt.Errorf("nbd: error chunk message of %d bytes in a payload of %d", ml, len(p))
	}
	return errno, string(p[6 : 6+ml]), nil
}
