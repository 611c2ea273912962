package target_test

// A hand-made peer over memt that speaks the wire protocol message by
// message: a rogue initiator (rawDial) that sends any OPEN it likes, and a
// rogue target (rogueTarget) that answers the real client with any accept
// and OPEN reply.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"rbd/internal/transport"
	"rbd/internal/transport/memt"
	"rbd/internal/verbs"
	"rbd/internal/wire"
)

const rawArea = 8192 // receive area, then send area

type rawPeer struct {
	t    testing.TB
	ep   transport.Endpoint
	buf  *verbs.Buffer
	mr   *verbs.MR
	acc  wire.Accept
	next uint64
}

func rawCaps() verbs.QPCaps {
	return verbs.QPCaps{MaxSendWR: 8, MaxRecvWR: 8, MaxSendSGE: 2, MaxRecvSGE: 2}
}

func newRawBuffers(t testing.TB, ep transport.Endpoint) (*verbs.Buffer, *verbs.MR) {
	t.Helper()
	buf, err := verbs.AllocBuffer(2*rawArea + 4*8192)
	if err != nil {
		t.Fatal(err)
	}
	mr, err := ep.Register(buf, verbs.AccessLocalWrite|verbs.AccessRemoteWrite)
	if err != nil {
		t.Fatal(err)
	}
	return buf, mr
}

// rawDial connects from src (zero: any) offering versions min..max, with a
// slot region (4 slots of 8 KiB) when max ≥ 2; the error is the connect's
// (a *verbs.RejectedError when the target refused).
func rawDial(t testing.TB, net *memt.Network, src netip.AddrPort, min, max uint8) (*rawPeer, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ep, err := net.Open(ctx, src, targetAddr, rawCaps())
	if err != nil {
		t.Fatal(err)
	}
	buf, mr := newRawBuffers(t, ep)
	r := &rawPeer{t: t, ep: ep, buf: buf, mr: mr}
	t.Cleanup(r.close)
	cd := wire.Connect{MinVersion: min, MaxVersion: max, QueueDepth: 4, MaxIO: 8192, InlineMax: 1024}
	if max >= wire.VersionPush {
		cd.RegionKey, cd.RegionAddr = mr.RKey, mr.Addr()+2*rawArea
	}
	pd := make([]byte, wire.ConnectSizeV2)
	n := cd.Encode(pd)
	ev, err := ep.Connect(ctx, verbs.ConnParam{PrivateData: pd[:n], RetryCount: 7, RNRRetryCount: 7})
	if err != nil {
		return nil, err
	}
	if r.acc, err = wire.DecodeAccept(ev.PrivateData); err != nil {
		t.Fatalf("accept: %v", err)
	}
	return r, nil
}

func (r *rawPeer) close() {
	r.ep.Close()
	r.buf.Close()
}

// send posts a receive for the answer, then the message header+payload.
func (r *rawPeer) send(req wire.Request, payload []byte) {
	r.t.Helper()
	b := r.mr.Bytes()
	if _, err := r.ep.PostRecv([]verbs.RecvWR{{ID: 1, NumSGE: 1, SGE: [verbs.MaxSGE]verbs.SGE{r.mr.SGE(0, rawArea)}}}); err != nil {
		r.t.Fatalf("post recv: %v", err)
	}
	out := b[rawArea : 2*rawArea]
	req.Encode(out)
	n := copy(out[wire.HeaderSize:], payload)
	r.next++
	wr := verbs.SendWR{ID: 100 + r.next, Op: verbs.OpSend, Flags: verbs.Signaled | verbs.Solicited, NumSGE: 1,
		SGE: [verbs.MaxSGE]verbs.SGE{r.mr.SGE(rawArea, wire.HeaderSize+n)}}
	if _, err := r.ep.PostSend([]verbs.SendWR{wr}); err != nil {
		r.t.Fatalf("post send: %v", err)
	}
}

// open sends an OPEN with payload o.
func (r *rawPeer) open(o wire.Open) {
	r.t.Helper()
	p := make([]byte, wire.MinDataArea)
	n, err := o.Encode(p)
	if err != nil {
		r.t.Fatal(err)
	}
	r.send(wire.Request{Op: wire.OpOpen, Length: uint32(n), Handle: 1}, p[:n])
}

var errConnGone = errors.New("connection ended")

// reply waits for the next message (errConnGone when the connection ended).
func (r *rawPeer) reply() (wire.Reply, []byte, error) {
	deadline := time.Now().Add(5 * time.Second)
	wcs := make([]verbs.WC, 4)
	for time.Now().Before(deadline) {
		n, err := r.ep.Poll(wcs)
		if err != nil {
			return wire.Reply{}, nil, err
		}
		for _, wc := range wcs[:n] {
			if wc.Status != verbs.WCSuccess {
				return wire.Reply{}, nil, fmt.Errorf("%w: %v", errConnGone, wc.Err())
			}
			if wc.ID != 1 {
				continue // our send
			}
			b := r.mr.Bytes()[:wc.ByteLen]
			rep, err := wire.DecodeReply(b)
			if err != nil {
				return rep, nil, err
			}
			return rep, append([]byte(nil), b[wire.HeaderSize:]...), nil
		}
		time.Sleep(time.Millisecond)
	}
	return wire.Reply{}, nil, errors.New("no reply within 5 s")
}

