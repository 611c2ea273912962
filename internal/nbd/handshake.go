package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
)

// Magic numbers of the fixed-newstyle handshake.
const (
	// HandshakeMagic ("NBDMAGIC") starts the server's greeting.
	HandshakeMagic uint64 = 0x4e42444d41474943
	// OptionMagic ("IHAVEOPT") follows it in the greeting and starts every
	// option the client sends.
	OptionMagic uint64 = 0x49484156454f5054
	// OptionReplyMagic starts every option reply.
	OptionReplyMagic uint64 = 0x3e889045565a9
)

// Handshake flags, sent by the server in its greeting.
const (
	HandshakeFlagFixedNewstyle uint16 = 1 << 0
	HandshakeFlagNoZeroes      uint16 = 1 << 1
)

// Client flags, sent by the client after the greeting. A server must drop a
// client that sets any other bit.
const (
	ClientFlagFixedNewstyle uint32 = 1 << 0
	ClientFlagNoZeroes      uint32 = 1 << 1
)

// FlagSendDF is the transmission flag that offers NBD_CMD_FLAG_DF on READs;
// it may only be set when structured replies are negotiated, and
// ServeHandshake clears it otherwise.
const FlagSendDF = 1 << 7

// Options a client may send during option haggling.
const (
	OptExportName      uint32 = 1
	OptAbort           uint32 = 2
	OptList            uint32 = 3
	OptStartTLS        uint32 = 5
	OptInfo            uint32 = 6
	OptGo              uint32 = 7
	OptStructuredReply uint32 = 8
	OptListMetaContext uint32 = 9
	OptSetMetaContext  uint32 = 10
	OptExtendedHeaders uint32 = 11
)

// Option reply types. The error types have bit 31 set; an error reply's
// payload is a message for a human.
const (
	RepAck              uint32 = 1
	RepServer           uint32 = 2
	RepInfo             uint32 = 3
	RepMetaContext      uint32 = 4
	RepErrUnsup         uint32 = 1<<31 | 1
	RepErrPolicy        uint32 = 1<<31 | 2
	RepErrInvalid       uint32 = 1<<31 | 3
	RepErrPlatform      uint32 = 1<<31 | 4
	RepErrTLSReqd       uint32 = 1<<31 | 5
	RepErrUnknown       uint32 = 1<<31 | 6
	RepErrShutdown      uint32 = 1<<31 | 7
	RepErrBlockSizeReqd uint32 = 1<<31 | 8
	RepErrTooBig        uint32 = 1<<31 | 9
)

// Information types of NBD_OPT_INFO and NBD_OPT_GO: the client lists the ones
// it wants, the server answers with one NBD_REP_INFO per item.
const (
	InfoExport      uint16 = 0
	InfoName        uint16 = 1
	InfoDescription uint16 = 2
	InfoBlockSize   uint16 = 3
)

const (
	// MaxStringLength is the protocol's limit on export names, descriptions
	// and messages.
	MaxStringLength = 4096
	// MaxOptionLength bounds the option data ServeHandshake reads into
	// memory: room for a name of MaxStringLength plus 4 KiB of the rest.
	// The data of a longer option is read and thrown away in small pieces,
	// and the option is refused with NBD_REP_ERR_TOO_BIG.
	MaxOptionLength = MaxStringLength + 4096

	greetingSize       = 8 + 8 + 2
	optionHeaderSize   = 8 + 4 + 4
	optionReplyHdrSize = 8 + 4 + 4 + 4
	exportNameZeroes   = 124
)

// ErrAbort is wrapped by the error ServeHandshake returns when the client
// ended the handshake with NBD_OPT_ABORT (after it was acknowledged).
var ErrAbort = errors.New("nbd: handshake: client sent NBD_OPT_ABORT")

