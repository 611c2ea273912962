package ring

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"rbd/internal/transport"
	"rbd/internal/verbs"
	"rbd/internal/wire"
)

// Config sizes a ring.
type Config struct {
	Recvs   int // receive contexts, all posted at start
	Area    int // data bytes per receive context (rounded up to a page; at least wire.MinDataArea)
	Headers int // send headers (wire.HeaderSize bytes each), one per command or reply context
	// Solicited: sleep until a solicited message arrives (or the ring is woken);
	// send completions are then reaped at the next wake-up instead of causing
	// one. Only for peers that mark every message solicited, and only where
	// the device honours it (transport.Endpoint.SolicitedEvents).
	Solicited bool
	// Spin polls an empty CQ for up to this long before arming it and
	// sleeping (0: sleep at once).
	Spin time.Duration
}

// Ring is the message side of one connection. Post and the
// accessors are safe for concurrent use; Run, Repost and Defer belong to the
// goroutine running the loop.
type Ring struct {
	ep        transport.Endpoint
	buf       *verbs.Buffer
	mr        *verbs.MR
	nrecv     int
	area      int
	nhdr      int
	solicited bool
	spin      time.Duration

	// loop goroutine only
	wcs     []verbs.WC
	reposts []verbs.RecvWR
	sends   []verbs.SendWR
}

// recvID marks receive work requests; send IDs are the caller's and must not
// have this bit.
const recvID = 1 << 63

// RecvIndex reports whether a completion is a receive, and of which context.
func RecvIndex(id uint64) (int, bool) {
	if id&recvID == 0 {
		return 0, false
	}
	return int(id &^ recvID), true
}

// New allocates and registers the ring's buffer in ep's protection domain and
// posts every receive. On error the returned ring, if not nil, still holds
// its buffer: Free it once ep is closed.
func New(ep transport.Endpoint, cfg Config) (*Ring, error) {
	if cfg.Recvs <= 0 {
		return nil, errors.New("ring: no receive contexts")
	}
	area := max(wire.MinDataArea, (cfg.Area+4095)/4096*4096)
	r := &Ring{ep: ep, nrecv: cfg.Recvs, area: area, nhdr: cfg.Headers, solicited: cfg.Solicited && ep.SolicitedEvents(), spin: cfg.Spin,
		wcs: make([]verbs.WC, verbs.MaxChain), reposts: make([]verbs.RecvWR, 0, cfg.Recvs), sends: make([]verbs.SendWR, 0, 2*verbs.MaxChain)}
	var err error
	if r.buf, err = verbs.AllocBuffer(r.nrecv*(area+wire.HeaderSize) + r.nhdr*wire.HeaderSize); err != nil {
		return nil, err
	}
	if r.mr, err = ep.Register(r.buf, verbs.AccessLocalWrite); err != nil {
		r.buf.Close()
		return nil, err
	}
	wrs := make([]verbs.RecvWR, r.nrecv)
	for i := range wrs {
		wrs[i] = r.recvWR(i)
	}
	if _, err := ep.PostRecv(wrs); err != nil {
		return r, err // the buffer stays until Free: the QP may still hold receives
	}
	return r, nil
}

// Free releases the buffer; only after the endpoint is closed (its QP gone).
func (r *Ring) Free() {
	if r != nil && r.buf != nil {
		r.buf.Close()
	}
}

// Layout: the data areas (page-aligned), then the receive headers, then the
// send headers.
func (r *Ring) dataOff(i int) int    { return i * r.area }
func (r *Ring) recvHdrOff(i int) int { return r.nrecv*r.area + i*wire.HeaderSize }
func (r *Ring) sendHdrOff(k int) int { return r.nrecv*(r.area+wire.HeaderSize) + k*wire.HeaderSize }

// Recvs is the number of receive contexts; Area the data bytes of each.
func (r *Ring) Recvs() int { return r.nrecv }
func (r *Ring) Area() int  { return r.area }

// RecvHeader is the message header of receive context i.
func (r *Ring) RecvHeader(i int) []byte {
	o := r.recvHdrOff(i)
	return r.mr.Bytes()[o : o+wire.HeaderSize]
}

// RecvData is the data area of receive context i.
func (r *Ring) RecvData(i int) []byte {
	o := r.dataOff(i)
	return r.mr.Bytes()[o : o+r.area]
}

// RecvDataSGE is n bytes of receive context i's data area, to send from.
func (r *Ring) RecvDataSGE(i, n int) verbs.SGE { return r.mr.SGE(r.dataOff(i), n) }

// SendHeader is send header k, to encode a message into.
func (r *Ring) SendHeader(k int) []byte {
	o := r.sendHdrOff(k)
	return r.mr.Bytes()[o : o+wire.HeaderSize]
}

// SendHeaderSGE is send header k as a scatter entry.
func (r *Ring) SendHeaderSGE(k int) verbs.SGE { return r.mr.SGE(r.sendHdrOff(k), wire.HeaderSize) }

