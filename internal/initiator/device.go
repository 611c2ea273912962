package initiator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"rbd/internal/api"
	"rbd/internal/client"
	"rbd/internal/nbd"
	"rbd/internal/stats"
	"rbd/internal/wire"
)

// Device states.
const (
	StateConnecting   = "connecting"
	StateConnected    = "connected"
	StateReconnecting = "reconnecting" // a queue lost its connection; I/O waits
	StateFailed       = "failed"       // the connection to the target is gone for good
	StateRemoving     = "removing"
)

// DeviceStates are all the states, as rbd_device_state's state label has them.
var DeviceStates = []string{StateConnecting, StateConnected, StateReconnecting, StateFailed, StateRemoving}

// Device is one remote export shown as /dev/rbdiN (a link to /dev/nbdX),
// or served on an NBD Unix socket (socket.go), or both.
type Device struct {
	Num        int    // N of rbdiN
	Index      uint32 // X of nbdX
	TargetName string // as the user gave it
	Target     netip.AddrPort
	Export     string
	ReadOnly   bool
	Since      time.Time
	Stats      *stats.Counters

	log   *slog.Logger
	sess  *client.Session
	conns []*nbd.Conn // the kernel's sockets, one per queue
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup
	state atomic.Value // string
	why   atomic.Value // string
	pool  sync.Pool

	// kernel: the device has a kernel NBD device (/dev/nbdX, /dev/rbdiN);
	// sock serves its NBD socket (nil: none).
	kernel bool
	sock   *sockServer
}

// Name is the device's name, rbdiN.
func (d *Device) Name() string { return "rbdi" + itoa(d.Num) }

// Path is /dev/rbdiN ("" without a kernel device).
func (d *Device) Path() string {
	if !d.kernel {
		return ""
	}
	return "/dev/" + d.Name()
}

// NBDPath is /dev/nbdX ("" without a kernel device).
func (d *Device) NBDPath() string {
	if !d.kernel {
		return ""
	}
	return nbd.DevicePath(d.Index)
}

// Socket is the device's NBD socket ("" without one).
func (d *Device) Socket() string {
	if d.sock == nil {
		return ""
	}
	return d.sock.cfg.path
}

// ref is what rbdctl -r -d takes: /dev/rbdiN, or rbdiN without a kernel device.
func (d *Device) ref() string {
	if d.kernel {
		return d.Path()
	}
	return d.Name()
}

// String names the device in messages: /dev/rbdiN, or rbdiN and its socket.
func (d *Device) String() string {
	if d.kernel {
		return d.Path()
	}
	return d.Name() + " (NBD socket " + d.Socket() + ")"
}

// State is the device's state and, when failed or reconnecting, why. A
// connected device whose queue reconnects is reconnecting, with the attempt,
// since when, and the last error.
func (d *Device) State() (string, string) {
	s, _ := d.state.Load().(string)
	w, _ := d.why.Load().(string)
	if s == StateConnected && d.sess != nil {
		for _, q := range d.sess.Queues() {
			if qs := q.State(); qs.State == client.StateReconnecting {
				return StateReconnecting, fmt.Sprintf("queue %d: attempt %d, since %s, last error: %s",
					q.Index(), qs.Attempt, qs.Since.Format(time.RFC3339), qs.LastErr)
			}
		}
	}
	return s, w
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

// Info describes the device.
func (d *Device) Info() api.Device {
	st, why := d.State()
	s := d.sess
	qs := s.Queues()
	info := api.Device{Name: d.Name(), Path: d.Path(), NBD: d.NBDPath(), Target: d.TargetName, TargetAddr: d.Target.String(),
		Export: d.Export, State: st, Reason: why, Size: s.Export.Size, BlockSize: s.Export.LogicalBlockSize,
		ReadOnly: d.ReadOnly, Queues: len(qs), SlotSize: qs[0].SlotSize(), Inline: qs[0].Inline(), Since: d.Since}
	if d.sock != nil {
		info.NBDSocket = d.sock.cfg.path
		info.SocketClients = d.sock.clientCount()
	}
	return info
}

// request is one NBD request in flight, served in one or more chunks of at
// most a slot each. It is pooled, with its callbacks bound once.
type request struct {
	d      *Device
	conn   *nbd.Conn
	q      *client.Queue
	handle uint64
	op     wire.Op

	pending atomic.Int32
	status  atomic.Uint32
	slots   []*client.Slot
	comps   []client.Completion
	pieces  [][]byte

	chunkDone func(*client.Slot, client.Completion)
	replied   func()
}

func (d *Device) newRequest() *request {
	if r, ok := d.pool.Get().(*request); ok {
		return r
	}
	r := &request{d: d}
	r.chunkDone = r.onChunk
	r.replied = r.onReplied
	return r
}

// serve carries NBD requests from one NBD socket (the kernel's, or a socket
// client's) to one RDMA queue until the other end disconnects.
func (d *Device) serve(conn *nbd.Conn, q *client.Queue) {
	defer d.wg.Done()
	for {
		// Commands are staged and posted in one chain per burst of requests:
		// post the batch before a read that may wait.
		if conn.Buffered() < nbd.RequestSize {
			q.Kick()
		}
		r, err := conn.ReadRequest()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, nbd.ErrClosed) && d.ctx.Err() == nil {
				d.log.Warn("NBD socket", "queue", q.Index(), "err", err)
			}
			return
		}
		if errno := d.check(r); errno != 0 {
			conn.Reply(r.Handle, errno, nil, nil)
			continue
		}
		switch r.Type {
		case nbd.CmdDisc:
			return
		case nbd.CmdRead:
			d.read(conn, q, r)
		case nbd.CmdWrite:
			d.write(conn, q, r)
		case nbd.CmdFlush:
			d.simple(conn, q, r, wire.OpFlush, 0)
		case nbd.CmdTrim:
			d.simple(conn, q, r, wire.OpTrim, 0)
		case nbd.CmdWriteZeroes:
			var f uint8
			if r.Flags&nbd.CmdFlagNoHole != 0 {
				f = wire.FlagNoUnmap
			}
			d.simple(conn, q, r, wire.OpWriteZeroes, f)
		default:
			conn.Reply(r.Handle, nbd.EINVAL, nil, nil)
		}
	}
}

