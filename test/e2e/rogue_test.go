package e2e

// Hostile initiators against an in-process rbdt: a raw initiator built on
// internal/verbs and internal/wire (not internal/client) sends whatever bytes
// and RDMA work requests it likes, while a legitimate session does verified
// writes and reads the whole time. docs/security.md cites these tests.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"rbd/internal/client"
	"rbd/internal/target"
	"rbd/internal/verbs"
	"rbd/internal/wire"
)

// ---- the target, with its log recorded

// rogueLog records the target's log (debug level), so that a test can check
// why the target dropped a connection; it is printed when the test fails.
type rogueLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *rogueLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *rogueLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// waitLine waits until a log line holds every one of the substrings.
func (l *rogueLog) waitLine(d time.Duration, subs ...string) (string, bool) {
	deadline := time.Now().Add(d)
	for {
		for _, line := range strings.Split(l.String(), "\n") {
			ok := true
			for _, s := range subs {
				if !strings.Contains(line, s) {
					ok = false
					break
				}
			}
			if ok {
				return line, true
			}
		}
		if time.Now().After(deadline) {
			return "", false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ---- the raw initiator

const (
	rogueRecvs    = 32
	rogueRecvSize = wire.HeaderSize + 8192 // a reply: header + inline data or OPEN reply
	rogueSends    = 32
	rogueSendSize = wire.HeaderSize + 16384 // a request: header + payload, larger than the target's receive
	rogueLocal    = 1 << 20                 // RDMA source and sink
	rogueIDRecv   = 1 << 40
	rogueIDSend   = 2 << 40
	rogueIDRDMA   = 3 << 40
)

// rogueMsg is a message the target sent.
type rogueMsg struct {
	rep  wire.Reply
	err  error // the header did not decode
	data []byte
}

type rogue struct {
	t       testing.TB
	ep      *verbs.Endpoint
	acc     wire.Accept
	msgs    *verbs.Buffer
	msgMR   *verbs.MR
	local   *verbs.Buffer
	localMR *verbs.MR

	replies chan rogueMsg
	wcs     chan verbs.WC // send-queue completions and failed receives
	gone    chan struct{} // closed at the first terminal rdma_cm event
	goneEv  atomic.Int32  // that event
	stopped chan struct{} // the poller returned

	// epMu orders the events goroutine's Disconnect before Close: verbs'
	// Disconnect must not run while Close destroys the QP.
	epMu     sync.Mutex
	closed   bool
	lastSend uint64
	next     int
	wrID     uint64
	stash    map[uint64]rogueMsg // replies read while waiting for another
	wcStash  []verbs.WC
	session  wire.SessionID
	opened   bool
	closeOne sync.Once
}

// connectData is the private data of a well-formed connect request.
func connectData(depth uint16, maxIO, inline uint32) []byte {
	b := make([]byte, wire.ConnectSize)
	// the rogue speaks version 1: it fetches READ data itself with RDMA READ
	(&wire.Connect{MinVersion: 1, MaxVersion: 1, QueueDepth: depth, MaxIO: maxIO, InlineMax: inline}).Encode(b)
	return b
}

// dialRogueErr connects with the given private data; the target's reject is
// returned as the error (a *verbs.RejectedError inside).
func dialRogueErr(t testing.TB, to netip.AddrPort, pd []byte) (*rogue, error) {
	return dialRogueFor(t, to, func(*rogue) []byte { return pd })
}

// dialRogueFor is dialRogueErr with private data made once the rogue's
// memory is registered (a version-2 request names its slot region).
func dialRogueFor(t testing.TB, to netip.AddrPort, pdFor func(r *rogue) []byte) (*rogue, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id, err := verbs.Resolve(ctx, netip.AddrPort{}, to)
	if err != nil {
		return nil, err
	}
	r := &rogue{t: t, replies: make(chan rogueMsg, 256), wcs: make(chan verbs.WC, 1024), gone: make(chan struct{}),
		stopped: make(chan struct{}), stash: map[uint64]rogueMsg{}}
	r.ep, err = verbs.NewEndpoint(id, verbs.EndpointConfig{QP: verbs.QPCaps{
		MaxSendWR: 128, MaxRecvWR: rogueRecvs, MaxSendSGE: 2, MaxRecvSGE: 1}})
	if err != nil {
		id.Close()
		return nil, err
	}
	fail := func(err error) (*rogue, error) {
		r.ep.Close()
		for _, b := range []*verbs.Buffer{r.msgs, r.local} {
			if b != nil {
				b.Close()
			}
		}
		return nil, err
	}
	if r.msgs, err = verbs.AllocBuffer(rogueRecvs*rogueRecvSize + rogueSends*rogueSendSize); err != nil {
		return fail(err)
	}
	if r.msgMR, err = r.ep.Register(r.msgs, verbs.AccessLocalWrite); err != nil {
		return fail(err)
	}
	if r.local, err = verbs.AllocBuffer(rogueLocal); err != nil {
		return fail(err)
	}
	if r.localMR, err = r.ep.Register(r.local, verbs.AccessLocalWrite|verbs.AccessRemoteWrite|verbs.AccessRemoteRead); err != nil {
		return fail(err)
	}
	wrs := make([]verbs.RecvWR, rogueRecvs)
	for i := range wrs {
		wrs[i] = r.recvWR(i)
	}
	if _, err := r.ep.QP.PostRecv(wrs); err != nil {
		return fail(err)
	}
	ev, err := r.ep.ID.Connect(ctx, verbs.ConnParam{PrivateData: pdFor(r), InitiatorDepth: 16, RetryCount: 7, RNRRetryCount: 7})
	if err != nil {
		return fail(err)
	}
	if r.acc, err = wire.DecodeAccept(ev.PrivateData); err != nil {
		return fail(fmt.Errorf("accept private data: %w", err))
	}
	go r.events()
	go r.poll()
	if os.Getenv("RBD_TEST_TRANSPORT") == "siw" {
		// siw (Linux 6.1) sends the MPA reply before it hands the target's
		// socket to the QP (siw_accept: siw_send_mpareqrep, then
		// siw_qp_socket_assoc): a first message sent at once can sit unread
		// in the target's socket until more data or the FIN arrives.
		time.Sleep(50 * time.Millisecond)
	}
	return r, nil
}

// dialRogue connects with well-formed private data (depth 4, 64 KiB slots,
// 4 KiB inline) or the given one, and fails the test when refused.
func dialRogue(t testing.TB, to netip.AddrPort, pd []byte) *rogue {
	t.Helper()
	if pd == nil {
		pd = connectData(4, 64<<10, 4096)
	}
	r, err := dialRogueErr(t, to, pd)
	if err != nil {
		t.Fatalf("rogue connect: %v", err)
	}
	t.Cleanup(r.close)
	return r
}

func (r *rogue) recvWR(i int) verbs.RecvWR {
	w := verbs.RecvWR{ID: rogueIDRecv | uint64(i), NumSGE: 1}
	w.SGE[0] = r.msgMR.SGE(i*rogueRecvSize, rogueRecvSize)
	return w
}

// events watches the connection: a terminal event (DISCONNECTED) closes gone
// and disconnects this side too, so that the QP flushes.
func (r *rogue) events() {
	for {
		ev, err := r.ep.ID.NextEvent(context.Background())
		if err != nil {
			return
		}
		if ev.Type.Terminal() {
			r.goneEv.Store(int32(ev.Type))
			r.epMu.Lock()
			if !r.closed {
				r.ep.ID.Disconnect()
			}
			r.epMu.Unlock()
			close(r.gone)
			return
		}
	}
}

func (r *rogue) poll() {
	defer close(r.stopped)
	wcs := make([]verbs.WC, 32)
	for {
		n, err := r.ep.CQ.Wait(context.Background(), wcs)
		if err != nil {
			return
		}
		for _, wc := range wcs[:n] {
			if wc.ID&^0xffff == rogueIDRecv && wc.Status == verbs.WCSuccess {
				i := int(wc.ID & 0xffff)
				b := r.msgMR.Bytes()[i*rogueRecvSize : i*rogueRecvSize+int(wc.ByteLen)]
				var m rogueMsg
				m.rep, m.err = wire.DecodeReply(b)
				if len(b) > wire.HeaderSize {
					m.data = append([]byte(nil), b[wire.HeaderSize:]...)
				}
				r.ep.QP.PostRecv([]verbs.RecvWR{r.recvWR(i)})
				select {
				case r.replies <- m:
				default:
				}
				continue
			}
			select {
			case r.wcs <- wc:
			default:
			}
		}
	}
}

// alive reports whether no terminal event came yet.
func (r *rogue) alive() bool {
	select {
	case <-r.gone:
		return false
	default:
		return true
	}
}

// sendWR copies a message into the next send buffer and returns its SEND.
func (r *rogue) sendWR(msg []byte) verbs.SendWR {
	if len(msg) > rogueSendSize {
		panic("rogue message too large")
	}
	off := rogueRecvs*rogueRecvSize + r.next*rogueSendSize
	r.next = (r.next + 1) % rogueSends
	copy(r.msgMR.Bytes()[off:], msg)
	r.wrID++
	// solicited, as rbdi's commands are: a version-2+ target's loop sleeps
	// for solicited messages only (protocol.md), so an unsolicited OPEN of a
	// version-3 rogue would wait for the target's next wake-up
	w := verbs.SendWR{ID: rogueIDSend | r.wrID&0xffff, Op: verbs.OpSend, Flags: verbs.Signaled | verbs.Solicited}
	if len(msg) > 0 {
		w.NumSGE = 1
		w.SGE[0] = r.msgMR.SGE(off, len(msg))
	}
	return w
}

// rdmaWR is an RDMA READ or WRITE of n bytes between local offset loff and
// the target's address raddr in the region of rkey.
func (r *rogue) rdmaWR(op verbs.Opcode, raddr uint64, rkey uint32, loff, n int) verbs.SendWR {
	r.wrID++
	w := verbs.SendWR{ID: rogueIDRDMA | r.wrID&0xffff, Op: op, Flags: verbs.Signaled, NumSGE: 1, RemoteAddr: raddr, RKey: rkey}
	w.SGE[0] = r.localMR.SGE(loff, n)
	return w
}

func (r *rogue) post(wrs ...verbs.SendWR) {
	r.t.Helper()
	if _, err := r.ep.QP.PostSend(wrs); err != nil {
		r.t.Fatalf("rogue PostSend: %v", err)
	}
}

// msg is a request header followed by a payload.
func msg(q wire.Request, payload []byte) []byte {
	b := make([]byte, wire.HeaderSize+len(payload))
	q.Encode(b)
	copy(b[wire.HeaderSize:], payload)
	return b
}

// waitWC waits for the completion of work request id.
func (r *rogue) waitWC(id uint64) verbs.WC {
	r.t.Helper()
	for k, wc := range r.wcStash {
		if wc.ID == id {
			r.wcStash = append(r.wcStash[:k], r.wcStash[k+1:]...)
			return wc
		}
	}
	tmo := time.After(20 * time.Second)
	for {
		select {
		case wc := <-r.wcs:
			if wc.ID == id {
				return wc
			}
			r.wcStash = append(r.wcStash, wc)
		case <-tmo:
			r.t.Fatalf("no completion for work request %#x", id)
		}
	}
}

// waitReply waits for the reply with this handle.
func (r *rogue) waitReply(handle uint64) rogueMsg {
	r.t.Helper()
	if m, ok := r.stash[handle]; ok {
		delete(r.stash, handle)
		return m
	}
	tmo := time.After(20 * time.Second)
	for {
		select {
		case m := <-r.replies:
			if m.err != nil {
				r.t.Fatalf("target sent a bad reply header: %v", m.err)
			}
			if m.rep.Handle == handle {
				return m
			}
			r.stash[m.rep.Handle] = m
		case <-r.gone:
			// replies that came before the end still count
			select {
			case m := <-r.replies:
				if m.rep.Handle == handle {
					return m
				}
				r.stash[m.rep.Handle] = m
				continue
			default:
			}
			r.t.Fatalf("the target dropped the connection (%s) instead of replying to handle %#x", verbs.CMEventType(r.goneEv.Load()), handle)
		case <-tmo:
			r.t.Fatalf("no reply for handle %#x (%s)", handle, r.sendState())
		}
	}
}

// cmd sends a request (with payload) and waits for its reply.
func (r *rogue) cmd(q wire.Request, payload []byte) rogueMsg {
	r.t.Helper()
	w := r.sendWR(msg(q, payload))
	r.post(w)
	r.lastSend = w.ID
	return r.waitReply(q.Handle)
}

// sendState says whether the last SEND of cmd completed (for diagnostics).
func (r *rogue) sendState() string {
	for {
		select {
		case wc := <-r.wcs:
			r.wcStash = append(r.wcStash, wc)
			continue
		default:
		}
		break
	}
	for _, wc := range r.wcStash {
		if wc.ID == r.lastSend {
			return "its SEND completed: " + wc.Status.String()
		}
	}
	return "its SEND did not complete"
}

var rogueHandle atomic.Uint64

func newHandle() uint64 { return rogueHandle.Add(1) | 0xabc0_0000_0000 }

// openPayload encodes an OPEN payload for a new random session.
func openPayload(name string, flags uint32) (wire.SessionID, []byte) {
	var sid wire.SessionID
	rand.Read(sid[:])
	b := make([]byte, wire.MinDataArea)
	n, err := (&wire.Open{Session: sid, Queue: 0, Queues: 1, Flags: flags, ExportName: name}).Encode(b)
	if err != nil {
		panic(err)
	}
	return sid, b[:n]
}

// open sends OPEN and returns the status and the decoded reply.
func (r *rogue) open(name string, flags uint32) (wire.Status, wire.OpenReply) {
	r.t.Helper()
	sid, p := openPayload(name, flags)
	m := r.cmd(wire.Request{Op: wire.OpOpen, Length: uint32(len(p)), Handle: newHandle()}, p)
	rep, err := wire.DecodeOpenReply(m.data, m.rep.Status == wire.StatusOK)
	if err != nil {
		r.t.Fatalf("OPEN %s: bad reply payload: %v", name, err)
	}
	if m.rep.Status == wire.StatusOK {
		r.session, r.opened = sid, true
	}
	return m.rep.Status, rep
}

func (r *rogue) mustOpen(name string, flags uint32) wire.OpenReply {
	r.t.Helper()
	st, rep := r.open(name, flags)
	if st != wire.StatusOK {
		r.t.Fatalf("OPEN %s: %v: %s", name, st, rep.Message)
	}
	return rep
}

// waitGone waits until the target dropped the connection: a DISCONNECTED
// event, then the QP's posted receives flushed.
func (r *rogue) waitGone(t testing.TB) (verbs.CMEventType, verbs.WC) {
	t.Helper()
	select {
	case <-r.gone:
	case <-time.After(20 * time.Second):
		t.Fatal("the target did not drop the connection")
	}
	ev := verbs.CMEventType(r.goneEv.Load())
	for _, wc := range r.wcStash {
		if wc.Status != verbs.WCSuccess {
			return ev, wc
		}
	}
	tmo := time.After(20 * time.Second)
	for {
		select {
		case wc := <-r.wcs:
			if wc.Status != verbs.WCSuccess {
				return ev, wc
			}
		case <-tmo:
			t.Fatalf("%s, but the QP flushed nothing", ev)
		}
	}
}

// close tears the connection down abruptly (no DISCONNECT request).
func (r *rogue) close() {
	r.closeOne.Do(func() {
		r.epMu.Lock()
		r.closed = true
		r.ep.Close()
		r.epMu.Unlock()
		select {
		case <-r.stopped:
		case <-time.After(10 * time.Second):
			r.t.Errorf("rogue poller still running after Close")
			return
		}
		r.msgs.Close()
		r.local.Close()
	})
}

// closeAndWait closes and waits until the target ended the rogue's session.
func (r *rogue) closeAndWait(t testing.TB, srv *target.Server) {
	t.Helper()
	r.close()
	if r.opened {
		waitSessionGone(t, srv, r.session)
	}
}

func waitSessionGone(t testing.TB, srv *target.Server, sid wire.SessionID) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for hasSession(srv, sid) {
		if time.Now().After(deadline) {
			t.Fatalf("session %s still open on the target", sid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func hasSession(srv *target.Server, sid wire.SessionID) bool {
	for _, s := range srv.Sessions() {
		if s.ID == target.SessionTag(sid) { // sessions are listed by tag, not id
			return true
		}
	}
	return false
}

// peerTag is how the target's log names this connection's peer.
func (r *rogue) peerTag() string { return "peer=" + r.ep.ID.LocalAddr().String() }

// ---- the legitimate session

// legit does verified writes and reads on a session until stopped.
type legit struct {
	s    *client.Session
	ops  atomic.Int64
	mu   sync.Mutex
	err  error
	stop chan struct{}
	done chan struct{}
}

func startLegit(t *testing.T, s *client.Session) *legit {
	l := &legit{s: s, stop: make(chan struct{}), done: make(chan struct{})}
	go l.run()
	t.Cleanup(func() {
		l.halt()
		if err := l.error(); err != nil {
			t.Errorf("legit session: %v", err)
		}
		t.Logf("legit session: %d verified write+read pairs", l.ops.Load())
	})
	return l
}

func (l *legit) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
}

func (l *legit) error() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

func (l *legit) run() {
	defer close(l.done)
	qs := l.s.Queues()
	sizes := []int{4096, 512, 65536, 12288, qs[0].SlotSize()}
	for k := 0; ; k++ {
		select {
		case <-l.stop:
			return
		default:
		}
		q := qs[k%len(qs)]
		size := sizes[k%len(sizes)]
		off := uint64(k%128) * uint64(qs[0].SlotSize()) // the first 16 MiB of the export
		data := random(size)
		err := func() error {
			if _, st, err := clientIO(q, wire.OpWrite, off, data, 0); err != nil || st != wire.StatusOK {
				return fmt.Errorf("write %d at %d: %v %v", size, off, st, err)
			}
			got, st, err := clientIO(qs[(k+1)%len(qs)], wire.OpRead, off, nil, size)
			if err != nil || st != wire.StatusOK {
				return fmt.Errorf("read %d at %d: %v %v", size, off, st, err)
			}
			if !bytes.Equal(got, data) {
				return fmt.Errorf("read %d at %d: other data than written", size, off)
			}
			return nil
		}()
		if err != nil {
			l.mu.Lock()
			l.err = err
			l.mu.Unlock()
			return
		}
		l.ops.Add(1)
		time.Sleep(2 * time.Millisecond)
	}
}

// check fails the test unless the session is still doing verified I/O.
func (l *legit) check(t testing.TB) {
	t.Helper()
	n0 := l.ops.Load()
	deadline := time.Now().Add(30 * time.Second)
	for l.ops.Load() < n0+2 {
		if err := l.error(); err != nil {
			t.Fatalf("legit session: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("legit session: no progress in 30 s (%d pairs)", l.ops.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// clientIO is do() returning errors instead of failing (for goroutines).
func clientIO(q *client.Queue, op wire.Op, off uint64, data []byte, length int) ([]byte, wire.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := q.Acquire(ctx)
	if err != nil {
		return nil, 0, err
	}
	if op == wire.OpWrite {
		copy(s.Buf, data)
		length = len(data)
	}
	type res struct {
		st   wire.Status
		data []byte
	}
	ch := make(chan res, 1)
	err = s.Submit(op, 0, off, uint32(length), func(_ *client.Slot, c client.Completion) {
		d := append([]byte(nil), c.Data...)
		c.Release()
		ch <- res{c.Status, d}
	})
	if err != nil {
		s.Release()
		return nil, 0, err
	}
	select {
	case r := <-ch:
		s.Release()
		return r.data, r.st, nil
	case <-ctx.Done():
		return nil, 0, fmt.Errorf("%s at %d: no completion", op, off)
	}
}

// ---- helpers

func openFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// waitFDs waits until the process has n open files again: every endpoint of
// both sides (event channels, completion channels) was freed.
func waitFDs(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := openFDs(t)
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("open files: %d, want %d (a leak); gone since the count was taken: %v; new: %v", got, n, fdDiff(fdSeen, fdTargets()), fdDiff(fdTargets(), fdSeen))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// probe proves the target still takes new connections: connect, OPEN
// read-only, KEEPALIVE, and a READ through a slot fetched with RDMA READ.
func probe(t testing.TB, srv *target.Server, to netip.AddrPort) {
	t.Helper()
	r := dialRogue(t, to, nil)
	r.mustOpen("/dev/ram1", wire.OpenReadOnly)
	if m := r.cmd(wire.Request{Op: wire.OpKeepAlive, Handle: newHandle()}, nil); m.rep.Status != wire.StatusOK {
		t.Fatalf("probe KEEPALIVE: %v", m.rep.Status)
	}
	if m := r.cmd(wire.Request{Op: wire.OpRead, Slot: 1, Length: 4096, Handle: newHandle()}, nil); m.rep.Status != wire.StatusOK {
		t.Fatalf("probe READ: %v", m.rep.Status)
	}
	w := r.rdmaWR(verbs.OpRDMARead, r.acc.SlotAddr+uint64(r.acc.SlotSize), r.acc.SlotRKey, 0, 4096)
	r.post(w)
	if wc := r.waitWC(w.ID); wc.Status != verbs.WCSuccess {
		t.Fatalf("probe RDMA READ of its own slot: %v", wc.Err())
	}
	r.closeAndWait(t, srv)
}

// stableFDs waits until the number of open files stops changing (the target
// frees a connection shortly after its peer saw it end) and returns it.
func stableFDs(t testing.TB) int {
	t.Helper()
	n, since := openFDs(t), time.Now()
	for time.Since(since) < 500*time.Millisecond {
		time.Sleep(20 * time.Millisecond)
		if m := openFDs(t); m != n {
			n, since = m, time.Now()
		}
	}
	fdSeen = fdTargets()
	return n
}

// fdSeen: the open files when stableFDs counted them, for waitFDs to name
// what differs.
var fdSeen []string

// fdTargets lists the process's open files as "fd:target".
func fdTargets() []string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		out = append(out, e.Name()+":"+l)
	}
	return out
}

// fdDiff returns what a has and b lacks.
func fdDiff(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// ---- the tests

// TestRogue runs every hostile initiator against one target while a
// legitimate session does verified I/O on /dev/ram1 the whole time.
func TestRogue(t *testing.T) {
	cfg := target.Config{Exports: []target.ExportConfig{
		{Path: "/dev/ram1"},                 // the legitimate session's
		{Path: "/dev/ram2"},                 // the rogues' read-write export
		{Path: "/dev/ram3", ReadOnly: true}, // read-only
	}}
	// Over rxe one target takes every group in turn, beside one legitimate
	// session. Linux 6.1's siw loses a reference of its listening endpoint
	// under this churn now and then (a refcount underflow WARN in
	// siw_destroy_listen when the listener is closed; until then the kernel
	// refuses every connect to the port, and the target never hears of it),
	// so over siw each group gets a target and a legitimate session of its
	// own (one at a time: a target opens its backends exclusively).
	transport, _, _ := env(t)
	if transport == "siw" {
		// Even with a target per group, siw's listener now and then stays
		// broken (see above) and a group waits for ever for connections the
		// kernel never completes (CI, 2026-12-01: violation burst hung until
		// the package timeout). The cases are about the target's handling
		// of what arrives, above the transport: soft-RoCE runs them.
		t.Skip("Linux 6.1 siw loses its listener under this connection churn; the rogue suite runs over soft-RoCE")
	}
	shared := transport != "siw"
	type world struct {
		srv  *target.Server
		to   netip.AddrPort
		tlog *rogueLog
		s    *client.Session
		lg   *legit
	}
	start := func(t *testing.T) world {
		var w world
		w.srv, w.to, w.tlog = startTargetConfig(t, cfg)
		w.s = dialSession(t, w.to, "/dev/ram1", 2)
		w.lg = startLegit(t, w.s)
		t.Cleanup(func() { w.lg.halt(); w.s.Close() })
		return w
	}
	var main world
	var fd0 int
	if shared {
		main = start(t)
		// warm up what libibverbs and librdmacm open once per process, then count
		probe(t, main.srv, main.to)
		fd0 = stableFDs(t)
	}
	group := func(name string, fn func(t *testing.T, w world)) {
		t.Run(name, func(t *testing.T) {
			if shared {
				fn(t, main)
				return
			}
			w := start(t)
			fn(t, w)
			w.lg.check(t)
		})
	}
	group("connect", func(t *testing.T, w world) { rogueConnect(t, w.to) })
	if shared {
		waitFDs(t, fd0)
		main.lg.check(t)
	}
	group("violation", func(t *testing.T, w world) { rogueViolations(t, w.srv, w.to, w.tlog, w.lg) })
	group("violation burst", func(t *testing.T, w world) { rogueViolationBurst(t, w.srv, w.to, w.lg) })
	group("command", func(t *testing.T, w world) { rogueCommands(t, w.srv, w.to, w.lg) })
	group("open", func(t *testing.T, w world) { rogueOpens(t, w.srv, w.to) })
	group("memory", func(t *testing.T, w world) { rogueMemory(t, w.srv, w.to, w.lg) })
	group("abrupt", func(t *testing.T, w world) { rogueAbrupt(t, w.srv, w.to, w.lg) })
	if !shared {
		return
	}
	main.lg.check(t)
	waitFDs(t, fd0)
	if ss := main.srv.Sessions(); len(ss) != 1 || ss[0].ID != target.SessionTag(main.s.ID) {
		t.Fatalf("sessions left on the target: %+v", ss)
	}
}

// rogueConnect: malformed connect requests are refused with an rbd reject
// that says why; wishes beyond the target's limits are capped.
func rogueConnect(t *testing.T, to netip.AddrPort) {
	good := func(mut func(b []byte)) []byte {
		b := connectData(4, 64<<10, 4096)
		mut(b)
		return b
	}
	withConnect := func(c wire.Connect) []byte {
		b := make([]byte, wire.ConnectSize)
		c.Encode(b)
		return b
	}
	// InfiniBand and RoCE pad a connect request's private data with zeroes to
	// 56 bytes, iWARP does not: a short request is "too short" on siw and
	// reads as zeroes (no magic, or zero fields) on rxe.
	for _, tc := range []struct {
		name   string
		pd     []byte
		reason wire.RejectReason
		msg    []string // the reject message holds one of these
	}{
		{"empty", nil, wire.RejectBadRequest, []string{"too short", "bad magic"}},
		{"one byte", []byte{0x52}, wire.RejectBadRequest, []string{"too short", "bad magic"}},
		{"too short", connectData(4, 64<<10, 4096)[:12], wire.RejectBadRequest, []string{"too short", "max I/O 0"}},
		{"wrong magic", good(func(b []byte) { copy(b, "RBDX") }), wire.RejectBadRequest, []string{"bad magic"}},
		{"accept magic", good(func(b []byte) { copy(b, "RBDA") }), wire.RejectBadRequest, []string{"bad magic"}},
		{"reserved not zero", good(func(b []byte) { b[10] = 1 }), wire.RejectBadRequest, []string{"reserved field not zero"}},
		{"version 0", withConnect(wire.Connect{MinVersion: 0, MaxVersion: 0, QueueDepth: 4, MaxIO: 4096}), wire.RejectBadRequest, []string{"version range 0..0"}},
		{"version range inverted", withConnect(wire.Connect{MinVersion: 3, MaxVersion: 2, QueueDepth: 4, MaxIO: 4096}), wire.RejectBadRequest, []string{"version range 3..2"}},
		{"no common version", withConnect(wire.Connect{MinVersion: 200, MaxVersion: 200, QueueDepth: 4, MaxIO: 4096}), wire.RejectVersion, []string{fmt.Sprintf("versions %d..%d, the initiator 200..200", wire.MinVersion, wire.MaxVersion)}},
		{"version 2 without a slot region", withConnect(wire.Connect{MinVersion: 2, MaxVersion: 2, QueueDepth: 4, MaxIO: 4096}), wire.RejectVersion, []string{"slot region"}},
		{"zero queue depth", connectData(0, 64<<10, 4096), wire.RejectBadRequest, []string{"queue depth 0"}},
		{"zero slot size", connectData(4, 0, 4096), wire.RejectBadRequest, []string{"max I/O 0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := dialRogueErr(t, to, tc.pd)
			if err == nil {
				r.close()
				t.Fatal("connect request accepted")
			}
			var rej *verbs.RejectedError
			if !errors.As(err, &rej) {
				t.Fatalf("want a reject, got %v", err)
			}
			rj, ok := wire.DecodeReject(rej.PrivateData)
			if !ok {
				t.Fatalf("not an rbd reject: status %d, private data %q", rej.Status, rej.PrivateData)
			}
			if rj.Reason != tc.reason || rj.MinVersion != wire.MinVersion || rj.MaxVersion != wire.MaxVersion {
				t.Fatalf("reject: want reason %q, got %q (versions %d..%d): %s", tc.reason, rj.Reason, rj.MinVersion, rj.MaxVersion, rj.Message)
			}
			found := false
			for _, m := range tc.msg {
				found = found || strings.Contains(rj.Message, m)
			}
			if !found {
				t.Fatalf("reject message %q names none of %q", rj.Message, tc.msg)
			}
			t.Logf("%s: %s", rj.Reason, rj.Message)
		})
	}
	for _, tc := range []struct {
		name                     string
		pd                       []byte
		depth, slot, inline, ver int
	}{
		{"huge wishes are capped", withConnect(wire.Connect{MinVersion: 1, MaxVersion: 255, QueueDepth: 65535, MaxIO: 1<<32 - 1, InlineMax: 1<<32 - 1}),
			target.DefaultQueueDepth, target.DefaultSlotSize, target.DefaultInline, 1},
		{"tiny wishes", withConnect(wire.Connect{MinVersion: 1, MaxVersion: 1, QueueDepth: 1, MaxIO: 1, InlineMax: 0}), 1, 4096, 0, 1},
		{"padding and trailing bytes are ignored", append(connectData(4, 64<<10, 4096), bytes.Repeat([]byte{0xff}, 36)...), 4, 64 << 10, 4096, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := dialRogueErr(t, to, tc.pd)
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			defer r.close()
			a := r.acc
			if int(a.Depth) != tc.depth || int(a.SlotSize) != tc.slot || int(a.InlineMax) != tc.inline || int(a.Version) != tc.ver {
				t.Fatalf("granted depth %d, slot %d, inline %d, version %d; want %d, %d, %d, %d",
					a.Depth, a.SlotSize, a.InlineMax, a.Version, tc.depth, tc.slot, tc.inline, tc.ver)
			}
		})
	}
}

// rogueViolations: each protocol violation drops that connection only.
func rogueViolations(t *testing.T, srv *target.Server, to netip.AddrPort, tlog *rogueLog, lg *legit) {
	hdr := func(q wire.Request) []byte { return msg(q, nil) }
	open := func(mut func(p []byte) []byte, announce int) []byte {
		_, p := openPayload("/dev/ram1", wire.OpenReadOnly)
		p = mut(p)
		n := len(p)
		if announce >= 0 {
			n = announce
		}
		return msg(wire.Request{Op: wire.OpOpen, Length: uint32(n), Handle: newHandle()}, p)
	}
	same := func(p []byte) []byte { return p }
	setName := func(n int, carry int) func(p []byte) []byte {
		return func(p []byte) []byte {
			p = append(p[:26:26], bytes.Repeat([]byte("x"), carry)...)
			p[24], p[25] = byte(n), byte(n>>8)
			return p
		}
	}
	read := wire.Request{Op: wire.OpRead, Length: 4096, Handle: 1}
	for _, tc := range []struct {
		name   string
		open   string // OPEN this export first ("": not at all)
		rw     bool
		pd     []byte
		send   func(r *rogue) // posts the violation
		reason string         // in the target's log line about the drop
	}{
		{name: "empty message", open: "/dev/ram1", send: func(r *rogue) { r.post(r.sendWR(nil)) }, reason: "message of 0 bytes"},
		{name: "16-byte message", open: "/dev/ram1", send: func(r *rogue) { r.post(r.sendWR(hdr(read)[:16])) }, reason: "message of 16 bytes"},
		{name: "31-byte message before OPEN", send: func(r *rogue) { r.post(r.sendWR(hdr(read)[:31])) }, reason: "message of 31 bytes"},
		{name: "opcode 0", open: "/dev/ram1", send: func(r *rogue) { r.post(r.sendWR(hdr(wire.Request{Op: 0, Handle: 2}))) }, reason: "unknown opcode 0"},
		{name: "opcode 9", open: "/dev/ram1", send: func(r *rogue) { r.post(r.sendWR(hdr(wire.Request{Op: 9, Handle: 2}))) }, reason: "unknown opcode 9"},
		{name: "opcode 255", open: "/dev/ram1", send: func(r *rogue) { r.post(r.sendWR(hdr(wire.Request{Op: 255, Handle: 2}))) }, reason: "unknown opcode 255"},
		{name: "unknown flag", open: "/dev/ram1", send: func(r *rogue) {
			q := read
			q.Flags = 0x80
			r.post(r.sendWR(hdr(q)))
		}, reason: "unknown flags 0x80"},
		{name: "reserved not zero", open: "/dev/ram1", send: func(r *rogue) {
			b := hdr(read)
			b[31] = 1
			r.post(r.sendWR(b))
		}, reason: "reserved field not zero"},
		{name: "READ before OPEN", send: func(r *rogue) { r.post(r.sendWR(hdr(read))) }, reason: "READ before OPEN"},
		{name: "WRITE before OPEN", send: func(r *rogue) {
			r.post(r.sendWR(hdr(wire.Request{Op: wire.OpWrite, Length: 4096, Handle: 3})))
		}, reason: "WRITE before OPEN"},
		{name: "second OPEN", open: "/dev/ram1", send: func(r *rogue) { r.post(r.sendWR(open(same, -1))) }, reason: "second OPEN"},
		{name: "OPEN announces more than it carries", send: func(r *rogue) { r.post(r.sendWR(open(same, 40))) }, reason: "OPEN announces 40 payload bytes, carries 35"},
		{name: "OPEN announces less than it carries", send: func(r *rogue) { r.post(r.sendWR(open(same, 30))) }, reason: "OPEN announces 30 payload bytes, carries 35"},
		{name: "OPEN without payload", send: func(r *rogue) { r.post(r.sendWR(open(func(p []byte) []byte { return nil }, -1))) }, reason: "OPEN is 0 bytes"},
		{name: "OPEN truncated fixed part", send: func(r *rogue) { r.post(r.sendWR(open(func(p []byte) []byte { return p[:20] }, -1))) }, reason: "OPEN is 20 bytes"},
		{name: "OPEN queue = queues", send: func(r *rogue) {
			r.post(r.sendWR(open(func(p []byte) []byte { p[16], p[18] = 1, 1; return p }, -1)))
		}, reason: "queue 1 of 1"},
		{name: "OPEN 0 queues", send: func(r *rogue) {
			r.post(r.sendWR(open(func(p []byte) []byte { p[16], p[18] = 0, 0; return p }, -1)))
		}, reason: "queue 0 of 0"},
		{name: "OPEN unknown flags", send: func(r *rogue) {
			r.post(r.sendWR(open(func(p []byte) []byte { p[21] = 1; return p }, -1)))
		}, reason: "unknown OPEN flags 0x101"},
		{name: "OPEN name length 0", send: func(r *rogue) { r.post(r.sendWR(open(setName(0, 0), -1))) }, reason: "export name of 0 bytes"},
		{name: "OPEN name length 1025", send: func(r *rogue) { r.post(r.sendWR(open(setName(1025, 1025), -1))) }, reason: "export name of 1025 bytes"},
		{name: "OPEN name truncated", send: func(r *rogue) { r.post(r.sendWR(open(setName(40, 9), -1))) }, reason: "OPEN is 35 bytes, want at least 66"},
		{name: "OPEN name with NUL", send: func(r *rogue) {
			r.post(r.sendWR(open(func(p []byte) []byte { p[30] = 0; return p }, -1)))
		}, reason: "NUL in export name"},
		{name: "message larger than the receive buffer", open: "/dev/ram1", send: func(r *rogue) {
			r.post(r.sendWR(msg(wire.Request{Op: wire.OpWrite, Flags: wire.FlagInline, Length: 8192, Handle: 4}, make([]byte, 8192))))
		}, reason: "completion error"},
		{name: "more requests than credits", open: "/dev/ram2", rw: true, pd: connectData(2, 64<<10, 4096), send: func(r *rogue) {
			// two slow WRITE_ZEROES take both credits; the FLUSH is one too many
			wz := func(off uint64) verbs.SendWR {
				return r.sendWR(hdr(wire.Request{Op: wire.OpWriteZeroes, Flags: wire.FlagNoUnmap, Offset: off, Length: 64 << 20, Handle: newHandle()}))
			}
			r.post(wz(0), wz(64<<20), r.sendWR(hdr(wire.Request{Op: wire.OpFlush, Handle: newHandle()})))
		}, reason: "more than 2 requests outstanding"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := dialRogue(t, to, tc.pd)
			if tc.open != "" {
				flags := wire.OpenReadOnly
				if tc.rw {
					flags = 0
				}
				r.mustOpen(tc.open, flags)
			}
			tc.send(r)
			ev, wc := r.waitGone(t)
			line, ok := tlog.waitLine(10*time.Second, r.peerTag(), tc.reason)
			if !ok {
				t.Fatalf("the target's log says nothing about %q for %s", tc.reason, r.peerTag())
			}
			t.Logf("rogue saw %s, then %s; target: %s", ev, wc.Status, line[strings.Index(line, "msg="):])
			r.closeAndWait(t, srv)
			lg.check(t)
		})
	}
	// each case began with a new connection; one more shows the last
	// violation did not stop the target either
	probe(t, srv, to)
}

// rogueViolationBurst: many connections break the protocol at once and go
// away as soon as the target drops them (the target frees a connection while
// the DISCONNECTED events of the others come in).
func rogueViolationBurst(t *testing.T, srv *target.Server, to netip.AddrPort, lg *legit) {
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for k := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := dialRogueErr(t, to, connectData(4, 64<<10, 4096))
			if err != nil {
				errs <- err
				return
			}
			defer r.close()
			b := msg(wire.Request{Op: wire.OpRead, Length: 4096, Handle: 1}, nil)
			switch k % 3 {
			case 0:
				b[0] = 0 // unknown opcode
			case 1:
				b = b[:8] // short
			}
			// case 2: a READ before OPEN
			if _, err := r.ep.QP.PostSend([]verbs.SendWR{r.sendWR(b)}); err != nil {
				errs <- err
				return
			}
			select {
			case <-r.gone:
			case <-time.After(20 * time.Second):
				errs <- errors.New("not dropped")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	lg.check(t)
	probe(t, srv, to)
}

// rogueCommands: bad commands get an error reply and the connection lives on.
func rogueCommands(t *testing.T, srv *target.Server, to netip.AddrPort, lg *legit) {
	r := dialRogue(t, to, nil)
	exp := r.mustOpen("/dev/ram2", 0)
	defer r.closeAndWait(t, srv)
	size, depth, slot, inline := exp.Size, r.acc.Depth, r.acc.SlotSize, r.acc.InlineMax
	if exp.LogicalBlockSize != 512 || depth != 4 || slot != 64<<10 || inline != 4096 {
		t.Fatalf("setup: block %d, depth %d, slot %d, inline %d", exp.LogicalBlockSize, depth, slot, inline)
	}
	trimBeyond := wire.StatusNoSpace
	if exp.Caps&wire.CapTrim == 0 {
		trimBeyond = wire.StatusNotSupp
	}
	wrap := ^uint64(0) - 511 // 2^64 - 512: aligned, and + 1024 wraps around
	const (
		R, W, T, Z = wire.OpRead, wire.OpWrite, wire.OpTrim, wire.OpWriteZeroes
		I          = wire.FlagInline
	)
	for _, tc := range []struct {
		name    string
		op      wire.Op
		flags   uint8
		slot    uint16
		off     uint64
		length  uint32
		payload int
		want    wire.Status
	}{
		{"slot = depth", R, 0, depth, 0, 4096, 0, wire.StatusInval},
		{"slot 65535", W, 0, 65535, 0, 4096, 0, wire.StatusInval},
		{"READ length 0", R, 0, 0, 0, 0, 0, wire.StatusInval},
		{"WRITE length 0", W, 0, 0, 0, 0, 0, wire.StatusInval},
		{"READ longer than a slot", R, 0, 0, 0, slot + 512, 0, wire.StatusInval},
		{"WRITE longer than a slot", W, 0, 3, 0, slot + 512, 0, wire.StatusInval},
		{"READ 4 GiB - 512", R, 0, 0, 0, 1<<32 - 512, 0, wire.StatusInval},
		{"length not a block multiple", R, 0, 0, 0, 100, 0, wire.StatusInval},
		{"WRITE length not a block multiple", W, 0, 0, 0, 4000, 0, wire.StatusInval},
		{"offset misaligned", R, 0, 0, 100, 512, 0, wire.StatusInval},
		{"WRITE offset misaligned", W, 0, 0, 4097, 4096, 0, wire.StatusInval},
		{"READ at the end", R, 0, 0, size, 4096, 0, wire.StatusInval},
		{"READ across the end", R, 0, 0, size - 512, 1024, 0, wire.StatusInval},
		{"WRITE at the end", W, 0, 0, size, 4096, 0, wire.StatusNoSpace},
		{"WRITE across the end", W, 0, 0, size - 512, 1024, 0, wire.StatusNoSpace},
		{"READ wrapping around 2^64", R, 0, 0, wrap, 1024, 0, wire.StatusInval},
		{"WRITE wrapping around 2^64", W, 0, 0, wrap, 1024, 0, wire.StatusNoSpace},
		{"inline WRITE with less payload", W, I, 0, 0, 4096, 2048, wire.StatusInval},
		{"inline WRITE with more payload", W, I, 0, 0, 512, 1024, wire.StatusInval},
		{"inline WRITE without payload", W, I, 0, 0, 512, 0, wire.StatusInval},
		{"inline WRITE beyond the inline maximum", W, I, 0, 0, inline + 512, 0, wire.StatusInval},
		{"inline READ beyond the inline maximum", R, I, 0, 0, inline + 512, 0, wire.StatusInval},
		{"inline READ of 4 GiB - 512", R, I, 0, 0, 1<<32 - 512, 0, wire.StatusInval},
		{"inline READ wrapping around 2^64", R, I, 0, wrap, 1024, 0, wire.StatusInval},
		{"TRIM at the end", T, 0, 0, size, 4096, 0, trimBeyond},
		{"TRIM wrapping around 2^64", T, 0, 0, wrap, 1024, 0, trimBeyond},
		{"WRITE_ZEROES at the end", Z, 0, 0, size, 4096, 0, wire.StatusNoSpace},
		{"WRITE_ZEROES across the end", Z, 0, 0, size - 512, 4096, 0, wire.StatusNoSpace},
		{"WRITE_ZEROES wrapping around 2^64", Z, 0, 0, wrap, 1024, 0, wire.StatusNoSpace},
		{"WRITE_ZEROES length 0", Z, 0, 0, 0, 0, 0, wire.StatusInval},
		{"WRITE_ZEROES misaligned", Z, 0, 0, 256, 512, 0, wire.StatusInval},
		{"KEEPALIVE with junk fields", wire.OpKeepAlive, 0, 999, 12345, 77, 0, wire.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := wire.Request{Op: tc.op, Flags: tc.flags, Slot: tc.slot, Offset: tc.off, Length: tc.length, Handle: newHandle()}
			m := r.cmd(q, random(tc.payload))
			if m.rep.Status != tc.want || m.rep.Op != tc.op || m.rep.Length != 0 || len(m.data) != 0 {
				t.Fatalf("want %v, got %v (op %s, %d data bytes)", tc.want, m.rep.Status, m.rep.Op, len(m.data))
			}
			if !r.alive() {
				t.Fatal("connection dropped")
			}
		})
	}
	t.Run("same slot twice", func(t *testing.T) {
		// The second command names slot 0 while the first holds it: EBUSY.
		// A target that runs READs in its loop finishes the first before it
		// looks at the second, so this needs I/O in workers: a target of
		// its own with InlineIO off. The first may still finish before the
		// second is looked at; try again then.
		wsrv, wto, _ := startTargetConfig(t, target.Config{InlineIO: -1, Exports: []target.ExportConfig{{Path: "/dev/ram0", ReadOnly: true}}})
		r := dialRogue(t, wto, connectData(4, 64<<10, 4096))
		r.mustOpen("/dev/ram0", wire.OpenReadOnly)
		defer r.closeAndWait(t, wsrv)
		for try := 1; ; try++ {
			a := wire.Request{Op: wire.OpRead, Slot: 0, Length: slot, Handle: newHandle()}
			b := wire.Request{Op: wire.OpRead, Slot: 0, Length: slot, Offset: uint64(slot), Handle: newHandle()}
			r.post(r.sendWR(msg(a, nil)), r.sendWR(msg(b, nil)))
			ma, mb := r.waitReply(a.Handle), r.waitReply(b.Handle)
			if ma.rep.Status != wire.StatusOK {
				t.Fatalf("first READ: %v", ma.rep.Status)
			}
			if mb.rep.Status == wire.StatusBusy {
				t.Logf("second READ of slot 0: EBUSY (try %d)", try)
				break
			}
			if mb.rep.Status != wire.StatusOK || try == 10 {
				t.Fatalf("second READ of slot 0: want EBUSY, got %v (try %d)", mb.rep.Status, try)
			}
		}
	})
	t.Run("still serving", func(t *testing.T) {
		// slot 2 -> device -> slot 1, all checked
		data := random(int(slot))
		copy(r.localMR.Bytes(), data)
		w := r.rdmaWR(verbs.OpRDMAWrite, r.acc.SlotAddr+2*uint64(slot), r.acc.SlotRKey, 0, int(slot))
		r.post(w)
		if wc := r.waitWC(w.ID); wc.Status != verbs.WCSuccess {
			t.Fatalf("RDMA WRITE to its own slot: %v", wc.Err())
		}
		if m := r.cmd(wire.Request{Op: wire.OpWrite, Slot: 2, Offset: 1 << 20, Length: slot, Handle: newHandle()}, nil); m.rep.Status != wire.StatusOK {
			t.Fatalf("WRITE: %v", m.rep.Status)
		}
		if m := r.cmd(wire.Request{Op: wire.OpRead, Slot: 1, Offset: 1 << 20, Length: slot, Handle: newHandle()}, nil); m.rep.Status != wire.StatusOK {
			t.Fatalf("READ: %v", m.rep.Status)
		}
		rd := r.rdmaWR(verbs.OpRDMARead, r.acc.SlotAddr+uint64(slot), r.acc.SlotRKey, int(slot), int(slot))
		r.post(rd)
		if wc := r.waitWC(rd.ID); wc.Status != verbs.WCSuccess {
			t.Fatalf("RDMA READ of its own slot: %v", wc.Err())
		}
		if !bytes.Equal(r.localMR.Bytes()[slot:2*slot], data) {
			t.Fatal("read back other data")
		}
		if !bytes.Equal(readDevice(t, "/dev/ram2", 1<<20, int(slot)), data) {
			t.Fatal("the device does not hold what was written")
		}
		m := r.cmd(wire.Request{Op: wire.OpRead, Flags: wire.FlagInline, Offset: 1 << 20, Length: 4096, Handle: newHandle()}, nil)
		if m.rep.Status != wire.StatusOK || m.rep.Flags != wire.FlagInline || !bytes.Equal(m.data, data[:4096]) {
			t.Fatalf("inline READ: %v, flags %#x, equal %v", m.rep.Status, m.rep.Flags, bytes.Equal(m.data, data[:4096]))
		}
	})
	t.Run("read-only", func(t *testing.T) {
		for _, c := range []struct {
			name, export string
			flags        uint32
		}{{"read-only export", "/dev/ram3", 0}, {"read-only session", "/dev/ram2", wire.OpenReadOnly}} {
			ro := dialRogue(t, to, nil)
			if rep := ro.mustOpen(c.export, c.flags); rep.Caps&wire.CapReadOnly == 0 {
				t.Fatalf("%s: no CapReadOnly", c.name)
			}
			for _, q := range []wire.Request{
				{Op: wire.OpWrite, Length: 4096},
				{Op: wire.OpWrite, Flags: wire.FlagInline, Length: 512},
				{Op: wire.OpWrite, Flags: wire.FlagFUA, Length: 4096, Offset: 8192},
				{Op: wire.OpWriteZeroes, Length: 4096},
				{Op: wire.OpTrim, Length: 4096},
			} {
				q.Handle = newHandle()
				var p []byte
				if q.Flags&wire.FlagInline != 0 {
					p = make([]byte, q.Length)
				}
				if m := ro.cmd(q, p); m.rep.Status != wire.StatusROFS {
					t.Fatalf("%s: %s: want EROFS, got %v", c.name, q.Op, m.rep.Status)
				}
			}
			if m := ro.cmd(wire.Request{Op: wire.OpRead, Length: 4096, Handle: newHandle()}, nil); m.rep.Status != wire.StatusOK {
				t.Fatalf("%s: READ: %v", c.name, m.rep.Status)
			}
			if m := ro.cmd(wire.Request{Op: wire.OpFlush, Handle: newHandle()}, nil); m.rep.Status != wire.StatusOK {
				t.Fatalf("%s: FLUSH: %v", c.name, m.rep.Status)
			}
			ro.closeAndWait(t, srv)
		}
	})
	if !r.alive() {
		t.Fatal("the connection was dropped")
	}
	lg.check(t)
}

// rogueOpens: names that are not exported are refused (ENOENT, the
// connection lives on and may OPEN again); a read-write export held by
// another session is EBUSY.
func rogueOpens(t *testing.T, srv *target.Server, to netip.AddrPort) {
	r := dialRogue(t, to, nil)
	defer r.closeAndWait(t, srv)
	for _, name := range []string{"/dev/ram0", "/dev/ram1/../ram0", "/dev//ram1", "dev/ram1", "/etc/shadow", "../../../../dev/ram0",
		"/dev/ram1\n", strings.Repeat("/", 1024)} {
		if st, rep := r.open(name, wire.OpenReadOnly); st != wire.StatusNoEnt {
			t.Errorf("OPEN %q: want ENOENT, got %v: %s", name, st, rep.Message)
		}
	}
	if st, rep := r.open("/dev/ram1", 0); st != wire.StatusBusy {
		t.Errorf("OPEN /dev/ram1 read-write beside the legitimate session: want EBUSY, got %v: %s", st, rep.Message)
	} else {
		t.Logf("EBUSY: %s", rep.Message)
	}
	r.mustOpen("/dev/ram1", wire.OpenReadOnly)
}

// rogueMemory: a connection reaches its own slots and nothing else.
func rogueMemory(t *testing.T, srv *target.Server, to netip.AddrPort, lg *legit) {
	tr, _, _ := env(t)
	siw := tr == "siw"
	b := dialRogue(t, to, nil)
	b.mustOpen("/dev/ram2", 0)
	defer b.closeAndWait(t, srv)
	slot := int(b.acc.SlotSize)
	// B puts a known pattern in all its slots
	region := int(b.acc.Depth) * slot
	pattern := random(region)
	copy(b.localMR.Bytes(), pattern)
	w := b.rdmaWR(verbs.OpRDMAWrite, b.acc.SlotAddr, b.acc.SlotRKey, 0, region)
	b.post(w)
	if wc := b.waitWC(w.ID); wc.Status != verbs.WCSuccess {
		t.Fatalf("B: RDMA WRITE to its own slots: %v", wc.Err())
	}
	// checkB proves B's slots still hold the pattern: B reads them back
	// itself, and writes slot 0 to the device through the target.
	checkB := func(t *testing.T) {
		t.Helper()
		sink := b.localMR.Bytes()[region : 2*region]
		clear(sink)
		rd := b.rdmaWR(verbs.OpRDMARead, b.acc.SlotAddr, b.acc.SlotRKey, region, region)
		b.post(rd)
		if wc := b.waitWC(rd.ID); wc.Status != verbs.WCSuccess {
			t.Fatalf("B: RDMA READ of its own slots: %v", wc.Err())
		}
		if !bytes.Equal(sink, pattern) {
			t.Fatal("B's slots changed")
		}
		if m := b.cmd(wire.Request{Op: wire.OpWrite, Slot: 0, Offset: 2 << 20, Length: uint32(slot), Handle: newHandle()}, nil); m.rep.Status != wire.StatusOK {
			t.Fatalf("B: WRITE from slot 0: %v", m.rep.Status)
		}
		if !bytes.Equal(readDevice(t, "/dev/ram2", 2<<20, slot), pattern[:slot]) {
			t.Fatal("B: the device does not hold B's slot 0")
		}
	}
	t.Run("own region", func(t *testing.T) {
		a := dialRogue(t, to, nil)
		a.mustOpen("/dev/ram1", wire.OpenReadOnly)
		data := random(4096)
		copy(a.localMR.Bytes(), data)
		last := a.acc.SlotAddr + uint64(a.acc.Depth)*uint64(a.acc.SlotSize) - 4096
		w := a.rdmaWR(verbs.OpRDMAWrite, last, a.acc.SlotRKey, 0, 4096)
		rd := a.rdmaWR(verbs.OpRDMARead, last, a.acc.SlotRKey, 4096, 4096)
		a.post(w, rd)
		for _, id := range []uint64{w.ID, rd.ID} {
			if wc := a.waitWC(id); wc.Status != verbs.WCSuccess {
				t.Fatalf("RDMA to its own last 4 KiB: %v", wc.Err())
			}
		}
		if !bytes.Equal(a.localMR.Bytes()[4096:8192], data) {
			t.Fatal("RDMA READ of its own slot: other data")
		}
		a.closeAndWait(t, srv)
	})
	type attack struct {
		addr uint64
		rkey uint32
	}
	for _, tc := range []struct {
		name string
		op   verbs.Opcode
		at   func(a *rogue) attack
	}{
		{"WRITE with B's rkey and address", verbs.OpRDMAWrite, func(a *rogue) attack { return attack{b.acc.SlotAddr, b.acc.SlotRKey} }},
		{"READ with B's rkey and address", verbs.OpRDMARead, func(a *rogue) attack { return attack{b.acc.SlotAddr, b.acc.SlotRKey} }},
		{"WRITE with B's rkey at its own address", verbs.OpRDMAWrite, func(a *rogue) attack { return attack{a.acc.SlotAddr, b.acc.SlotRKey} }},
		{"READ with its own rkey at B's address", verbs.OpRDMARead, func(a *rogue) attack { return attack{b.acc.SlotAddr, a.acc.SlotRKey} }},
		{"WRITE with its own rkey at B's address", verbs.OpRDMAWrite, func(a *rogue) attack { return attack{b.acc.SlotAddr, a.acc.SlotRKey} }},
		{"WRITE just beyond its region", verbs.OpRDMAWrite, func(a *rogue) attack {
			return attack{a.acc.SlotAddr + uint64(a.acc.Depth)*uint64(a.acc.SlotSize), a.acc.SlotRKey}
		}},
		{"READ just beyond its region", verbs.OpRDMARead, func(a *rogue) attack {
			return attack{a.acc.SlotAddr + uint64(a.acc.Depth)*uint64(a.acc.SlotSize), a.acc.SlotRKey}
		}},
		{"WRITE across its region's end", verbs.OpRDMAWrite, func(a *rogue) attack {
			return attack{a.acc.SlotAddr + uint64(a.acc.Depth)*uint64(a.acc.SlotSize) - 2048, a.acc.SlotRKey}
		}},
		{"READ just before its region", verbs.OpRDMARead, func(a *rogue) attack { return attack{a.acc.SlotAddr - 4096, a.acc.SlotRKey} }},
		{"WRITE with a neighbouring rkey", verbs.OpRDMAWrite, func(a *rogue) attack { return attack{a.acc.SlotAddr, a.acc.SlotRKey + 0x100} }},
		{"READ with a neighbouring rkey", verbs.OpRDMARead, func(a *rogue) attack { return attack{a.acc.SlotAddr, a.acc.SlotRKey - 0x100} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := dialRogue(t, to, nil)
			a.mustOpen("/dev/ram1", wire.OpenReadOnly)
			at := tc.at(a)
			src := a.localMR.Bytes()
			copy(src[:4096], bytes.Repeat([]byte{0xa5}, 4096))
			for i := 4096; i < 8192; i++ {
				src[i] = 0xee
			}
			bad := a.rdmaWR(tc.op, at.addr, at.rkey, 0, 4096)
			if tc.op == verbs.OpRDMARead {
				bad.SGE[0] = a.localMR.SGE(4096, 4096)
			}
			// then a valid READ of its own slot: on iWARP a WRITE completes
			// locally once sent, and the target's TERMINATE fails what follows
			good := a.rdmaWR(verbs.OpRDMARead, a.acc.SlotAddr, a.acc.SlotRKey, 8192, 4096)
			a.post(bad, good)
			wb, wg := a.waitWC(bad.ID), a.waitWC(good.ID)
			t.Logf("attack: %s; following READ: %s", wb.Status, wg.Status)
			switch {
			case wb.Status == verbs.WCSuccess && (tc.op == verbs.OpRDMARead || !siw):
				t.Fatalf("%s succeeded", tc.op)
			case wb.Status == verbs.WCSuccess && wg.Status == verbs.WCSuccess:
				t.Fatal("iWARP: the WRITE and the READ after it both succeeded")
			}
			if !bytes.Equal(src[4096:8192], bytes.Repeat([]byte{0xee}, 4096)) {
				t.Fatal("the failed access brought data back")
			}
			a.closeAndWait(t, srv)
			checkB(t)
			if !b.alive() {
				t.Fatal("B was dropped")
			}
		})
	}
	lg.check(t)
}

// rogueAbrupt: initiators that vanish with commands outstanding.
func rogueAbrupt(t *testing.T, srv *target.Server, to netip.AddrPort, lg *legit) {
	// afterwards the session is gone, its read-write claim released, and a
	// new read-write session works
	reopen := func(t *testing.T, sid wire.SessionID) {
		t.Helper()
		waitSessionGone(t, srv, sid)
		s, err := dialSessionErr(to, "/dev/ram2", 1)
		if err != nil {
			t.Fatalf("new read-write session on /dev/ram2: %v", err)
		}
		defer waitSessionGone(t, srv, s.ID)
		defer s.Close()
		data := random(8192)
		if _, st := do(t, s.Queues()[0], wire.OpWrite, 0, 4<<20, data, 0); st != wire.StatusOK {
			t.Fatalf("write: %v", st)
		}
		if got, st := do(t, s.Queues()[0], wire.OpRead, 0, 4<<20, nil, 8192); st != wire.StatusOK || !bytes.Equal(got, data) {
			t.Fatalf("read back: %v", st)
		}
		lg.check(t)
		probe(t, srv, to)
	}
	t.Run("close", func(t *testing.T) {
		r := dialRogue(t, to, connectData(8, 64<<10, 4096))
		r.mustOpen("/dev/ram2", 0)
		rogueBusy(r)
		r.close()
		reopen(t, r.session)
	})
	t.Run("kill", func(t *testing.T) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestRogueHelperProcess$")
		cmd.Env = append(os.Environ(), "RBD_ROGUE_HELPER="+to.String())
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Process.Kill()
		var sid wire.SessionID
		sc := bufio.NewScanner(out)
		busy := false
		for !busy && sc.Scan() {
			if h, ok := strings.CutPrefix(sc.Text(), "rogue session "); ok {
				hex.Decode(sid[:], []byte(h))
			} else if sc.Text() != "rogue busy" {
				t.Logf("helper: %s", sc.Text())
			}
			busy = sc.Text() == "rogue busy"
		}
		if !busy || !hasSession(srv, sid) {
			t.Fatalf("the helper did not get busy (session %s)", sid)
		}
		cmd.Process.Signal(syscall.SIGKILL)
		go io.Copy(io.Discard, out)
		cmd.Wait()
		reopen(t, sid)
	})
}

// rogueBusy leaves commands outstanding: slow WRITE_ZEROES, slot WRITEs whose
// data was RDMA-written just before, and READs.
func rogueBusy(r *rogue) {
	slot := r.acc.SlotSize
	wrs := []verbs.SendWR{
		r.sendWR(msg(wire.Request{Op: wire.OpWriteZeroes, Flags: wire.FlagNoUnmap, Offset: 64 << 20, Length: 64 << 20, Handle: newHandle()}, nil)),
		r.sendWR(msg(wire.Request{Op: wire.OpWriteZeroes, Flags: wire.FlagNoUnmap, Offset: 128 << 20, Length: 64 << 20, Handle: newHandle()}, nil)),
	}
	for i := range 3 {
		wrs = append(wrs, r.rdmaWR(verbs.OpRDMAWrite, r.acc.SlotAddr+uint64(i)*uint64(slot), r.acc.SlotRKey, i*int(slot), int(slot)),
			r.sendWR(msg(wire.Request{Op: wire.OpWrite, Slot: uint16(i), Offset: uint64(i) * uint64(slot), Length: slot, Handle: newHandle()}, nil)))
	}
	for i := 3; i < 6; i++ {
		wrs = append(wrs, r.sendWR(msg(wire.Request{Op: wire.OpRead, Slot: uint16(i), Offset: uint64(i) * uint64(slot), Length: slot, Handle: newHandle()}, nil)))
	}
	r.post(wrs...)
	time.Sleep(20 * time.Millisecond)
}

// TestRogueHelperProcess is the initiator that TestRogue/abrupt/kill kills.
func TestRogueHelperProcess(t *testing.T) {
	dst := os.Getenv("RBD_ROGUE_HELPER")
	if dst == "" {
		t.Skip("helper process of TestRogue")
	}
	r := dialRogue(t, netip.MustParseAddrPort(dst), connectData(8, 64<<10, 4096))
	r.mustOpen("/dev/ram2", 0)
	fmt.Printf("rogue session %x\n", r.session[:])
	rogueBusy(r)
	fmt.Println("rogue busy")
	time.Sleep(time.Minute) // until killed
}

// TestRogueConnLimit: connections beyond the limit are refused with an rbd
// reject, also when they come all at once, and the limit frees up again.
func TestRogueConnLimit(t *testing.T) {
	const limit = 4
	srv, to, _ := startTargetConfig(t, target.Config{MaxConns: limit, Exports: []target.ExportConfig{{Path: "/dev/ram1"}}})
	s := dialSession(t, to, "/dev/ram1", 1) // one of the limit's connections
	lg := startLegit(t, s)
	probe(t, srv, to)
	fd0 := stableFDs(t)
	tooMany := func(err error) bool {
		var rej *verbs.RejectedError
		if !errors.As(err, &rej) {
			return false
		}
		rj, ok := wire.DecodeReject(rej.PrivateData)
		return ok && rj.Reason == wire.RejectTooMany && strings.Contains(rj.Message, fmt.Sprintf("at most %d connections", limit))
	}
	// dialFree connects, waiting while the target still counts connections
	// that just ended
	dialFree := func(t *testing.T) *rogue {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			r, err := dialRogueErr(t, to, connectData(4, 64<<10, 4096))
			if err == nil {
				t.Cleanup(r.close)
				return r
			}
			if !tooMany(err) || time.Now().After(deadline) {
				t.Fatalf("connect: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Run("one by one", func(t *testing.T) {
		var rs []*rogue
		for range limit - 1 {
			rs = append(rs, dialFree(t))
		}
		if _, err := dialRogueErr(t, to, connectData(4, 64<<10, 4096)); !tooMany(err) {
			t.Fatalf("connection beyond the limit: want a too-many reject, got %v", err)
		}
		lg.check(t)
		rs[0].close()
		dialFree(t).close()
		for _, r := range rs {
			r.close()
		}
	})
	waitFDs(t, fd0)
	t.Run("all at once", func(t *testing.T) {
		const n = 12
		var wg sync.WaitGroup
		var mu sync.Mutex
		var ok []*rogue
		refused := 0
		var other []error
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := dialRogueErr(t, to, connectData(16, 256<<10, 4096))
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					ok = append(ok, r)
				case tooMany(err):
					refused++
				default:
					other = append(other, err)
				}
			}()
		}
		wg.Wait()
		for _, r := range ok {
			r.close()
		}
		t.Logf("%d connect requests at once: %d accepted, %d refused as too many, other errors %v", n, len(ok), refused, other)
		if len(other) > 0 {
			t.Fatalf("unexpected errors: %v", other)
		}
		if len(ok) > limit-1 || len(ok) == 0 {
			t.Fatalf("%d connections accepted beside the legitimate one: the limit is %d", len(ok), limit)
		}
	})
	waitFDs(t, fd0)
	lg.check(t)
}
