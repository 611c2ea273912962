package verbs

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The tests below need an RDMA device with an address that rdma_cm can use
// (rxe or siw on a dummy interface). `make e2e` runs them in the guest with
// RBD_TEST_ADDR and RBD_TEST_RDMA_DEV set, once per transport; elsewhere they skip.

func testAddr(t testing.TB) netip.Addr {
	t.Helper()
	s := os.Getenv("RBD_TEST_ADDR")
	if s == "" {
		t.Skip("no RDMA test address (RBD_TEST_ADDR): these tests run in the guest, see make e2e")
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatalf("RBD_TEST_ADDR=%q: %v", s, err)
	}
	if _, err := DeviceNames(); err != nil {
		t.Skipf("no RDMA: %v", err)
	}
	return a
}

func testDev(t testing.TB) string {
	t.Helper()
	testAddr(t)
	d := os.Getenv("RBD_TEST_RDMA_DEV")
	if d == "" {
		t.Skip("RBD_TEST_RDMA_DEV not set")
	}
	return d
}

func tctx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// side is one end of a test connection with a registered buffer.
type side struct {
	ep  *Endpoint
	buf *Buffer
	mr  *MR
}

func (s *side) close() {
	if s.ep != nil {
		s.ep.Close()
	}
	if s.buf != nil {
		s.buf.Close()
	}
}

var testCaps = QPCaps{MaxSendWR: 128, MaxRecvWR: 128, MaxSendSGE: 2, MaxRecvSGE: 2}

// pair connects a client endpoint to a server endpoint on the test address,
// each with a bufSize buffer registered for local and remote access.
func pair(t testing.TB, bufSize int) (cli, srv *side) {
	t.Helper()
	cli, srv = dial(t, bufSize)
	t.Cleanup(func() { cli.close(); srv.close() })
	return cli, srv
}

// dial is pair without cleanup: the caller closes both sides.
func dial(t testing.TB, bufSize int) (cli, srv *side) {
	t.Helper()
	addr := testAddr(t)
	ln, err := Listen(netip.AddrPortFrom(addr, 0), 16)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	defer ln.Close()
	ctx := tctx(t, 20*time.Second)
	acc := AccessLocalWrite | AccessRemoteWrite | AccessRemoteRead
	srvc := make(chan *side, 1)
	errc := make(chan error, 1)
	go func() {
		req, err := ln.Accept(ctx)
		if err != nil {
			errc <- err
			return
		}
		if !bytes.HasPrefix(req.PrivateData, []byte("hello")) {
			req.Reject([]byte("bad hello"))
			errc <- fmt.Errorf("connect private data %q", req.PrivateData)
			return
		}
		s := &side{}
		if s.ep, err = NewEndpoint(req.ID, EndpointConfig{QP: testCaps}); err != nil {
			errc <- err
			return
		}
		if s.buf, err = AllocBuffer(bufSize); err == nil {
			s.mr, err = s.ep.Register(s.buf, acc)
		}
		if err == nil {
			err = s.ep.ID.Accept(ctx, ConnParam{PrivateData: []byte("welcome"), ResponderResources: min(req.ResponderResources, 16), InitiatorDepth: min(req.InitiatorDepth, 16), RNRRetryCount: 7})
		}
		if err != nil {
			s.close()
			errc <- err
			return
		}
		srvc <- s
	}()
	c := &side{}
	id, err := Resolve(ctx, netip.AddrPort{}, ln.Addr())
	if err != nil {
		t.Fatalf("Resolve %s: %v", ln.Addr(), err)
	}
	if c.ep, err = NewEndpoint(id, EndpointConfig{QP: testCaps}); err != nil {
		t.Fatalf("NewEndpoint: %v", err)
	}
	if c.buf, err = AllocBuffer(bufSize); err != nil {
		t.Fatal(err)
	}
	if c.mr, err = c.ep.Register(c.buf, acc); err != nil {
		t.Fatalf("Register: %v", err)
	}
	ev, err := c.ep.ID.Connect(ctx, ConnParam{PrivateData: []byte("hello"), ResponderResources: 16, InitiatorDepth: 16, RetryCount: 7, RNRRetryCount: 7})
	if err != nil {
		select {
		case e := <-errc:
			t.Fatalf("Connect: %v (server: %v)", err, e)
		default:
		}
		t.Fatalf("Connect: %v", err)
	}
	if !bytes.HasPrefix(ev.PrivateData, []byte("welcome")) {
		t.Fatalf("accept private data: want %q, got %q", "welcome", ev.PrivateData)
	}
	select {
	case srv = <-srvc:
	case err := <-errc:
		t.Fatalf("server: %v", err)
	}
	return c, srv
}