// An Export describes what the server says about one export.
type Export struct {
	// Name is the export's canonical name, sent as NBD_INFO_NAME; empty
	// means the name the client asked for.
	Name string
	// Description is sent as NBD_INFO_DESCRIPTION to a client that asks for
	// it, unless empty.
	Description string
	// Size is the export's size in bytes.
	Size uint64
	// Flags are the transmission flags (FlagReadOnly, FlagSendFlush, ...).
	// FlagHasFlags is always added; FlagSendDF is cleared unless structured
	// replies were negotiated.
	Flags uint16
	// MinBlock, PrefBlock and MaxBlock are the block size constraints sent
	// as NBD_INFO_BLOCK_SIZE (whether or not the client asked for it, which
	// the protocol allows). All zero sends none, and the client assumes the
	// protocol's defaults. Otherwise a zero field takes its default (1,
	// 4096 or at least MinBlock, 0xffffffff); MinBlock must be a power of
	// two up to 64 KiB, PrefBlock a power of two no smaller than MinBlock,
	// and MaxBlock a multiple of MinBlock or 0xffffffff.
	MinBlock, PrefBlock, MaxBlock uint32
}

// BlockSizes returns the block size constraints the export advertises, with
// defaults filled in (see Export), and ok false when it advertises none.
func (e Export) BlockSizes() (min, pref, max uint32, ok bool) {
	if e.MinBlock == 0 && e.PrefBlock == 0 && e.MaxBlock == 0 {
		return 0, 0, 0, false
	}
	min, pref, max = e.MinBlock, e.PrefBlock, e.MaxBlock
	if min == 0 {
		min = 1
	}
	if pref == 0 {
		pref = 4096
		if pref < min {
			pref = min
		}
	}
	if max == 0 {
		max = 0xffffffff
	}
	return min, pref, max, true
}

// Validate reports what is wrong with the export's block sizes or strings.
func (e Export) Validate() error {
	if len(e.Name) > MaxStringLength || len(e.Description) > MaxStringLength {
		return fmt.Errorf("nbd: export %.40q: name or description longer than %d bytes", e.Name, MaxStringLength)
	}
	min, pref, max, ok := e.BlockSizes()
	if !ok {
		return nil
	}
	pow2 := func(v uint32) bool { return v != 0 && v&(v-1) == 0 }
	switch {
	case !pow2(min) || min > 64<<10:
		return fmt.Errorf("nbd: export %q: minimum block size %d is not a power of two up to 65536", e.Name, min)
	case !pow2(pref) || pref < min:
		return fmt.Errorf("nbd: export %q: preferred block size %d is not a power of two at least the minimum %d", e.Name, pref, min)
	case max != 0xffffffff && (max < min || max%min != 0):
		return fmt.Errorf("nbd: export %q: maximum block size %d is not a multiple of the minimum %d", e.Name, max, min)
	}
	return nil
}

// Negotiated is the outcome of a successful handshake.
type Negotiated struct {
	// Name is the export name the client chose, as it sent it.
	Name string
	// Export is what lookup returned for Name, with Flags as sent to the
	// client.
	Export Export
	// StructuredReplies is true when the client negotiated
	// NBD_OPT_STRUCTURED_REPLY: every READ must then be answered with
	// structured reply chunks (EncodeOffsetData, AppendReplyError, ...),
	// other commands with a simple reply or structured chunks.
	StructuredReplies bool
	// ClientFlags are the flags the client sent after the greeting.
	ClientFlags uint32
	// ExportName is true when the client ended the handshake with the old
	// NBD_OPT_EXPORT_NAME instead of NBD_OPT_GO.
	ExportName bool
}

// A HandshakeServer serves the server side of the fixed-newstyle handshake.
// Lookup is required; the other fields are optional.
type HandshakeServer struct {
	// Lookup returns the export of a name (the empty name being the
	// default export) and whether it exists.
	Lookup func(name string) (Export, bool)
	// List returns the export names NBD_OPT_LIST reports. Nil refuses
	// NBD_OPT_LIST with NBD_REP_ERR_POLICY.
	List func() []string
	// NoStructuredReplies refuses NBD_OPT_STRUCTURED_REPLY (with
	// NBD_REP_ERR_UNSUP), for a transmission phase that only sends simple
	// replies.
	NoStructuredReplies bool
}

