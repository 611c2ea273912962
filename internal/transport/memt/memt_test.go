package memt_test

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"rbd/internal/transport"
	"rbd/internal/transport/memt"
	"rbd/internal/verbs"
)

var addr = netip.MustParseAddrPort("10.0.0.1:7")

type side struct {
	ep  transport.Endpoint
	buf *verbs.Buffer
	mr  *verbs.MR
}

// pair connects two endpoints, each with a 64 KiB region of the given access.
func pair(t *testing.T, opts memt.Options, access verbs.Access) (a, b side, c *memt.Conn) {
	t.Helper()
	n := memt.New(opts)
	ln, err := n.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	caps := verbs.QPCaps{MaxSendWR: 16, MaxRecvWR: 16, MaxSendSGE: 2, MaxRecvSGE: 2, MaxInlineData: 64}
	mk := func(ep transport.Endpoint) side {
		buf, err := verbs.AllocBuffer(64 << 10)
		if err != nil {
			t.Fatal(err)
		}
		mr, err := ep.Register(buf, access)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ep.Close(); buf.Close() })
		return side{ep, buf, mr}
	}
	dep, err := n.Open(ctx, netip.AddrPort{}, addr, caps)
	if err != nil {
		t.Fatal(err)
	}
	a = mk(dep)
	acc := make(chan error, 1)
	go func() {
		req, err := ln.Accept(ctx)
		if err != nil {
			acc <- err
			return
		}
		if string(req.PrivateData()) != "hello" {
			acc <- errors.New("bad connect private data")
			return
		}
		ep, err := req.Endpoint(caps)
		if err != nil {
			acc <- err
			return
		}
		b = mk(ep)
		acc <- ep.Accept(ctx, verbs.ConnParam{PrivateData: []byte("welcome")})
	}()
	ev, err := dep.Connect(ctx, verbs.ConnParam{PrivateData: []byte("hello")})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-acc; err != nil {
		t.Fatal(err)
	}
	if string(ev.PrivateData) != "welcome" {
		t.Fatalf("accept private data %q", ev.PrivateData)
	}
	return a, b, n.Conns()[0]
}

func poll(t *testing.T, ep transport.Endpoint) []verbs.WC {
	t.Helper()
	wcs := make([]verbs.WC, 64)
	n, err := ep.Poll(wcs)
	if err != nil {
		t.Fatal(err)
	}
	return wcs[:n]
}

func recvWR(s side, id uint64, off, n int) []verbs.RecvWR {
	w := verbs.RecvWR{ID: id, NumSGE: 1}
	w.SGE[0] = s.mr.SGE(off, n)
	return []verbs.RecvWR{w}
}

func send(s side, id uint64, off, n int, flags verbs.SendFlags) []verbs.SendWR {
	w := verbs.SendWR{ID: id, Op: verbs.OpSend, Flags: flags, NumSGE: 1}
	w.SGE[0] = s.mr.SGE(off, n)
	return []verbs.SendWR{w}
}