// wait collects n completions from ep's CQ.
func wait(t testing.TB, ep *Endpoint, n int) []WC {
	t.Helper()
	ctx := tctx(t, 15*time.Second)
	var out []WC
	wcs := make([]WC, 16)
	for len(out) < n {
		k, err := ep.CQ.Wait(ctx, wcs)
		if err != nil {
			t.Fatalf("CQ.Wait after %d of %d completions: %v", len(out), n, err)
		}
		out = append(out, wcs[:k]...)
	}
	return out
}

func TestDeviceInfo(t *testing.T) {
	dev := testDev(t)
	found := false
	for _, d := range SysfsDevices() {
		found = found || d == dev
	}
	if !found {
		t.Fatalf("%s not in /sys/class/infiniband: %v", dev, SysfsDevices())
	}
	names, err := DeviceNames()
	if err != nil || !strings.Contains(strings.Join(names, " "), dev) {
		t.Fatalf("DeviceNames: %v %v", names, err)
	}
	ctx, err := OpenDevice(dev)
	if err != nil {
		t.Fatalf("OpenDevice: %v", err)
	}
	defer ctx.Close()
	info, err := ctx.Info()
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	if info.Name != dev || len(info.Ports) == 0 {
		t.Fatalf("Info: %+v", info)
	}
	p := info.Ports[0]
	t.Logf("%s: node %s, transport %s, fw %q, max_qp_wr %d, max_sge %d, max_qp_rd_atom %d; port 1: %s, mtu %s, link %s, netdevs %v",
		info.Name, info.NodeType, info.Transport, info.Attr.FirmwareVersion, info.Attr.MaxQPWR, info.Attr.MaxSGE, info.Attr.MaxQPRdAtom,
		p.State, p.ActiveMTU, p.LinkLayer, p.NetDevs)
	for _, g := range p.GIDs {
		t.Logf("  gid[%d] %s %s %s", g.Index, g, g.Type, g.NetDev)
	}
	if p.State != PortActive {
		t.Errorf("port state: want ACTIVE, got %s", p.State)
	}
	if p.ActiveMTU.Bytes() < 1024 {
		t.Errorf("active MTU %d", p.ActiveMTU.Bytes())
	}
	want := testAddr(t)
	switch info.Transport {
	case TransportIB: // RoCE: the address must be among the GIDs
		if p.LinkLayer.String() != "Ethernet" {
			t.Errorf("rxe link layer: %s", p.LinkLayer)
		}
		ok := false
		for _, g := range p.GIDs {
			ok = ok || g.Addr().Unmap() == want
		}
		if !ok {
			t.Errorf("no GID for %s", want)
		}
	case TransportIWARP:
		if len(p.NetDevs) == 0 {
			t.Errorf("iWARP device without netdev")
		}
	}
	if err := ctx.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := ctx.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestSendRecv(t *testing.T) {
	cli, srv := pair(t, 1<<16)
	const n = 32
	recvs := make([]RecvWR, n)
	for i := range recvs {
		recvs[i] = RecvWR{ID: uint64(i), NumSGE: 1}
		recvs[i].SGE[0] = srv.mr.SGE(i*1024, 1024)
	}
	if _, err := srv.ep.QP.PostRecv(recvs); err != nil {
		t.Fatalf("PostRecv: %v", err)
	}
	sends := make([]SendWR, n)
	for i := range sends {
		msg := fmt.Sprintf("message %d", i)
		copy(cli.buf.Bytes()[i*1024:], msg)
		sends[i] = SendWR{ID: uint64(100 + i), Op: OpSend, Flags: Signaled, NumSGE: 1}
		sends[i].SGE[0] = cli.mr.SGE(i*1024, len(msg))
	}
	if k, err := cli.ep.QP.PostSend(sends); err != nil || k != n {
		t.Fatalf("PostSend: %d %v", k, err)
	}
	for _, wc := range wait(t, cli.ep, n) {
		if err := wc.Err(); err != nil || wc.Opcode != WCSend {
			t.Fatalf("send completion %+v: %v", wc, err)
		}
	}
	got := wait(t, srv.ep, n)
	for i, wc := range got {
		if err := wc.Err(); err != nil || wc.Opcode != WCRecv || wc.ID != uint64(i) {
			t.Fatalf("recv completion %d: %+v %v", i, wc, err)
		}
		want := fmt.Sprintf("message %d", i)
		if s := string(srv.buf.Bytes()[i*1024 : i*1024+int(wc.ByteLen)]); s != want {
			t.Fatalf("recv %d: want %q, got %q", i, want, s)
		}
	}
}

func TestWriteReadBack(t *testing.T) {
	const max = 1 << 20
	cli, srv := pair(t, 2*max)
	src := cli.buf.Bytes()[:max]
	back := cli.buf.Bytes()[max:]
	for _, size := range []int{1, 7, 512, 4095, 4096, 4097, 65536, 100003, 1 << 20} {
		rand.Read(src[:size])
		clear(back[:size])
		clear(srv.buf.Bytes()[:size])
		off := (max - size) / 3 // somewhere inside the remote buffer
		w := SendWR{ID: 1, Op: OpRDMAWrite, Flags: Signaled, NumSGE: 1, RemoteAddr: srv.mr.Addr() + uint64(off), RKey: srv.mr.RKey}
		w.SGE[0] = cli.mr.SGE(0, size)
		r := SendWR{ID: 2, Op: OpRDMARead, Flags: Signaled, NumSGE: 1, RemoteAddr: srv.mr.Addr() + uint64(off), RKey: srv.mr.RKey}
		r.SGE[0] = cli.mr.SGE(max, size)
		// one chain: the READ follows the WRITE on the same QP, so it sees its data
		if _, err := cli.ep.QP.PostSend([]SendWR{w, r}); err != nil {
			t.Fatalf("size %d: PostSend: %v", size, err)
		}
		for _, wc := range wait(t, cli.ep, 2) {
			if err := wc.Err(); err != nil {
				t.Fatalf("size %d: %v", size, err)
			}
		}
		if !bytes.Equal(srv.buf.Bytes()[off:off+size], src[:size]) {
			t.Fatalf("size %d: remote memory differs after RDMA WRITE", size)
		}
		if !bytes.Equal(back[:size], src[:size]) {
			t.Fatalf("size %d: RDMA READ returned other data", size)
		}
	}
}

// A bad rkey or an address outside the peer's region must end in an error
// completion, not a crash or a hang.
func TestRemoteAccessErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		op   Opcode
		wr   func(srv *side) (addr uint64, rkey uint32)
	}{
		{"write bad rkey", OpRDMAWrite, func(s *side) (uint64, uint32) { return s.mr.Addr(), s.mr.RKey ^ 0x5a5a00 }},
		{"read bad rkey", OpRDMARead, func(s *side) (uint64, uint32) { return s.mr.Addr(), s.mr.RKey ^ 0x5a5a00 }},
		{"write out of bounds", OpRDMAWrite, func(s *side) (uint64, uint32) { return s.mr.Addr() + uint64(s.buf.Len()) - 100, s.mr.RKey }},
		{"read out of bounds", OpRDMARead, func(s *side) (uint64, uint32) { return s.mr.Addr() + uint64(s.buf.Len()) + 4096, s.mr.RKey }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cli, srv := pair(t, 1<<16)
			addr, rkey := tc.wr(srv)
			w := SendWR{ID: 7, Op: tc.op, Flags: Signaled, NumSGE: 1, RemoteAddr: addr, RKey: rkey}
			w.SGE[0] = cli.mr.SGE(0, 4096)
			// A valid READ after it: on iWARP an RDMA WRITE completes locally once
			// sent, and the responder's TERMINATE fails what follows.
			r := SendWR{ID: 8, Op: OpRDMARead, Flags: Signaled, NumSGE: 1, RemoteAddr: srv.mr.Addr(), RKey: srv.mr.RKey}
			r.SGE[0] = cli.mr.SGE(4096, 4096)
			if _, err := cli.ep.QP.PostSend([]SendWR{w, r}); err != nil {
				t.Fatalf("PostSend: %v", err)
			}
			var errs []error
			for _, wc := range wait(t, cli.ep, 2) {
				if err := wc.Err(); err != nil {
					errs = append(errs, err)
				}
			}
			var wce *WCError
			if len(errs) == 0 || !errors.As(errs[0], &wce) {
				t.Fatalf("want an error completion, got none")
			}
			t.Logf("%s: %v", tc.name, errs)
			// the connection is dead now; both sides still close cleanly
		})
	}
}

