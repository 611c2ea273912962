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
// nil: with the target's status, or ESHUTDOWN when the queue fails for good
// first (a connection that dies only delays it: the command is sent again on
// the next). The slot stays held until its holder releases it. An error
// means the command was not sent and done will not run.
func (s *Slot) Submit(op wire.Op, flags uint8, offset uint64, length uint32, done func(*Slot, Completion)) error {
	c, n, err := s.prepare(nil, op, flags, offset, length, done)
	if err != nil {
		return err
	}
	if n > 0 {
		c.post(s.wrs[:n])
	}
	return nil
}

// Stage is Submit for a batch: the command's work requests wait in the
// queue's batch until Kick (or until the batch is full) and then go out in
// one post, one doorbell. Stage, Kick and Submit are safe for concurrent use
// (rbdi's NBD readers of a queue: the kernel's socket and NBD socket
// clients); a goroutine that staged must Kick before it waits, since only
// Kick (or a full batch) posts.
func (s *Slot) Stage(op wire.Op, flags uint8, offset uint64, length uint32, done func(*Slot, Completion)) error {
	c, n, err := s.prepare(nil, op, flags, offset, length, done)
	if err != nil || n == 0 {
		return err
	}
	q := s.q
	q.stageMu.Lock()
	if q.stagedConn != c { // what is staged for an older connection is resent on this one
		clear(q.staged)
		q.staged = q.staged[:0]
		q.stagedConn = c
	}
	q.staged = append(q.staged, s.wrs[:n]...)
	if len(q.staged) >= verbs.MaxChain-2 {
		q.kickLocked()
	}
	q.stageMu.Unlock()
	return nil
}

// Kick posts the staged commands.
func (q *Queue) Kick() {
	q.stageMu.Lock()
	q.kickLocked()
	q.stageMu.Unlock()
}

func (q *Queue) kickLocked() {
	if len(q.staged) == 0 {
		return
	}
	q.stagedConn.post(q.staged)
	clear(q.staged)
	q.staged = q.staged[:0]
}

// post posts commands already marked sent. A failure ends the connection;
// the commands go out again on the next one (or fail with the queue).
func (c *qconn) post(wrs []verbs.SendWR) {
	if err := c.ring.Post(wrs); err != nil && !c.dead.Load() {
		c.q.stats.AddStallSQFull()
		c.drop("post send: " + err.Error())
	}
}

// prepare records the command in the slot and marks it sent, under the
// submit lock: a command is either marked before the queue's final failAll
// looks (and completes then), or fails here. On the current connection (or
// on, for OPEN, the one being set up) it builds the work requests in the slot
// (no allocation) and returns how many to post; while the queue reconnects it
// returns 0: the command waits, and goes out with the others once a
// connection is back.
func (s *Slot) prepare(on *qconn, op wire.Op, flags uint8, offset uint64, length uint32, done func(*Slot, Completion)) (*qconn, int, error) {
	q := s.q
	if (op == wire.OpRead || op == wire.OpWrite || op == wire.OpOpen) && int(length) > q.slotSize {
		return nil, 0, fmt.Errorf("client: %s of %d bytes exceeds the slot size %d", op, length, q.slotSize)
	}
	flags &^= wire.FlagInline // the queue decides what travels inline
	q.subMu.RLock()
	defer q.subMu.RUnlock()
	if q.ended {
		return nil, 0, q.err()
	}
	if q.failFast && on == nil {
		return nil, 0, fmt.Errorf("%w: queue %d has been reconnecting for longer than fast-io-fail-timeout (%v)", ErrReconnecting, q.index, q.sess.cfg.Queue.FastIOFailTimeout)
	}
	c := on
	if c == nil {
		c = q.conn.Load()
	}
	s.gen++
	s.req = wire.Request{Op: op, Flags: flags, Slot: uint16(s.index), Length: length, Offset: offset,
		Handle: uint64(s.gen)<<16 | uint64(s.index)}
	if op == wire.OpWrite && q.inline > 0 && int(length) <= q.inline {
		s.req.Flags |= wire.FlagInline
	}
	s.done = done
	s.seq = q.seq.Add(1)
	if sop, ok := statOp(op); ok {
		s.start = q.stats.Start(sop)
		if op == wire.OpWrite && flags&wire.FlagFUA != 0 {
			q.stats.AddFUAWrite()
		}
	}
	n := 0
	if c != nil && !c.dead.Load() {
		n = s.build(c)
	}
	q.inflight.Add(1)
	s.state.Store(slotSent)
	return c, n, nil
}

// build encodes the slot's command for connection c and fills its work
// requests: RDMA WRITE of the data (unless it travels inline), then the
// command, marked solicited so that it wakes the target. It returns their
// number.
func (s *Slot) build(c *qconn) int {
	q := s.q
	s.req.Encode(c.ring.SendHeader(s.index))
	n := 0
	inline := s.req.Flags&wire.FlagInline != 0
	if s.req.Op == wire.OpWrite && !inline {
		w := &s.wrs[n]
		*w = verbs.SendWR{ID: idSend | uint64(s.index), Op: verbs.OpRDMAWrite, NumSGE: 1,
			RemoteAddr: c.remoteAddr + uint64(s.index*q.slotSize), RKey: c.remoteKey}
		w.SGE[0] = c.mr.SGE(s.index*q.slotSize, int(s.req.Length))
		n++
	}
	w := &s.wrs[n]
	*w = verbs.SendWR{ID: idSend | uint64(s.index), Op: verbs.OpSend, Flags: verbs.Signaled | verbs.Solicited, NumSGE: 1}
	w.SGE[0] = c.ring.SendHeaderSGE(s.index)
	switch {
	case inline:
		w.NumSGE = 2
		w.SGE[1] = c.mr.SGE(s.index*q.slotSize, int(s.req.Length))
		q.stats.AddInlineWrite()
	case s.req.Op == wire.OpOpen:
		w.NumSGE = 2
		w.SGE[1] = c.mr.SGE(s.index*q.slotSize, int(s.req.Length))
	case c.ep.MaxInlineData() >= wire.HeaderSize:
		w.Flags |= verbs.Inline
	}
	return n + 1
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