// ServeHandshake is (&HandshakeServer{Lookup: lookup, List: list}).Serve(c).
func ServeHandshake(c net.Conn, lookup func(name string) (Export, bool), list func() []string) (Negotiated, error) {
	return (&HandshakeServer{Lookup: lookup, List: list}).Serve(c)
}

// Serve runs the server side of the fixed-newstyle handshake on c: it sends
// the greeting (handshake flags FIXED_NEWSTYLE and NO_ZEROES), reads the
// client flags and answers options until the client chooses an export with
// NBD_OPT_GO or NBD_OPT_EXPORT_NAME.
//
// Options: NBD_OPT_GO and NBD_OPT_INFO (NBD_INFO_EXPORT always, NBD_INFO_NAME
// and NBD_INFO_DESCRIPTION when asked for, NBD_INFO_BLOCK_SIZE when the export
// has block sizes), NBD_OPT_LIST, NBD_OPT_ABORT, NBD_OPT_EXPORT_NAME and
// NBD_OPT_STRUCTURED_REPLY. Every other option is refused with
// NBD_REP_ERR_UNSUP, malformed ones with NBD_REP_ERR_INVALID, an unknown
// export with NBD_REP_ERR_UNKNOWN, an export whose Validate fails with
// NBD_REP_ERR_POLICY, and option data longer than MaxOptionLength with
// NBD_REP_ERR_TOO_BIG; in each case the handshake goes on. A client that does
// not set ClientFlagFixedNewstyle is still served as fixed newstyle.
//
// Serve reads c without buffering, exactly the bytes the handshake consists
// of: when it returns successfully, the next byte on c is the first byte of
// the client's first transmission request, and the caller serves the
// transmission phase on c itself.
//
// On error (the client's I/O failed, it sent bad client flags or a bad
// option magic, NBD_OPT_EXPORT_NAME named an unknown export, or it aborted:
// ErrAbort) the caller must close c; the error names the option and the
// problem. Serve never closes c and sets no deadline: bounding the
// handshake's time with c.SetDeadline is the caller's job.
func (s *HandshakeServer) Serve(c net.Conn) (Negotiated, error) {
	h := &handshake{s: s, c: c}
	return h.run()
}

// handshake is the state of one Serve call.
type handshake struct {
	s    *HandshakeServer
	c    net.Conn
	hdr  [optionHeaderSize]byte
	data []byte // option data, grown up to MaxOptionLength
	out  []byte // replies being built
	neg  Negotiated
}

