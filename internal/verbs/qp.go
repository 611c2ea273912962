package verbs

import "unsafe"

// QP is a reliable-connected queue pair, created on a CMID (rdma_create_qp), so
// that rdma_cm drives its state through connect, accept and disconnect.
// PostSend and PostRecv are safe for concurrent use and against Close.
type QP struct {
	lt   lifetime
	qp   unsafe.Pointer
	id   *CMID
	Num  uint32
	Caps QPCaps // what the device granted
}

// CreateQP creates the CMID's queue pair in pd, completing to sendCQ and recvCQ
// (they may be the same). caps.MaxInlineData is a wish: when the device refuses
// it, the QP is created without inline data.
func (id *CMID) CreateQP(pd *PD, sendCQ, recvCQ *CQ, caps QPCaps) (*QP, error) {
	if !id.lt.acquire() {
		return nil, ErrClosed
	}
	defer id.lt.release()
	for _, o := range []interface {
		acquire() bool
		release()
	}{&pd.lt, &sendCQ.lt, &recvCQ.lt} {
		if !o.acquire() {
			return nil, ErrClosed
		}
		defer o.release()
	}
	c := caps
	p, num, err := cCreateQP(id.id, pd.pd, sendCQ.cq, recvCQ.cq, &c)
	if err != nil && caps.MaxInlineData > 0 {
		c = caps
		c.MaxInlineData = 0
		p, num, err = cCreateQP(id.id, pd.pd, sendCQ.cq, recvCQ.cq, &c)
	}
	if err != nil {
		return nil, err
	}
	qp := &QP{qp: p, id: id, Num: num, Caps: c}
	id.qp = qp
	return qp, nil
}

// PostSend posts wrs as chains of up to MaxChain work requests, one call into C
// per chain. It returns how many were posted: on error, those before it.
func (qp *QP) PostSend(wrs []SendWR) (int, error) { return postChains(qp, wrs, cPostSend) }

// PostRecv posts receive work requests, like PostSend.
func (qp *QP) PostRecv(wrs []RecvWR) (int, error) { return postChains(qp, wrs, cPostRecv) }

func postChains[W SendWR | RecvWR](qp *QP, wrs []W, post func(unsafe.Pointer, []W) (int, error)) (int, error) {
	if !qp.lt.acquire() {
		return 0, ErrClosed
	}
	defer qp.lt.release()
	done := 0
	for done < len(wrs) {
		n, err := post(qp.qp, wrs[done:min(done+MaxChain, len(wrs))])
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// Close destroys the queue pair (outstanding work is flushed first by a
// disconnect); it is idempotent and waits for posts in progress.
func (qp *QP) Close() error {
	if !qp.lt.close() {
		return nil
	}
	defer qp.lt.unlock()
	if qp.id.lt.acquire() {
		cDestroyQP(qp.id.id)
		qp.id.lt.release()
	}
	return nil
}
