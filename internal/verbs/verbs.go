package verbs

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Limits of one post and one poll call.
const (
	MaxSGE   = 4  // scatter/gather entries per work request
	MaxChain = 64 // work requests per PostSend/PostRecv call, completions per Poll call
)

// MaxConnectPrivateData is the largest private data a connect request carries on
// every transport (InfiniBand and RoCE through rdma_cm: 56 bytes). Accept allows
// 196 and reject 148 bytes there; iWARP allows 512 for all three.
const (
	MaxConnectPrivateData = 56
	MaxAcceptPrivateData  = 196
	MaxRejectPrivateData  = 148
)

// ErrNotSupported is returned (wrapped) when this build or host has no RDMA.
var ErrNotSupported = errors.New("RDMA not supported")

// ErrClosed is returned by operations on a closed object.
var ErrClosed = errors.New("verbs: use of closed object")

// Error is a failed verb: Op names it, Errno says why, Hint says what to do.
type Error struct {
	Op    string
	Errno syscall.Errno
	Hint  string
}

func (e *Error) Error() string {
	s := "verbs: " + e.Op + ": " + e.Errno.Error()
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.Errno }

func newError(op string, errno syscall.Errno) error {
	e := &Error{Op: op, Errno: errno}
	if errno == syscall.ENOMEM && (op == "ibv_reg_mr" || op == "rdma_create_qp" || op == "ibv_create_cq") {
		e.Hint = memlockHint()
	}
	if errno == syscall.ENOSYS || errno == syscall.ENODEV && op == "rdma_create_event_channel" {
		return fmt.Errorf("%w: %w", ErrNotSupported, e)
	}
	return e
}

// memlockHint explains a too-small locked-memory limit, the usual cause of ENOMEM
// from memory registration.
func memlockHint() string {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY {
		return ""
	}
	return fmt.Sprintf("the locked-memory limit is %d KiB: raise it with `ulimit -l unlimited` or LimitMEMLOCK=infinity in the systemd unit", rl.Cur/1024)
}

// Access flags of a memory region (enum ibv_access_flags).
type Access int

const (
	AccessLocalWrite  Access = 1
	AccessRemoteWrite Access = 2
	AccessRemoteRead  Access = 4
	// AccessReadSink is what the local sink of an RDMA READ needs on every
	// transport: iWARP requires remote-write access there.
	AccessReadSink = AccessLocalWrite | AccessRemoteWrite
)

// Opcode of a send work request.
type Opcode uint32

const (
	OpSend      Opcode = 0
	OpRDMAWrite Opcode = 1
	OpRDMARead  Opcode = 2
)

func (o Opcode) String() string {
	switch o {
	case OpSend:
		return "SEND"
	case OpRDMAWrite:
		return "RDMA_WRITE"
	case OpRDMARead:
		return "RDMA_READ"
	}
	return fmt.Sprintf("Opcode(%d)", uint32(o))
}

// SendFlags of a send work request.
type SendFlags uint32

const (
	Signaled  SendFlags = 1 // generate a completion
	Inline    SendFlags = 2 // copy the data into the work request (up to QPCaps.MaxInlineData)
	Fence     SendFlags = 4 // wait for prior RDMA READs to complete
	Solicited SendFlags = 8
)

// SGE is one scatter/gather entry: Length bytes at Addr in the region of LKey.
type SGE struct {
	Addr   uint64
	Length uint32
	LKey   uint32
}

// SendWR is a send-queue work request. Its layout mirrors a C struct; it holds
// no Go pointers, so a slice of them is handed to C in one call.
type SendWR struct {
	ID         uint64
	RemoteAddr uint64 // RDMA READ/WRITE only
	RKey       uint32 // RDMA READ/WRITE only
	Op         Opcode
	Flags      SendFlags
	NumSGE     uint32
	SGE        [MaxSGE]SGE
}

// RecvWR is a receive-queue work request.
type RecvWR struct {
	ID     uint64
	NumSGE uint32
	_      uint32
	SGE    [MaxSGE]SGE
}