// openReply sends o and decodes the answer.
func (r *rawPeer) openReply(o wire.Open) (wire.Status, wire.OpenReply, []byte, error) {
	r.t.Helper()
	r.open(o)
	rep, data, err := r.reply()
	if err != nil {
		return 0, wire.OpenReply{}, nil, err
	}
	or, err := wire.DecodeOpenReply(data, rep.Status == wire.StatusOK)
	return rep.Status, or, data, err
}

// gone reports whether the target ended the connection within d.
func (r *rawPeer) gone(d time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		ev, err := r.ep.NextEvent(ctx)
		if err != nil {
			return false
		}
		if ev.Type.Terminal() {
			return true
		}
	}
}

// rejectOf returns the rbd reject in a connect error.
func rejectOf(t testing.TB, err error) wire.Reject {
	t.Helper()
	var rej *verbs.RejectedError
	if !errors.As(err, &rej) {
		t.Fatalf("connect: %v, want a reject", err)
	}
	r, ok := wire.DecodeReject(rej.PrivateData)
	if !ok {
		t.Fatalf("reject without rbd private data: %v", err)
	}
	return r
}

// ---- a rogue target

// rogueTarget listens at addr and answers each connect with accept (its
// slot region filled in) and each OPEN with answer(open) → (status, reply
// payload); other requests get a plain status-0 reply. It serves until the
// test ends.
func rogueTarget(t testing.TB, net *memt.Network, addr netip.AddrPort, accept wire.Accept, answer func(acc wire.Accept, o wire.Open) (wire.Status, []byte)) {
	hostileTarget(t, net, addr, accept, func(acc wire.Accept, rq wire.Request, payload []byte) [][]byte {
		var st wire.Status
		var data []byte
		if rq.Op == wire.OpOpen {
			o, err := wire.DecodeOpen(payload)
			if err != nil {
				return nil
			}
			st, data = answer(acc, o)
		}
		return [][]byte{replyMsg(wire.Reply{Op: rq.Op, Status: st, Handle: rq.Handle}, data)}
	})
}

// replyMsg is a reply header (its Length set from data) followed by data.
func replyMsg(r wire.Reply, data []byte) []byte {
	r.Length = uint32(len(data))
	b := make([]byte, wire.HeaderSize+len(data))
	r.Encode(b)
	copy(b[wire.HeaderSize:], data)
	return b
}

// hostileTarget listens at addr and answers each connect with accept (its
// slot region filled in) and each request with the messages handle returns
// (nil: silence). It serves until the test ends.
func hostileTarget(t testing.TB, net *memt.Network, addr netip.AddrPort, accept wire.Accept, handle func(acc wire.Accept, rq wire.Request, payload []byte) [][]byte) {
	hostileTargetRaw(t, net, addr, func(rkey uint32, raddr uint64) (wire.Accept, []byte) {
		a := accept
		a.SlotRKey, a.SlotAddr = rkey, raddr
		b := make([]byte, wire.AcceptSizeV3)
		return a, b[:a.Encode(b)]
	}, handle)
}

// hostileTargetRaw is hostileTarget with the accept's private data made by
// mkAccept, given the target's slot region: any bytes at all.
func hostileTargetRaw(t testing.TB, net *memt.Network, addr netip.AddrPort, mkAccept func(rkey uint32, raddr uint64) (wire.Accept, []byte), handle func(acc wire.Accept, rq wire.Request, payload []byte) [][]byte) {
	t.Helper()
	ln, err := net.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ln.Close() })
	go func() {
		for {
			req, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			go hostileServe(t, ctx, req, mkAccept, handle)
		}
	}()
}

func hostileServe(t testing.TB, ctx context.Context, req transport.Request, mkAccept func(uint32, uint64) (wire.Accept, []byte), handle func(wire.Accept, wire.Request, []byte) [][]byte) {
	ep, err := req.Endpoint(rawCaps())
	if err != nil {
		return
	}
	buf, mr := newRawBuffers(t, ep)
	defer func() { ep.Close(); buf.Close() }()
	post := func() {
		ep.PostRecv([]verbs.RecvWR{{ID: 1, NumSGE: 1, SGE: [verbs.MaxSGE]verbs.SGE{mr.SGE(0, rawArea)}}})
	}
	post()
	acc, pd := mkAccept(mr.RKey, mr.Addr()+2*rawArea)
	if err := ep.Accept(ctx, verbs.ConnParam{PrivateData: pd}); err != nil {
		return
	}
	wcs := make([]verbs.WC, 4)
	var next uint64
	for ctx.Err() == nil {
		k, err := ep.Poll(wcs)
		if err != nil {
			return
		}
		for _, wc := range wcs[:k] {
			if wc.Status != verbs.WCSuccess {
				return
			}
			if wc.ID != 1 {
				continue
			}
			b := mr.Bytes()[:wc.ByteLen]
			rq, err := wire.DecodeRequest(b)
			if err != nil {
				return
			}
			msgs := handle(acc, rq, append([]byte(nil), b[wire.HeaderSize:]...))
			post()
			for _, m := range msgs {
				out := mr.Bytes()[rawArea : 2*rawArea]
				n := copy(out, m)
				next++
				ep.PostSend([]verbs.SendWR{{ID: 100 + next, Op: verbs.OpSend, Flags: verbs.Signaled | verbs.Solicited, NumSGE: 1,
					SGE: [verbs.MaxSGE]verbs.SGE{mr.SGE(rawArea, n)}}})
				time.Sleep(5 * time.Millisecond) // one send area: let it go out
			}
		}
		time.Sleep(time.Millisecond)
	}
}