func TestConnectNoListener(t *testing.T) {
	addr := testAddr(t)
	ctx := tctx(t, 20*time.Second)
	t0 := time.Now()
	id, err := Resolve(ctx, netip.AddrPort{}, netip.AddrPortFrom(addr, 1))
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	ep, err := NewEndpoint(id, EndpointConfig{QP: testCaps})
	if err != nil {
		t.Fatalf("NewEndpoint: %v", err)
	}
	defer ep.Close()
	_, err = ep.ID.Connect(ctx, ConnParam{RetryCount: 7, RNRRetryCount: 7})
	took := time.Since(t0)
	if err == nil {
		t.Fatal("connect to a port without listener succeeded")
	}
	t.Logf("after %v: %v", took, err)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("want ECONNREFUSED, got %v", err)
	}
	if took > 5*time.Second {
		t.Fatalf("took %v to fail", took)
	}
}

func TestResolveNoDevice(t *testing.T) {
	testAddr(t)
	ctx := tctx(t, 20*time.Second)
	// 127.0.0.1 routes over lo, which carries no usable RDMA device for rdma_cm
	_, err := Resolve(ctx, netip.AddrPort{}, netip.MustParseAddrPort("127.0.0.1:65000"))
	if err == nil {
		t.Fatal("resolving 127.0.0.1 succeeded")
	}
	var re *ResolveError
	if !errors.As(err, &re) {
		t.Fatalf("want *ResolveError, got %T %v", err, err)
	}
	t.Logf("%v", err)
}