func (h *handshake) run() (Negotiated, error) {
	var g [greetingSize]byte
	binary.BigEndian.PutUint64(g[0:8], HandshakeMagic)
	binary.BigEndian.PutUint64(g[8:16], OptionMagic)
	binary.BigEndian.PutUint16(g[16:18], HandshakeFlagFixedNewstyle|HandshakeFlagNoZeroes)
	if _, err := h.c.Write(g[:]); err != nil {
		return Negotiated{}, fmt.Errorf("nbd: handshake: sending the greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(h.c, cf[:]); err != nil {
		return Negotiated{}, fmt.Errorf("nbd: handshake: reading the client flags: %w", err)
	}
	h.neg.ClientFlags = binary.BigEndian.Uint32(cf[:])
	if bad := h.neg.ClientFlags &^ (ClientFlagFixedNewstyle | ClientFlagNoZeroes); bad != 0 {
		return Negotiated{}, fmt.Errorf("nbd: handshake: client flags %#x have unknown bits %#x", h.neg.ClientFlags, bad)
	}
	for {
		done, err := h.option()
		if err != nil {
			return Negotiated{}, err
		}
		if done {
			return h.neg, nil
		}
	}
}

// option reads and answers one option. It returns true when the option
// ended the handshake successfully.
func (h *handshake) option() (bool, error) {
	if _, err := io.ReadFull(h.c, h.hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return false, fmt.Errorf("nbd: handshake: client closed the connection before choosing an export: %w", err)
		}
		return false, fmt.Errorf("nbd: handshake: reading an option header: %w", err)
	}
	magic := binary.BigEndian.Uint64(h.hdr[0:8])
	opt := binary.BigEndian.Uint32(h.hdr[8:12])
	n := binary.BigEndian.Uint32(h.hdr[12:16])
	name := OptionName(opt)
	if magic != OptionMagic {
		return false, fmt.Errorf("%w 0x%016x in handshake option header (want 0x%016x)", ErrBadMagic, magic, OptionMagic)
	}
	if opt == OptExportName {
		// It cannot be answered with an error: anything wrong ends the
		// connection.
		if n > MaxStringLength {
			return false, fmt.Errorf("nbd: handshake: %s: export name of %d bytes is longer than %d", name, n, MaxStringLength)
		}
		if err := h.readData(name, n); err != nil {
			return false, err
		}
		return true, h.exportName(string(h.data[:n]))
	}
	if n > MaxOptionLength {
		if _, err := io.CopyN(io.Discard, h.c, int64(n)); err != nil {
			return false, fmt.Errorf("nbd: handshake: %s: skipping %d bytes of option data: %w", name, n, err)
		}
		if !knownOption(opt) {
			return false, h.reply(opt, RepErrUnsup, "option %s is not supported", name)
		}
		return false, h.reply(opt, RepErrTooBig, "%s: option data of %d bytes is longer than the server's limit of %d", name, n, MaxOptionLength)
	}
	if err := h.readData(name, n); err != nil {
		return false, err
	}
	data := h.data[:n]
	switch opt {
	case OptAbort:
		if n != 0 {
			return false, h.reply(opt, RepErrInvalid, "%s: option has %d bytes of data, want none", name, n)
		}
		// The client may close without reading the reply: ignore errors.
		_ = h.reply(opt, RepAck, "")
		return false, ErrAbort
	case OptList:
		if n != 0 {
			return false, h.reply(opt, RepErrInvalid, "%s: option has %d bytes of data, want none", name, n)
		}
		if h.s.List == nil {
			return false, h.reply(opt, RepErrPolicy, "%s: this server does not list its exports", name)
		}
		h.out = h.out[:0]
		for _, e := range h.s.List() {
			if len(e) > MaxStringLength {
				continue
			}
			h.out = appendOptionReply(h.out, opt, RepServer, uint32(4+len(e)))
			h.out = binary.BigEndian.AppendUint32(h.out, uint32(len(e)))
			h.out = append(h.out, e...)
		}
		h.out = appendOptionReply(h.out, opt, RepAck, 0)
		return false, h.send(name)
	case OptStructuredReply:
		if n != 0 {
			return false, h.reply(opt, RepErrInvalid, "%s: option has %d bytes of data, want none", name, n)
		}
		if h.s.NoStructuredReplies {
			return false, h.reply(opt, RepErrUnsup, "%s: this server sends simple replies only", name)
		}
		h.neg.StructuredReplies = true
		return false, h.reply(opt, RepAck, "")
	case OptInfo, OptGo:
		return h.infoGo(opt, data)
	}
	return false, h.reply(opt, RepErrUnsup, "option %s is not supported", name)
}