func (r *Ring) recvWR(i int) verbs.RecvWR {
	w := verbs.RecvWR{ID: recvID | uint64(i), NumSGE: 2}
	w.SGE[0] = r.mr.SGE(r.recvHdrOff(i), wire.HeaderSize)
	w.SGE[1] = r.mr.SGE(r.dataOff(i), r.area)
	return w
}

// Repost gives receive context i back at the end of the current batch (loop
// goroutine only).
func (r *Ring) Repost(i int) { r.reposts = append(r.reposts, r.recvWR(i)) }

// Defer queues sends to be posted, in order and in one chain, at the end of
// the current batch (loop goroutine only).
func (r *Ring) Defer(wrs ...verbs.SendWR) { r.sends = append(r.sends, wrs...) }

// Post posts sends at once, in order (any goroutine). A full send queue is
// waited out for a while (the device frees entries as work completes) before
// it counts as an error.
func (r *Ring) Post(wrs []verbs.SendWR) error {
	deadline := time.Time{}
	for len(wrs) > 0 {
		n, err := r.ep.PostSend(wrs)
		wrs = wrs[n:]
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.ENOMEM) {
			return err
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(time.Second)
		} else if time.Now().After(deadline) {
			return fmt.Errorf("%w (the send queue stayed full for 1 s)", err)
		}
		time.Sleep(20 * time.Microsecond)
	}
	return nil
}

// Flush posts what the batch deferred: the receives, then the sends.
func (r *Ring) Flush() error {
	var err error
	if len(r.reposts) > 0 {
		_, err = r.ep.PostRecv(r.reposts)
		r.reposts = r.reposts[:0]
	}
	if len(r.sends) > 0 {
		if e := r.Post(r.sends); err == nil {
			err = e
		}
		clear(r.sends)
		r.sends = r.sends[:0]
	}
	return err
}

// Loop is what Run calls back, all in Run's goroutine.
type Loop struct {
	// Complete handles one completion (a receive: RecvIndex tells which).
	Complete func(wc *verbs.WC)
	// BatchEnd runs after each batch, once its deferred work is posted
	// (the initiator writes its NBD replies here). May be nil.
	BatchEnd func()
	// Stopped ends the loop when it returns true (checked after each batch).
	Stopped func() bool
	// Waited counts each sleep on the completion channel; Polled each
	// non-empty batch. Either may be nil.
	Waited func()
	Polled func(n int)
	// FlushFailed reports an error posting deferred work.
	FlushFailed func(err error)
}

// Leftovers polls what is still in the completion queue once the loop has
// ended and hands report each completion that failed for a reason other
// than the flush of a dead queue pair: a peer's disconnect can be seen
// before the completion error that caused it (siw sends its TERMINATE and
// the CM event races the CQ), and that error is the line an operator needs.
func (r *Ring) Leftovers(report func(wc *verbs.WC)) {
	for range 64 {
		n, err := r.ep.Poll(r.wcs)
		if err != nil || n == 0 {
			return
		}
		for k := range n {
			if wc := &r.wcs[k]; wc.Status != verbs.WCSuccess && wc.Status != verbs.WCFlushErr {
				report(wc)
			}
		}
	}
}

// threadWaiter is an endpoint whose loop can sleep in its own thread
// (verbs.CQ.WaitEventThread) instead of on the netpoller.
type threadWaiter interface{ WaitEventThread() error }

// threadWait: the loop sleeps in its thread (RBD_CQ_WAIT=thread, for
// comparisons) rather than on the netpoller.
var threadWait = os.Getenv("RBD_CQ_WAIT") == "thread"

func (r *Ring) wait() error {
	if tw, ok := r.ep.(threadWaiter); ok && threadWait {
		return tw.WaitEventThread()
	}
	return r.ep.WaitEvent(context.Background())
}

// Run is the connection's completion loop. It returns nil when Stopped says
// so, verbs.ErrClosed when the endpoint is woken or closed, or the CQ's error.
func (r *Ring) Run(l Loop) error {
	cq := r.ep
	for !l.Stopped() {
		n, err := cq.Poll(r.wcs)
		if err != nil {
			return err
		}
		if n == 0 && r.spin > 0 {
			for t0 := time.Now(); n == 0 && err == nil && time.Since(t0) < r.spin; {
				n, err = cq.Poll(r.wcs)
			}
			if err != nil {
				return err
			}
		}
		if n == 0 {
			if err := cq.Arm(r.solicited); err != nil {
				return err
			}
			if n, err = cq.Poll(r.wcs); err != nil {
				return err
			}
			if n == 0 {
				if l.Waited != nil {
					l.Waited()
				}
				if err := r.wait(); err != nil {
					return err
				}
				continue
			}
		}
		if l.Polled != nil {
			l.Polled(n)
		}
		for k := range n {
			l.Complete(&r.wcs[k])
		}
		if err := r.Flush(); err != nil && l.FlushFailed != nil {
			l.FlushFailed(err)
		}
		if l.BatchEnd != nil {
			l.BatchEnd()
		}
	}
	return nil
}