func errnoOf(st wire.Status) uint32 {
	if st == wire.StatusOK {
		return 0
	}
	if st == wire.StatusShutdown {
		return nbd.EIO
	}
	return nbd.ErrnoFor(st.Err())
}

func (d *Device) begin(conn *nbd.Conn, q *client.Queue, handle uint64, op wire.Op, chunks int) *request {
	r := d.newRequest()
	r.conn, r.q, r.handle, r.op = conn, q, handle, op
	r.status.Store(0)
	r.pending.Store(int32(chunks))
	r.slots = r.slots[:0]
	r.comps = r.comps[:0]
	r.pieces = r.pieces[:0]
	return r
}

func (r *request) fail(st wire.Status) {
	r.status.CompareAndSwap(0, uint32(st))
}

// acquire takes a slot of q or fails the request when the queue is gone.
// Before it waits for a slot, the staged commands go out (they hold slots).
func (d *Device) acquire(q *client.Queue) (*client.Slot, error) {
	if s := q.TryAcquire(); s != nil {
		return s, nil
	}
	q.Kick()
	return q.Acquire(d.ctx)
}

// simple sends a command without data (FLUSH, TRIM, WRITE_ZEROES).
func (d *Device) simple(conn *nbd.Conn, q *client.Queue, nr nbd.Request, op wire.Op, flags uint8) {
	r := d.begin(conn, q, nr.Handle, op, 1)
	s, err := d.acquire(q)
	if err != nil {
		r.finishEarly(wire.StatusShutdown, 1)
		return
	}
	if err := s.Stage(op, flags, nr.Offset, nr.Length, r.chunkDone); err != nil {
		s.Release()
		r.finishEarly(wire.StatusShutdown, 1)
	}
}

// write reads the payload chunk by chunk straight into slots (the only copy)
// and sends each chunk as it is complete.
func (d *Device) write(conn *nbd.Conn, q *client.Queue, nr nbd.Request) {
	chunk := q.SlotSize()
	n := max(1, (int(nr.Length)+chunk-1)/chunk)
	r := d.begin(conn, q, nr.Handle, wire.OpWrite, n)
	var flags uint8
	if nr.Flags&nbd.CmdFlagFUA != 0 {
		flags = wire.FlagFUA
	}
	for k := range n {
		off := k * chunk
		l := min(chunk, int(nr.Length)-off)
		s, err := d.acquire(q)
		if err != nil {
			r.finishEarly(wire.StatusShutdown, n-k)
			return
		}
		if conn.Buffered() < l {
			q.Kick()
		}
		if err := conn.ReadPayload(s.Buf[:l]); err != nil {
			s.Release()
			r.finishEarly(wire.StatusShutdown, n-k)
			return
		}
		if err := s.Stage(wire.OpWrite, flags, nr.Offset+uint64(off), uint32(l), r.chunkDone); err != nil {
			s.Release()
			r.finishEarly(wire.StatusShutdown, n-k)
			return
		}
	}
}