// A SEND without a receive waits for one (RNR retry 7); completions carry
// the byte count; the solicited arm wakes only for a solicited message.
func TestSendRNRWaitAndSolicited(t *testing.T) {
	a, b, _ := pair(t, memt.Options{}, verbs.AccessLocalWrite)
	copy(a.mr.Bytes(), "ping!")
	if _, err := a.ep.PostSend(send(a, 1, 0, 5, verbs.Signaled)); err != nil {
		t.Fatal(err)
	}
	if wcs := poll(t, a.ep); len(wcs) != 0 {
		t.Fatalf("completed before a receive was posted: %+v", wcs)
	}
	b.ep.Arm(true)
	if _, err := b.ep.PostRecv(recvWR(b, 7, 100, 64)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	if err := b.ep.WaitEvent(ctx); err == nil {
		t.Fatal("solicited-only arm woke for an unsolicited message")
	}
	cancel()
	wcs := poll(t, b.ep)
	if len(wcs) != 1 || wcs[0].ID != 7 || wcs[0].ByteLen != 5 || wcs[0].Opcode != verbs.WCRecv || string(b.mr.Bytes()[100:105]) != "ping!" {
		t.Fatalf("receive %+v", wcs)
	}
	if wcs := poll(t, a.ep); len(wcs) != 1 || wcs[0].ID != 1 || wcs[0].Status != verbs.WCSuccess {
		t.Fatalf("send completion %+v", wcs)
	}
	b.ep.Arm(true)
	b.ep.PostRecv(recvWR(b, 8, 0, 64))
	a.ep.PostSend(send(a, 2, 0, 5, verbs.Solicited)) // unsignaled: no completion
	if err := b.ep.WaitEvent(context.Background()); err != nil {
		t.Fatal(err)
	}
	if wcs := poll(t, a.ep); len(wcs) != 0 {
		t.Fatalf("unsignaled send completed: %+v", wcs)
	}
	b.ep.Wakeup()
	if err := b.ep.WaitEvent(context.Background()); !errors.Is(err, verbs.ErrClosed) {
		t.Fatalf("WaitEvent after Wakeup: %v", err)
	}
}

// RDMA WRITE into a region without remote write access fails with a remote
// access error, and the connection fails: the receive flushes, both sides
// see DISCONNECTED.
func TestRemoteAccessError(t *testing.T) {
	a, b, _ := pair(t, memt.Options{}, verbs.AccessLocalWrite)
	b.ep.PostRecv(recvWR(b, 9, 0, 64))
	w := verbs.SendWR{ID: 3, Op: verbs.OpRDMAWrite, NumSGE: 1, RemoteAddr: b.mr.Addr(), RKey: b.mr.RKey}
	w.SGE[0] = a.mr.SGE(0, 16)
	a.ep.PostSend([]verbs.SendWR{w})
	if wcs := poll(t, a.ep); len(wcs) != 1 || wcs[0].Status != verbs.WCRemAccessErr {
		t.Fatalf("sender %+v", wcs)
	}
	if wcs := poll(t, b.ep); len(wcs) != 1 || wcs[0].ID != 9 || wcs[0].Status != verbs.WCFlushErr {
		t.Fatalf("receiver %+v", wcs)
	}
	for _, ep := range []transport.Endpoint{a.ep, b.ep} {
		ev, err := ep.NextEvent(context.Background())
		if err != nil || ev.Type != verbs.EventDisconnected {
			t.Fatalf("event %v %v", ev.Type, err)
		}
	}
}

// RDMA WRITE and READ move data with the right access; a bad lkey is a
// local protection error.
func TestRDMA(t *testing.T) {
	a, b, c := pair(t, memt.Options{}, verbs.AccessLocalWrite|verbs.AccessRemoteWrite|verbs.AccessRemoteRead)
	copy(a.mr.Bytes(), "written")
	w := verbs.SendWR{ID: 1, Op: verbs.OpRDMAWrite, Flags: verbs.Signaled, NumSGE: 1, RemoteAddr: b.mr.Addr() + 10, RKey: b.mr.RKey}
	w.SGE[0] = a.mr.SGE(0, 7)
	r := verbs.SendWR{ID: 2, Op: verbs.OpRDMARead, Flags: verbs.Signaled, NumSGE: 1, RemoteAddr: b.mr.Addr() + 10, RKey: b.mr.RKey}
	r.SGE[0] = a.mr.SGE(100, 7)
	a.ep.PostSend([]verbs.SendWR{w, r})
	if wcs := poll(t, a.ep); len(wcs) != 2 || wcs[1].Opcode != verbs.WCRDMARead || wcs[1].ByteLen != 7 {
		t.Fatalf("%+v", wcs)
	}
	if !bytes.Equal(a.mr.Bytes()[100:107], []byte("written")) || !bytes.Equal(b.mr.Bytes()[10:17], []byte("written")) {
		t.Fatal("data not moved")
	}
	if s := c.Stats(memt.Initiator); s.RDMAWrites != 1 || s.RDMAReads != 1 {
		t.Fatalf("stats %+v", s)
	}
	b.ep.PostRecv(recvWR(b, 1, 0, 64))
	bad := send(a, 5, 0, 8, verbs.Signaled)
	bad[0].SGE[0].LKey = a.mr.RKey
	a.ep.PostSend(bad)
	if wcs := poll(t, a.ep); len(wcs) != 1 || wcs[0].Status != verbs.WCLocProtErr {
		t.Fatalf("%+v", wcs)
	}
}

// Hold, DropAfter and Reject.
func TestFaults(t *testing.T) {
	a, b, c := pair(t, memt.Options{}, verbs.AccessLocalWrite)
	b.ep.PostRecv(recvWR(b, 1, 0, 64))
	b.ep.PostRecv(recvWR(b, 2, 0, 64))
	c.Hold(memt.Initiator)
	a.ep.PostSend(send(a, 1, 0, 8, verbs.Signaled))
	if len(poll(t, b.ep)) != 0 {
		t.Fatal("held message delivered")
	}
	c.Release(memt.Initiator)
	if len(poll(t, b.ep)) != 1 {
		t.Fatal("released message not delivered")
	}
	c.DropAfter(0)
	a.ep.PostSend(send(a, 2, 0, 8, verbs.Signaled))
	if wcs := poll(t, a.ep); len(wcs) != 2 || wcs[1].Status != verbs.WCFlushErr {
		t.Fatalf("%+v", wcs)
	}
	if c.Up() {
		t.Fatal("still up after DropAfter(0)")
	}

	n := memt.New(memt.Options{})
	ln, _ := n.Listen(netip.AddrPortFrom(netip.IPv4Unspecified(), 9))
	defer ln.Close()
	go func() {
		req, err := ln.Accept(context.Background())
		if err == nil {
			req.Reject([]byte("go away"))
		}
	}()
	ep, _ := n.Open(context.Background(), netip.AddrPort{}, netip.MustParseAddrPort("10.1.1.1:9"), verbs.QPCaps{})
	defer ep.Close()
	_, err := ep.Connect(context.Background(), verbs.ConnParam{})
	var rej *verbs.RejectedError
	if !errors.As(err, &rej) || string(rej.PrivateData) != "go away" || rej.NoListener() {
		t.Fatalf("Connect: %v", err)
	}
}