// WC is a work completion.
type WC struct {
	ID        uint64
	Status    WCStatus
	Opcode    WCOpcode
	ByteLen   uint32
	VendorErr uint32
	QPNum     uint32
	Flags     uint32
}

// WCStatus is enum ibv_wc_status.
type WCStatus uint32

const (
	WCSuccess        WCStatus = 0
	WCLocLenErr      WCStatus = 1
	WCLocQPOpErr     WCStatus = 2
	WCLocProtErr     WCStatus = 4
	WCFlushErr       WCStatus = 5
	WCBadRespErr     WCStatus = 7
	WCLocAccessErr   WCStatus = 8
	WCRemInvReqErr   WCStatus = 9
	WCRemAccessErr   WCStatus = 10
	WCRemOpErr       WCStatus = 11
	WCRetryExcErr    WCStatus = 12
	WCRNRRetryExcErr WCStatus = 13
	WCFatalErr       WCStatus = 19
	WCRespTimeoutErr WCStatus = 20
	WCGeneralErr     WCStatus = 21
)

var wcStatusNames = [...]string{
	"success", "local length error", "local QP operation error", "local EE context operation error",
	"local protection error", "work request flushed", "memory window bind error", "bad response",
	"local access error", "remote invalid request", "remote access error", "remote operation error",
	"transport retry counter exceeded", "RNR retry counter exceeded", "local RDD violation",
	"remote invalid RD request", "remote aborted", "invalid EE context number",
	"invalid EE context state", "fatal error", "response timeout", "general error",
}

func (s WCStatus) String() string {
	if int(s) < len(wcStatusNames) {
		return wcStatusNames[s]
	}
	return fmt.Sprintf("status %d", uint32(s))
}

// WCError is a work completion with an error status, as an error. (The
// opcode of a failed completion is undefined, so it is not reported.)
type WCError struct {
	ID        uint64
	Status    WCStatus
	VendorErr uint32
}

func (e *WCError) Error() string {
	s := fmt.Sprintf("verbs: work request %#x failed: %s", e.ID, e.Status)
	if e.VendorErr != 0 {
		s += fmt.Sprintf(" (vendor error %#x)", e.VendorErr)
	}
	return s
}

// Err returns nil for a successful completion and a *WCError otherwise.
func (wc *WC) Err() error {
	if wc.Status == WCSuccess {
		return nil
	}
	return &WCError{ID: wc.ID, Status: wc.Status, VendorErr: wc.VendorErr}
}

// WCOpcode is enum ibv_wc_opcode. A failed completion's opcode is not defined
// by the verbs specification; use the work request ID to know what it was.
type WCOpcode uint32

const (
	WCSend      WCOpcode = 0
	WCRDMAWrite WCOpcode = 1
	WCRDMARead  WCOpcode = 2
	WCRecv      WCOpcode = 128
)

func (o WCOpcode) String() string {
	switch o {
	case WCSend:
		return "SEND"
	case WCRDMAWrite:
		return "RDMA_WRITE"
	case WCRDMARead:
		return "RDMA_READ"
	case WCRecv:
		return "RECV"
	}
	return fmt.Sprintf("opcode %d", uint32(o))
}

// QPCaps sizes a queue pair. CreateQP updates it with what the device granted.
type QPCaps struct {
	MaxSendWR     int
	MaxRecvWR     int
	MaxSendSGE    int
	MaxRecvSGE    int
	MaxInlineData int
}

// ConnParam is what rdma_connect and rdma_accept carry.
type ConnParam struct {
	PrivateData []byte
	// ResponderResources: RDMA READs this side serves at once for the peer.
	ResponderResources uint8
	// InitiatorDepth: RDMA READs this side keeps outstanding towards the peer.
	InitiatorDepth uint8
	RetryCount     uint8 // transport retries (7 = the maximum)
	RNRRetryCount  uint8 // receiver-not-ready retries (7 = infinite)
}
