package verbs

import (
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Buffer is memory for RDMA and O_DIRECT I/O: anonymous, page-aligned, from
// unix.Mmap and never the Go heap, so that C and the device may keep its
// address. It is safe for concurrent use; its bytes are the caller's to guard.
type Buffer struct {
	mu   sync.Mutex
	b    []byte
	regs int // memory regions over it
}

// PageSize is the system page size.
var PageSize = unix.Getpagesize()

// AllocBuffer maps size bytes (rounded up to whole pages), faulted in at once.
func AllocBuffer(size int) (*Buffer, error) {
	if size <= 0 {
		return nil, fmt.Errorf("verbs: buffer size %d", size)
	}
	size = (size + PageSize - 1) &^ (PageSize - 1)
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("verbs: mmap %d bytes: %w", size, err)
	}
	return &Buffer{b: b}, nil
}

// Bytes is the whole buffer (nil after Close).
func (b *Buffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b
}

// Len is the buffer's size in bytes.
func (b *Buffer) Len() int { return len(b.Bytes()) }

// Addr is the buffer's address.
func (b *Buffer) Addr() uintptr {
	bs := b.Bytes()
	if len(bs) == 0 {
		return 0
	}
	return uintptr(unsafe.Pointer(&bs[0]))
}

func (b *Buffer) pin() ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.b == nil {
		return nil, ErrClosed
	}
	b.regs++
	return b.b, nil
}

func (b *Buffer) unpin() {
	b.mu.Lock()
	b.regs--
	b.mu.Unlock()
}

// Close unmaps the buffer. It fails while memory regions still cover it.
func (b *Buffer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.b == nil {
		return nil
	}
	if b.regs > 0 {
		return fmt.Errorf("verbs: buffer still registered in %d memory region(s)", b.regs)
	}
	err := unix.Munmap(b.b)
	b.b = nil
	return err
}

// PD is a protection domain. Close fails (EBUSY) while regions or QPs use it.
type PD struct {
	lt  lifetime
	pd  unsafe.Pointer
	ctx *Context
}

// AllocPD allocates a protection domain on the device.
func (c *Context) AllocPD() (*PD, error) {
	p, err := c.ptr()
	if err != nil {
		return nil, err
	}
	pd, err := cAllocPD(p)
	if err != nil {
		return nil, err
	}
	return &PD{pd: pd, ctx: c}, nil
}

// Close deallocates the protection domain; it is idempotent.
func (pd *PD) Close() error {
	if !pd.lt.close() {
		return nil
	}
	defer pd.lt.unlock()
	return cDeallocPD(pd.pd)
}

// MR is a registered memory region over (part of) a Buffer.
type MR struct {
	lt     lifetime
	mr     unsafe.Pointer
	buf    *Buffer
	b      []byte
	LKey   uint32
	RKey   uint32
	Access Access
}

// Register registers the whole of buf with the given access.
func (pd *PD) Register(buf *Buffer, access Access) (*MR, error) {
	return pd.RegisterRange(buf, 0, buf.Len(), access)
}

// RegisterRange registers length bytes of buf from off.
func (pd *PD) RegisterRange(buf *Buffer, off, length int, access Access) (*MR, error) {
	if !pd.lt.acquire() {
		return nil, ErrClosed
	}
	defer pd.lt.release()
	all, err := buf.pin()
	if err != nil {
		return nil, err
	}
	if off < 0 || length <= 0 || off+length > len(all) {
		buf.unpin()
		return nil, fmt.Errorf("verbs: register [%d, %d) of a %d-byte buffer", off, off+length, len(all))
	}
	b := all[off : off+length]
	mr, lkey, rkey, err := cRegMR(pd.pd, unsafe.Pointer(&b[0]), length, access)
	if err != nil {
		buf.unpin()
		return nil, err
	}
	return &MR{mr: mr, buf: buf, b: b, LKey: lkey, RKey: rkey, Access: access}, nil
}

// NewSoftMR is a memory region of a software transport (the in-memory one of
// internal/transport/memt): the whole of buf, with keys the transport chose,
// registered with no device. Close releases only the buffer's pin.
func NewSoftMR(buf *Buffer, lkey, rkey uint32, access Access) (*MR, error) {
	b, err := buf.pin()
	if err != nil {
		return nil, err
	}
	return &MR{buf: buf, b: b, LKey: lkey, RKey: rkey, Access: access}, nil
}

// Bytes is the registered memory.
func (m *MR) Bytes() []byte { return m.b }

// Addr is the region's start address, as the peer uses it for RDMA.
func (m *MR) Addr() uint64 { return uint64(uintptr(unsafe.Pointer(&m.b[0]))) }

// SGE describes length bytes of the region from off.
func (m *MR) SGE(off, length int) SGE {
	return SGE{Addr: m.Addr() + uint64(off), Length: uint32(length), LKey: m.LKey}
}

// Close deregisters the region; it is idempotent.
func (m *MR) Close() error {
	if !m.lt.close() {
		return nil
	}
	defer m.lt.unlock()
	var err error
	if m.mr != nil {
		err = cDeregMR(m.mr)
	}
	m.buf.unpin()
	return err
}