func TestReject(t *testing.T) {
	addr := testAddr(t)
	ln, err := Listen(netip.AddrPortFrom(addr, 0), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx := tctx(t, 20*time.Second)
	go func() {
		req, err := ln.Accept(ctx)
		if err == nil {
			req.Reject([]byte("RBDX export not offered"))
		}
	}()
	id, err := Resolve(ctx, netip.AddrPort{}, ln.Addr())
	if err != nil {
		t.Fatal(err)
	}
	ep, err := NewEndpoint(id, EndpointConfig{QP: testCaps})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	_, err = ep.ID.Connect(ctx, ConnParam{PrivateData: []byte("hi"), RetryCount: 7, RNRRetryCount: 7})
	var rej *RejectedError
	if !errors.As(err, &rej) {
		t.Fatalf("want *RejectedError, got %v", err)
	}
	if rej.NoListener() || !bytes.HasPrefix(rej.PrivateData, []byte("RBDX export not offered")) {
		t.Fatalf("reject: status %d, private data %q", rej.Status, rej.PrivateData)
	}
}

func TestPeerCloseDisconnects(t *testing.T) {
	cli, srv := pair(t, 4096)
	// a posted receive is flushed when the connection goes
	r := RecvWR{ID: 9, NumSGE: 1}
	r.SGE[0] = srv.mr.SGE(0, 64)
	if _, err := srv.ep.QP.PostRecv([]RecvWR{r}); err != nil {
		t.Fatal(err)
	}
	cli.ep.Close()
	ctx := tctx(t, 15*time.Second)
	if err := srv.ep.ID.WaitDisconnect(ctx); err != nil {
		t.Fatalf("server saw no disconnect: %v", err)
	}
	wc := wait(t, srv.ep, 1)[0]
	if wc.Status != WCFlushErr || wc.ID != 9 {
		t.Fatalf("want the receive flushed, got %+v", wc)
	}
}

// TestPeerKilledDisconnects connects from a child process and SIGKILLs it: the
// kernel tears its connection down and the server sees DISCONNECTED.
func TestPeerKilledDisconnects(t *testing.T) {
	addr := testAddr(t)
	ln, err := Listen(netip.AddrPortFrom(addr, 0), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperConnect$")
	cmd.Env = append(os.Environ(), "RBD_VERBS_HELPER_DST="+ln.Addr().String())
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	ctx := tctx(t, 30*time.Second)
	req, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := NewEndpoint(req.ID, EndpointConfig{QP: testCaps})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	if err := ep.ID.Accept(ctx, ConnParam{RNRRetryCount: 7}); err != nil {
		t.Fatalf("Accept: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	t0 := time.Now()
	if err := ep.ID.WaitDisconnect(ctx); err != nil {
		t.Fatalf("no disconnect after the peer was killed: %v", err)
	}
	t.Logf("disconnect seen %v after the kill", time.Since(t0))
}

// TestHelperConnect is the child of TestPeerKilledDisconnects.
func TestHelperConnect(t *testing.T) {
	dst := os.Getenv("RBD_VERBS_HELPER_DST")
	if dst == "" {
		t.Skip("helper process only")
	}
	ctx := tctx(t, 30*time.Second)
	id, err := Resolve(ctx, netip.AddrPort{}, netip.MustParseAddrPort(dst))
	if err != nil {
		t.Fatal(err)
	}
	ep, err := NewEndpoint(id, EndpointConfig{QP: testCaps})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ep.ID.Connect(ctx, ConnParam{RetryCount: 7, RNRRetryCount: 7}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Minute) // until killed
}

// Close while another goroutine waits for completions: the waiter gets
// ErrClosed, nothing crashes.
func TestCloseWhileWaiting(t *testing.T) {
	cli, _ := pair(t, 4096)
	errc := make(chan error, 1)
	go func() {
		_, err := cli.ep.CQ.Wait(context.Background(), make([]WC, 4))
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond)
	cli.ep.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("waiter: want ErrClosed, got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waiter still blocked after Close")
	}
	if _, err := cli.ep.QP.PostSend([]SendWR{{Op: OpSend}}); !errors.Is(err, ErrClosed) {
		t.Fatalf("PostSend after Close: want ErrClosed, got %v", err)
	}
	if err := cli.ep.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestWaitEventThread: a completion wakes a thread blocked in
// WaitEventThread; Wakeup (and Close) make it return ErrClosed.
func TestWaitEventThread(t *testing.T) {
	cli, srv := pair(t, 4096)
	if err := srv.ep.CQ.Arm(); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.ep.QP.PostRecv([]RecvWR{{ID: 1, NumSGE: 1, SGE: [MaxSGE]SGE{srv.mr.SGE(0, 64)}}}); err != nil {
		t.Fatal(err)
	}
	woke := make(chan error, 1)
	go func() { woke <- srv.ep.CQ.WaitEventThread() }()
	time.Sleep(50 * time.Millisecond)
	if _, err := cli.ep.QP.PostSend([]SendWR{{ID: 2, Op: OpSend, Flags: Signaled, NumSGE: 1, SGE: [MaxSGE]SGE{cli.mr.SGE(0, 64)}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-woke:
		if err != nil {
			t.Fatalf("WaitEventThread after a receive: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a receive did not wake WaitEventThread")
	}
	if n, err := srv.ep.CQ.Poll(make([]WC, 4)); n != 1 || err != nil {
		t.Fatalf("Poll after the event: %d, %v", n, err)
	}
	go func() { woke <- srv.ep.CQ.WaitEventThread() }()
	time.Sleep(50 * time.Millisecond)
	srv.ep.Wakeup()
	select {
	case err := <-woke:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("WaitEventThread after Wakeup: %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wakeup did not end WaitEventThread")
	}
	if err := srv.ep.CQ.WaitEventThread(); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitEventThread after Wakeup: %v, want ErrClosed at once", err)
	}
}

func countFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func rssKiB(t testing.TB) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			var n int
			fmt.Sscan(strings.TrimSpace(strings.TrimPrefix(l, "VmRSS:")), &n)
			return n
		}
	}
	return 0
}

// TestNoLeaks opens and closes every kind of resource 1000 times, and makes 50
// full connections, and checks that file descriptors and memory come back.
func TestNoLeaks(t *testing.T) {
	dev := testDev(t)
	addr := testAddr(t)
	cycle := func() {
		ctx, err := OpenDevice(dev)
		if err != nil {
			t.Fatal(err)
		}
		pd, err := ctx.AllocPD()
		if err != nil {
			t.Fatal(err)
		}
		buf, err := AllocBuffer(64 << 10)
		if err != nil {
			t.Fatal(err)
		}
		mr, err := pd.Register(buf, AccessLocalWrite|AccessRemoteRead)
		if err != nil {
			t.Fatal(err)
		}
		ch, err := ctx.NewCompChannel()
		if err != nil {
			t.Fatal(err)
		}
		cq, err := ctx.CreateCQ(64, ch, 0)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := Listen(netip.AddrPortFrom(addr, 0), 1)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []func() error{ln.Close, cq.Close, ch.Close, mr.Close, pd.Close, buf.Close, ctx.Close} {
			if err := c(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := 0; i < 20; i++ { // warm up lazily allocated library state
		cycle()
	}
	fd0, rss0 := countFDs(t), rssKiB(t)
	for i := 0; i < 1000; i++ {
		cycle()
	}
	for i := 0; i < 50; i++ {
		cli, srv := dial(t, 4096)
		cli.close()
		srv.close()
	}
	fd1, rss1 := countFDs(t), rssKiB(t)
	t.Logf("fds %d -> %d, rss %d KiB -> %d KiB", fd0, fd1, rss0, rss1)
	if fd1 != fd0 {
		t.Errorf("file descriptors: %d before, %d after", fd0, fd1)
	}
	if rss1-rss0 > 16<<10 {
		t.Errorf("RSS grew by %d KiB", rss1-rss0)
	}
}

// TestMemlockHint registers more memory than a small locked-memory limit
// allows, in a child process without CAP_IPC_LOCK: the error says what limit
// to raise.
func TestMemlockHint(t *testing.T) {
	dev := testDev(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) not found")
	}
	cmd := exec.Command(setpriv, "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "--",
		os.Args[0], "-test.run=^TestHelperMemlock$", "-test.v")
	cmd.Env = append(os.Environ(), "RBD_VERBS_HELPER_MEMLOCK="+dev)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "HINT-OK") {
		t.Fatalf("helper output:\n%s", out)
	}
}

// TestHelperMemlock is the child of TestMemlockHint.
func TestHelperMemlock(t *testing.T) {
	dev := os.Getenv("RBD_VERBS_HELPER_MEMLOCK")
	if dev == "" {
		t.Skip("helper process only")
	}
	lim := unix.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		t.Fatal(err)
	}
	ctx, err := OpenDevice(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Close()
	pd, err := ctx.AllocPD()
	if err != nil {
		t.Fatal(err)
	}
	defer pd.Close()
	buf, err := AllocBuffer(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Close()
	mr, err := pd.Register(buf, AccessLocalWrite)
	if err == nil {
		mr.Close()
		t.Fatal("registered 16 MiB under a 1 MiB locked-memory limit without CAP_IPC_LOCK")
	}
	t.Logf("%v", err)
	if !errors.Is(err, syscall.ENOMEM) || !strings.Contains(err.Error(), "ibv_reg_mr") ||
		!strings.Contains(err.Error(), "locked-memory limit is 1024 KiB") || !strings.Contains(err.Error(), "LimitMEMLOCK=infinity") {
		t.Fatalf("error does not say what to raise: %v", err)
	}
	fmt.Println("HINT-OK")
}