// read sends the chunks of a READ; the reply goes out, header and data in
// order, when all have come back. The data is written to the NBD socket
// straight from the slots (or inline receive buffers).
func (d *Device) read(conn *nbd.Conn, q *client.Queue, nr nbd.Request) {
	chunk := q.SlotSize()
	n := max(1, (int(nr.Length)+chunk-1)/chunk)
	if n > q.Depth()/2 {
		q.Kick()
		d.bigRead(conn, q, nr)
		return
	}
	r := d.begin(conn, q, nr.Handle, wire.OpRead, n)
	// take every slot first, so that the request's slices are complete
	// before the poller may look at them
	for range n {
		s, err := d.acquire(q)
		if err != nil {
			for _, s := range r.slots {
				s.Release()
			}
			r.slots = r.slots[:0]
			r.finishEarly(wire.StatusShutdown, n)
			return
		}
		r.slots = append(r.slots, s)
		r.comps = append(r.comps, client.Completion{})
		r.pieces = append(r.pieces, nil)
	}
	for k, s := range r.slots {
		off := k * chunk
		l := min(chunk, int(nr.Length)-off)
		if err := s.Stage(wire.OpRead, 0, nr.Offset+uint64(off), uint32(l), r.chunkDone); err != nil {
			r.finishEarly(wire.StatusShutdown, n-k)
			return
		}
	}
}

// onChunk runs in the queue's loop when a chunk completes.
func (r *request) onChunk(s *client.Slot, c client.Completion) {
	if c.Status != wire.StatusOK {
		r.fail(c.Status)
	}
	if r.op == wire.OpRead {
		for k, hs := range r.slots {
			if hs == s {
				r.comps[k] = c
				r.pieces[k] = c.Data
				break
			}
		}
	} else {
		s.Release()
	}
	if r.pending.Add(-1) == 0 {
		r.reply(true)
	}
}

// finishEarly accounts for chunks that were never sent (in the NBD reader).
func (r *request) finishEarly(st wire.Status, unsent int) {
	r.fail(st)
	if r.pending.Add(-int32(unsent)) == 0 {
		r.reply(false)
	}
}

// reply answers the NBD request. From the queue's loop (deferred) the reply
// only joins the socket's queue: the loop flushes it with the rest of its
// batch, one writev (Queue.SetBatchEnd); elsewhere the writer goroutine
// sends it.
func (r *request) reply(deferred bool) {
	st := wire.Status(r.status.Load())
	var err error
	switch {
	case r.op == wire.OpRead && st == wire.StatusOK && deferred:
		err = r.conn.QueueReplyV(r.handle, 0, r.pieces, r.replied)
	case r.op == wire.OpRead && st == wire.StatusOK:
		err = r.conn.ReplyV(r.handle, 0, r.pieces, r.replied)
	case deferred:
		err = r.conn.QueueReply(r.handle, errnoOf(st), nil, r.replied)
	default:
		err = r.conn.Reply(r.handle, errnoOf(st), nil, r.replied)
	}
	if err != nil { // the socket is gone: nobody will call back
		r.onReplied()
	}
}

// onReplied runs once the reply is on the socket: the slots and receive
// buffers of a READ are free again.
func (r *request) onReplied() {
	for k := range r.comps {
		r.comps[k].Release()
	}
	for _, s := range r.slots {
		s.Release()
	}
	clear(r.pieces)
	clear(r.slots)
	clear(r.comps)
	r.conn, r.q = nil, nil
	r.d.pool.Put(r)
}

// bigRead serves a READ larger than half the queue's slots can hold at once
// (only when max_sectors_kb was raised past the slot size): it is fetched in
// windows and assembled in memory (one copy), so that it cannot starve the
// queue of slots.
func (d *Device) bigRead(conn *nbd.Conn, q *client.Queue, nr nbd.Request) {
	chunk := q.SlotSize()
	buf := make([]byte, nr.Length)
	window := max(1, q.Depth()/2)
	st := wire.StatusOK
	type res struct {
		k int
		c client.Completion
	}
	for first := 0; first < len(buf) && st == wire.StatusOK; first += window * chunk {
		ch := make(chan res, window)
		sent := 0
		for off := first; off < len(buf) && off < first+window*chunk; off += chunk {
			l := min(chunk, len(buf)-off)
			s, err := d.acquire(q)
			if err != nil {
				st = wire.StatusShutdown
				break
			}
			k := off
			if err := s.Submit(wire.OpRead, 0, nr.Offset+uint64(off), uint32(l), func(s *client.Slot, c client.Completion) {
				if c.Status == wire.StatusOK {
					copy(buf[k:], c.Data)
				}
				c.Release()
				s.Release()
				ch <- res{k, c}
			}); err != nil {
				s.Release()
				st = wire.StatusShutdown
				break
			}
			sent++
		}
		for range sent {
			if r := <-ch; r.c.Status != wire.StatusOK && st == wire.StatusOK {
				st = r.c.Status
			}
		}
	}
	if st != wire.StatusOK {
		conn.Reply(nr.Handle, errnoOf(st), nil, nil)
		return
	}
	conn.Reply(nr.Handle, 0, buf, nil)
}
