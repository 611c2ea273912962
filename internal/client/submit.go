package client

import (
	"fmt"

	"rbd/internal/stats"
	"rbd/internal/verbs"
	"rbd/internal/wire"
)

// Submit sends a command on a held slot. For READ and WRITE, Length bytes of
// the slot (at most SlotSize) are the data. done runs in the queue's loop
// goroutine when the command completes, exactly once once Submit returned
// nil (with ESHUTDOWN if the connection ends first); the slot stays held
// until its holder releases it. An error means the command was not sent and
// done will not run.
func (s *Slot) Submit(op wire.Op, flags uint8, offset uint64, length uint32, done func(*Slot, Completion)) error {
	n, err := s.prepare(op, flags, offset, length, done)
	if err != nil {
		return err
	}
	s.q.post(s.wrs[:n])
	return nil
}

// Stage is Submit for a batch: the command's work requests wait in the
// queue's batch until Kick (or until the batch is full) and then go out in
// one post, one doorbell. Stage and Kick belong to one goroutine (rbdi's NBD
// reader of the queue); Submit may run beside them.
func (s *Slot) Stage(op wire.Op, flags uint8, offset uint64, length uint32, done func(*Slot, Completion)) error {
	n, err := s.prepare(op, flags, offset, length, done)
	if err != nil {
		return err
	}
	q := s.q
	q.staged = append(q.staged, s.wrs[:n]...)
	if len(q.staged) >= verbs.MaxChain-2 {
		q.Kick()
	}
	return nil
}

// Kick posts the staged commands.
func (q *Queue) Kick() {
	if len(q.staged) == 0 {
		return
	}
	q.post(q.staged)
	clear(q.staged)
	q.staged = q.staged[:0]
}

// post posts commands already marked sent. A failure ends the connection;
// the loop then completes them with ESHUTDOWN (failAll).
func (q *Queue) post(wrs []verbs.SendWR) {
	if err := q.ring.Post(wrs); err != nil && !q.dead.Load() {
		q.stats.AddStallSQFull()
		q.drop("post send: " + err.Error())
	}
}

// prepare builds the command's work requests in the slot (no allocation):
// RDMA WRITE of the data (unless it travels inline), then the command,
// marked solicited so that it wakes the target. It marks the slot sent under
// the submit lock, so that a command either is marked before the loop's
// final failAll looks, or fails here.
func (s *Slot) prepare(op wire.Op, flags uint8, offset uint64, length uint32, done func(*Slot, Completion)) (int, error) {
	q := s.q
	if (op == wire.OpRead || op == wire.OpWrite || op == wire.OpOpen) && int(length) > q.slotSize {
		return 0, fmt.Errorf("client: %s of %d bytes exceeds the slot size %d", op, length, q.slotSize)
	}
	flags &^= wire.FlagInline // the queue decides what travels inline
	q.subMu.RLock()
	defer q.subMu.RUnlock()
	if q.dead.Load() || q.ended {
		return 0, q.err()
	}
	s.gen++
	s.req = wire.Request{Op: op, Flags: flags, Slot: uint16(s.index), Length: length, Offset: offset,
		Handle: uint64(s.gen)<<16 | uint64(s.index)}
	s.done = done
	inline := op == wire.OpWrite && q.inline > 0 && int(length) <= q.inline
	if inline {
		s.req.Flags |= wire.FlagInline
	}
	if sop, ok := statOp(op); ok {
		s.start = q.stats.Start(sop)
		if op == wire.OpWrite && flags&wire.FlagFUA != 0 {
			q.stats.AddFUAWrite()
		}
	}
	s.req.Encode(q.ring.SendHeader(s.index))
	n := 0
	if op == wire.OpWrite && !inline {
		w := &s.wrs[n]
		*w = verbs.SendWR{ID: idSend | uint64(s.index), Op: verbs.OpRDMAWrite, NumSGE: 1,
			RemoteAddr: q.remoteAddr + uint64(s.index*q.slotSize), RKey: q.remoteKey}
		w.SGE[0] = q.localMR.SGE(s.index*q.slotSize, int(length))
		n++
	}
	w := &s.wrs[n]
	*w = verbs.SendWR{ID: idSend | uint64(s.index), Op: verbs.OpSend, Flags: verbs.Signaled | verbs.Solicited, NumSGE: 1}
	w.SGE[0] = q.ring.SendHeaderSGE(s.index)
	switch {
	case inline:
		w.NumSGE = 2
		w.SGE[1] = q.localMR.SGE(s.index*q.slotSize, int(length))
		q.stats.AddInlineWrite()
	case op == wire.OpOpen:
		w.NumSGE = 2
		w.SGE[1] = q.localMR.SGE(s.index*q.slotSize, int(length))
	case q.ep.MaxInlineData() >= wire.HeaderSize:
		w.Flags |= verbs.Inline
	}
	n++
	q.inflight.Add(1)
	s.state.Store(slotSent)
	return n, nil
}

func statOp(o wire.Op) (stats.Op, bool) {
	switch o {
	case wire.OpRead:
		return stats.OpRead, true
	case wire.OpWrite:
		return stats.OpWrite, true
	case wire.OpFlush:
		return stats.OpFlush, true
	case wire.OpTrim:
		return stats.OpTrim, true
	case wire.OpWriteZeroes:
		return stats.OpWriteZeroes, true
	}
	return 0, false
}