// infoGo answers NBD_OPT_INFO or NBD_OPT_GO, whose data is a 32-bit name
// length, the name, a 16-bit count of information requests and the requests.
func (h *handshake) infoGo(opt uint32, data []byte) (bool, error) {
	name := OptionName(opt)
	if len(data) < 6 {
		return false, h.reply(opt, RepErrInvalid, "%s: option data of %d bytes is shorter than 6", name, len(data))
	}
	nl := binary.BigEndian.Uint32(data[0:4])
	if uint64(nl) > uint64(len(data)-6) {
		return false, h.reply(opt, RepErrInvalid, "%s: export name length %d does not fit in option data of %d bytes", name, nl, len(data))
	}
	if nl > MaxStringLength {
		return false, h.reply(opt, RepErrInvalid, "%s: export name of %d bytes is longer than %d", name, nl, MaxStringLength)
	}
	export := string(data[4 : 4+nl])
	nreq := binary.BigEndian.Uint16(data[4+nl:])
	reqs := data[6+nl:]
	if len(reqs) != 2*int(nreq) {
		return false, h.reply(opt, RepErrInvalid, "%s: %d information requests need %d bytes, option has %d", name, nreq, 2*int(nreq), len(reqs))
	}
	if strings.IndexByte(export, 0) >= 0 {
		return false, h.reply(opt, RepErrInvalid, "%s: export name contains a NUL byte", name)
	}
	e, ok := h.s.Lookup(export)
	if !ok {
		return false, h.reply(opt, RepErrUnknown, "%s: unknown export %q", name, export)
	}
	if err := validate(e, export); err != nil {
		return false, h.reply(opt, RepErrPolicy, "%s: %v", name, err)
	}
	e = h.finish(e)
	var wantName, wantDesc bool
	for i := 0; i < len(reqs); i += 2 {
		switch binary.BigEndian.Uint16(reqs[i:]) {
		case InfoName:
			wantName = true
		case InfoDescription:
			wantDesc = true
		}
		// NBD_INFO_EXPORT is always sent and NBD_INFO_BLOCK_SIZE whenever
		// the export has block sizes; unknown requests are ignored.
	}
	h.out = h.out[:0]
	h.out = appendOptionReply(h.out, opt, RepInfo, 2+8+2)
	h.out = binary.BigEndian.AppendUint16(h.out, InfoExport)
	h.out = binary.BigEndian.AppendUint64(h.out, e.Size)
	h.out = binary.BigEndian.AppendUint16(h.out, e.Flags)
	if wantName {
		cn := e.Name
		if cn == "" {
			cn = export
		}
		h.out = appendOptionReply(h.out, opt, RepInfo, uint32(2+len(cn)))
		h.out = binary.BigEndian.AppendUint16(h.out, InfoName)
		h.out = append(h.out, cn...)
	}
	if wantDesc && e.Description != "" {
		h.out = appendOptionReply(h.out, opt, RepInfo, uint32(2+len(e.Description)))
		h.out = binary.BigEndian.AppendUint16(h.out, InfoDescription)
		h.out = append(h.out, e.Description...)
	}
	if min, pref, max, ok := e.BlockSizes(); ok {
		h.out = appendOptionReply(h.out, opt, RepInfo, 2+4+4+4)
		h.out = binary.BigEndian.AppendUint16(h.out, InfoBlockSize)
		h.out = binary.BigEndian.AppendUint32(h.out, min)
		h.out = binary.BigEndian.AppendUint32(h.out, pref)
		h.out = binary.BigEndian.AppendUint32(h.out, max)
	}
	h.out = appendOptionReply(h.out, opt, RepAck, 0)
	if err := h.send(name); err != nil {
		return false, err
	}
	if opt == OptInfo {
		return false, nil
	}
	h.neg.Name, h.neg.Export = export, e
	return true, nil
}

