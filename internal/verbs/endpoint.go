package verbs

import (
	"errors"
	"sync"
)

// EndpointConfig sizes an Endpoint's queues.
type EndpointConfig struct {
	QP         QPCaps
	CQEntries  int // default: MaxSendWR + MaxRecvWR
	CompVector int
}

// Endpoint is everything one RC connection owns: its rdma_cm identifier (and
// event channel), a protection domain of its own, a completion channel, one CQ
// for both queues, the QP and the memory regions registered through it. Close
// releases them in the reverse order of their creation.
type Endpoint struct {
	ID   *CMID
	PD   *PD
	Chan *CompChannel
	CQ   *CQ
	QP   *QP

	mu     sync.Mutex
	mrs    []*MR
	closed bool
}

// NewEndpoint builds the resources of a connection on id's device. On
// success the endpoint owns id (Close closes it); on failure what was built
// is released and id stays the caller's (a listener can still reject it,
// with a reason).
func NewEndpoint(id *CMID, cfg EndpointConfig) (*Endpoint, error) {
	e := &Endpoint{ID: id}
	ctx := id.Context()
	fail := func(err error) (*Endpoint, error) {
		e.ID = nil
		e.Close()
		return nil, err
	}
	var err error
	if e.PD, err = ctx.AllocPD(); err != nil {
		return fail(err)
	}
	if e.Chan, err = ctx.NewCompChannel(); err != nil {
		return fail(err)
	}
	n := cfg.CQEntries
	if n == 0 {
		n = cfg.QP.MaxSendWR + cfg.QP.MaxRecvWR
	}
	if e.CQ, err = ctx.CreateCQ(n, e.Chan, cfg.CompVector); err != nil {
		return fail(err)
	}
	if e.QP, err = id.CreateQP(e.PD, e.CQ, e.CQ, cfg.QP); err != nil {
		return fail(err)
	}
	return e, nil
}

// Register registers buf in the endpoint's protection domain; the region is
// deregistered by Close.
func (e *Endpoint) Register(buf *Buffer, access Access) (*MR, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, ErrClosed
	}
	mr, err := e.PD.Register(buf, access)
	if err != nil {
		return nil, err
	}
	e.mrs = append(e.mrs, mr)
	return mr, nil
}

// Wakeup makes a goroutine parked in CQ.Wait return ErrClosed, without freeing
// anything yet; Close does it too.
func (e *Endpoint) Wakeup() {
	if e.Chan != nil {
		e.Chan.wakeup()
	}
}

// Close disconnects and releases everything in reverse order: QP, memory
// regions, CQ, completion channel, PD, then the identifier and its event
// channel. It is idempotent and safe while another goroutine polls the CQ or
// waits on it (that goroutine gets ErrClosed).
func (e *Endpoint) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	mrs := e.mrs
	e.mrs = nil
	e.mu.Unlock()

	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	e.Wakeup()
	if e.QP != nil {
		if e.ID != nil {
			e.ID.Disconnect()
		}
		add(e.QP.Close())
	}
	for i := len(mrs) - 1; i >= 0; i-- {
		add(mrs[i].Close())
	}
	if e.CQ != nil {
		add(e.CQ.Close())
	}
	if e.Chan != nil {
		add(e.Chan.Close())
	}
	if e.PD != nil {
		add(e.PD.Close())
	}
	if e.ID != nil {
		add(e.ID.Close())
	}
	return errors.Join(errs...)
}