// exportName ends the handshake the old way, for NBD_OPT_EXPORT_NAME: the
// export's size and flags, then 124 zero bytes unless the client set
// ClientFlagNoZeroes.
func (h *handshake) exportName(export string) error {
	name := OptionName(OptExportName)
	if strings.IndexByte(export, 0) >= 0 {
		return fmt.Errorf("nbd: handshake: %s: export name contains a NUL byte", name)
	}
	e, ok := h.s.Lookup(export)
	if !ok {
		return fmt.Errorf("nbd: handshake: %s: unknown export %q", name, export)
	}
	if err := validate(e, export); err != nil {
		return fmt.Errorf("nbd: handshake: %s: %w", name, err)
	}
	e = h.finish(e)
	h.out = binary.BigEndian.AppendUint64(h.out[:0], e.Size)
	h.out = binary.BigEndian.AppendUint16(h.out, e.Flags)
	if h.neg.ClientFlags&ClientFlagNoZeroes == 0 {
		h.out = append(h.out, make([]byte, exportNameZeroes)...)
	}
	if err := h.send(name); err != nil {
		return err
	}
	h.neg.Name, h.neg.Export, h.neg.ExportName = export, e, true
	return nil
}

// validate is e.Validate, naming the export as the client did when it has no
// canonical name.
func validate(e Export, requested string) error {
	if e.Name == "" {
		e.Name = requested
	}
	return e.Validate()
}

// finish fixes up the transmission flags sent for e.
func (h *handshake) finish(e Export) Export {
	e.Flags |= FlagHasFlags
	if !h.neg.StructuredReplies {
		e.Flags &^= FlagSendDF
	}
	return e
}

// readData reads n bytes of option data into h.data[:n]; n is at most
// MaxOptionLength.
func (h *handshake) readData(name string, n uint32) error {
	if cap(h.data) < int(n) {
		h.data = make([]byte, n, max(int(n), 512))
	}
	if _, err := io.ReadFull(h.c, h.data[:n]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("nbd: handshake: %s: reading %d bytes of option data: %w", name, n, err)
	}
	return nil
}

// reply sends one option reply whose payload is the formatted message (none
// when format is empty).
func (h *handshake) reply(opt, typ uint32, format string, args ...any) error {
	msg := ""
	if format != "" {
		msg = fmt.Sprintf(format, args...)
		if len(msg) > MaxStringLength {
			msg = msg[:MaxStringLength]
		}
	}
	h.out = appendOptionReply(h.out[:0], opt, typ, uint32(len(msg)))
	h.out = append(h.out, msg...)
	return h.send(OptionName(opt))
}

// send writes h.out in one write.
func (h *handshake) send(name string) error {
	if _, err := h.c.Write(h.out); err != nil {
		return fmt.Errorf("nbd: handshake: %s: sending the reply: %w", name, err)
	}
	return nil
}

// appendOptionReply appends an option reply header announcing n bytes of
// payload.
func appendOptionReply(b []byte, opt, typ, n uint32) []byte {
	b = binary.BigEndian.AppendUint64(b, OptionReplyMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	return binary.BigEndian.AppendUint32(b, n)
}

// knownOption reports whether Serve implements opt.
func knownOption(opt uint32) bool {
	switch opt {
	case OptExportName, OptAbort, OptList, OptInfo, OptGo, OptStructuredReply:
		return true
	}
	return false
}

// OptionName returns the protocol's name of an option ("NBD_OPT_GO", ...),
// or "NBD_OPT(n)" for an unknown one.
func OptionName(opt uint32) string {
	switch opt {
	case OptExportName:
		return "NBD_OPT_EXPORT_NAME"
	case OptAbort:
		return "NBD_OPT_ABORT"
	case OptList:
		return "NBD_OPT_LIST"
	case OptStartTLS:
		return "NBD_OPT_STARTTLS"
	case OptInfo:
		return "NBD_OPT_INFO"
	case OptGo:
		return "NBD_OPT_GO"
	case OptStructuredReply:
		return "NBD_OPT_STRUCTURED_REPLY"
	case OptListMetaContext:
		return "NBD_OPT_LIST_META_CONTEXT"
	case OptSetMetaContext:
		return "NBD_OPT_SET_META_CONTEXT"
	case OptExtendedHeaders:
		return "NBD_OPT_EXTENDED_HEADERS"
	}
	return fmt.Sprintf("NBD_OPT(%d)", opt)
}
