// Command verbsbench measures RDMA WRITE and RDMA READ throughput through
// rbd's internal/verbs, the way perftest's ib_write_bw / ib_read_bw do with
// -R (rdma_cm), -q 1 and -D (duration), so that the two can be compared on
// the same device (bench/verbs.sh runs both in the guest).
//
// It runs as two processes, like perftest:
//
//	verbsbench -role server -addr 10.77.0.1:18600
//	verbsbench -role client -addr 10.77.0.1:18600 -op write -size 4096 -qd 32 -duration 5s
//	verbsbench report -in runs.jsonl -md verbs.md -json verbs.json   (bench/verbs.sh's summary)
//
// The server listens, accepts one connection, registers a buffer with remote
// read and write access and hands its address and rkey to the client in the
// accept's private data; then it only waits for the disconnect (the passive
// side of RDMA WRITE/READ does no work in user space). The client checks with
// one WRITE and one READ that data arrives, then keeps -qd work requests of
// -size bytes in flight: whenever completions free room it posts a chain
// (one ibv_post_send per refill); it signals the last work request of every
// group of -signal (default 1: every one, so that each completion frees a
// slot at once; a completion then credits its whole group, and the send
// queue never holds more than -qd) and reaps completions in batches of up to
// 64 per ibv_poll_cq. -poll event (the default) reaps with CQ.Wait, which
// parks on the completion channel through Go's netpoller when the CQ is empty,
// as rbd does; -poll busy spins on CQ.Poll, as perftest does. All work
// requests use the same -size bytes on both sides unless -slots says
// otherwise (perftest too). -role both runs the two sides as goroutines of one
// process (a quick check; the benchmark uses two processes, like perftest).
//
// Timing follows perftest's duration mode: the first and last -margin
// (default: a quarter of the duration in whole seconds, perftest's default)
// are not counted; bandwidth is the bytes of the work requests completed in
// between over that time, in MB/s with perftest's MB = 2^20 bytes. The result
// is one JSON line on stdout.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"rbd/internal/verbs"
)

type config struct {
	role     string
	addr     netip.AddrPort
	op       string
	size     int
	qd       int
	signal   int
	slots    int
	duration time.Duration
	margin   time.Duration
	poll     string
	spin     int
	verify   bool
	timeout  time.Duration
	cpuprof  string
	lock     bool
}

// Result is the JSON line verbsbench prints.
type Result struct {
	Tool      string  `json:"tool"`
	Role      string  `json:"role"`
	Op        string  `json:"op,omitempty"`
	Device    string  `json:"device,omitempty"`
	Transport string  `json:"transport,omitempty"`
	Addr      string  `json:"addr"`
	Size      int     `json:"size,omitempty"`
	QD        int     `json:"qd,omitempty"`
	Signal    int     `json:"signal_every,omitempty"`
	Slots     int     `json:"slots,omitempty"`
	Poll      string  `json:"poll,omitempty"`
	ReadDepth int     `json:"read_depth,omitempty"`
	Duration  float64 `json:"duration_s,omitempty"`
	Measured  float64 `json:"measured_s,omitempty"`
	Ops       uint64  `json:"ops,omitempty"`
	Bytes     uint64  `json:"bytes,omitempty"`
	MBps      float64 `json:"mb_s"` // MB = 2^20 bytes, as perftest
	OpsPerSec float64 `json:"ops_s"`
	TotalOps  uint64  `json:"total_ops,omitempty"`
	Posts     uint64  `json:"post_calls,omitempty"`
	Polls     uint64  `json:"poll_calls,omitempty"`
	EmptyPoll uint64  `json:"empty_polls,omitempty"`
	CQWaits   uint64  `json:"cq_waits,omitempty"`
	UserCPU   float64 `json:"user_cpu_s,omitempty"`
	SysCPU    float64 `json:"sys_cpu_s,omitempty"`
	Verified  bool    `json:"verified,omitempty"`
	Error     string  `json:"error,omitempty"`
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "report" {
		if err := report(os.Args[2:]); err != nil {
			fatal(err)
		}
		return
	}
	var c config
	var addr string
	flag.StringVar(&c.role, "role", "client", "server, client or both (two goroutines in one process)")
	flag.StringVar(&addr, "addr", "10.77.0.1:18600", "the server's rdma_cm address (it picks the device)")
	flag.StringVar(&c.op, "op", "write", "write or read")
	flag.IntVar(&c.size, "size", 4096, "bytes per work request")
	flag.IntVar(&c.qd, "qd", 32, "work requests kept in flight")
	flag.IntVar(&c.signal, "signal", 1, "signal every Nth work request (a completion then credits N); qd must be a multiple")
	flag.IntVar(&c.slots, "slots", 1, "distinct size-byte buffers the work requests cycle through, locally and remotely (perftest: 1)")
	flag.DurationVar(&c.duration, "duration", 5*time.Second, "length of the run")
	flag.DurationVar(&c.margin, "margin", -1, "time not measured at the start and at the end (default: duration/4 in whole seconds, as perftest)")
	flag.StringVar(&c.poll, "poll", "event", "event: CQ.Wait (poll, and park on the completion channel when empty, as rbd does); busy: spin on CQ.Poll like perftest")
	flag.IntVar(&c.spin, "spin", 0, "with -poll event: empty polls before parking")
	flag.BoolVar(&c.verify, "verify", true, "client: check with one WRITE and one READ that data arrives before measuring")
	flag.DurationVar(&c.timeout, "timeout", 30*time.Second, "connection setup timeout (the client retries while nothing listens)")
	flag.BoolVar(&c.lock, "lockthread", false, "client: run the loop on a locked OS thread")
	flag.StringVar(&c.cpuprof, "cpuprofile", "", "client: write a CPU profile of the measured run")
	flag.Parse()
	var err error
	if c.addr, err = netip.ParseAddrPort(addr); err != nil {
		fatal(fmt.Errorf("-addr: %w", err))
	}
	if c.margin < 0 {
		c.margin = time.Duration(int(c.duration/time.Second)/4) * time.Second
	}
	switch {
	case c.op != "write" && c.op != "read":
		err = fmt.Errorf("-op %q: write or read", c.op)
	case c.size <= 0 || c.qd <= 0 || c.slots <= 0:
		err = errors.New("-size, -qd and -slots must be positive")
	case c.signal < 1 || c.signal > c.qd || c.qd%c.signal != 0:
		err = fmt.Errorf("-signal %d must divide -qd %d", c.signal, c.qd)
	case c.qd > 1024:
		err = errors.New("-qd at most 1024")
	case c.poll != "busy" && c.poll != "event":
		err = fmt.Errorf("-poll %q: busy or event", c.poll)
	case 2*c.margin >= c.duration:
		err = errors.New("-margin must be less than half of -duration")
	}
	if err != nil {
		fatal(err)
	}

	var res Result
	switch c.role {
	case "server":
		res, err = server(c, nil)
	case "client":
		res, err = client(c)
	case "both":
		ready := make(chan netip.AddrPort, 1)
		srv := make(chan error, 1)
		go func() { _, err := server(c, ready); srv <- err }()
		select {
		case c.addr = <-ready:
		case err := <-srv:
			fatal(err)
		}
		res, err = client(c)
		if e := <-srv; err == nil && e != nil {
			err = fmt.Errorf("server: %w", e)
		}
	default:
		err = fmt.Errorf("-role %q: server, client or both", c.role)
	}
	if err != nil {
		res.Error = err.Error()
	}
	out(res)
	if err != nil {
		fmt.Fprintln(os.Stderr, "verbsbench:", err)
		os.Exit(1)
	}
}

func out(r Result) {
	r.Tool = "verbsbench"
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "verbsbench:", err)
	os.Exit(2)
}

// The accept's private data: the server's buffer.
const helloMagic = "VBENCH1"

type remoteBuf struct {
	addr uint64
	rkey uint32
	len  uint32
}

func (r remoteBuf) marshal() []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b, r.addr)
	binary.LittleEndian.PutUint32(b[8:], r.rkey)
	binary.LittleEndian.PutUint32(b[12:], r.len)
	return b
}

func parseRemote(b []byte) (remoteBuf, error) {
	if len(b) < 16 {
		return remoteBuf{}, fmt.Errorf("accept private data too short (%d bytes)", len(b))
	}
	return remoteBuf{binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint32(b[8:]), binary.LittleEndian.Uint32(b[12:])}, nil
}

func caps(qd int) verbs.QPCaps {
	return verbs.QPCaps{MaxSendWR: qd, MaxRecvWR: 1, MaxSendSGE: 1, MaxRecvSGE: 1}
}

// server accepts one connection, lends it a buffer and waits for its end.
func server(c config, ready chan<- netip.AddrPort) (Result, error) {
	res := Result{Role: "server", Addr: c.addr.String()}
	ln, err := verbs.Listen(c.addr, 4)
	if err != nil {
		return res, err
	}
	defer ln.Close()
	if ready != nil {
		ready <- ln.Addr()
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	var req *verbs.ConnRequest
	for {
		if req, err = ln.Accept(ctx); err != nil {
			return res, fmt.Errorf("accept: %w", err)
		}
		if string(req.PrivateData[:min(len(req.PrivateData), len(helloMagic))]) == helloMagic {
			break
		}
		req.Reject([]byte("not verbsbench"))
	}
	ep, err := verbs.NewEndpoint(req.ID, verbs.EndpointConfig{QP: caps(1)})
	if err != nil {
		req.Reject([]byte("verbsbench: no resources")) // frees the id
		return res, err
	}
	defer ep.Close()
	info, _ := ep.ID.Context().Info()
	res.Device, res.Transport = info.Name, info.Transport.String()
	buf, err := verbs.AllocBuffer(c.size * c.slots)
	if err != nil {
		return res, err
	}
	defer buf.Close()
	mr, err := ep.Register(buf, verbs.AccessLocalWrite|verbs.AccessRemoteWrite|verbs.AccessRemoteRead)
	if err != nil {
		return res, err
	}
	pd := remoteBuf{addr: mr.Addr(), rkey: mr.RKey, len: uint32(buf.Len())}.marshal()
	// the client's READ depth, within what this device serves
	rd := req.ResponderResources
	if m := info.Attr.MaxQPRdAtom; m > 0 && int(rd) > m {
		rd = uint8(m)
	}
	if err := ep.ID.Accept(ctx, verbs.ConnParam{PrivateData: pd, ResponderResources: rd, InitiatorDepth: 0, RetryCount: 7, RNRRetryCount: 7}); err != nil {
		return res, fmt.Errorf("accept: %w", err)
	}
	res.ReadDepth = int(rd)
	// the run happens now; wait for the client to go
	if err := ep.ID.WaitDisconnect(context.Background()); err != nil {
		return res, err
	}
	return res, nil
}

// connect resolves and connects, retrying while nothing listens yet. It
// returns the device and the RDMA READ depth it asked for.
func connect(ctx context.Context, c config) (*verbs.Endpoint, verbs.CMEvent, verbs.DeviceInfo, int, error) {
	for {
		id, err := verbs.Resolve(ctx, netip.AddrPort{}, c.addr)
		if err != nil {
			return nil, verbs.CMEvent{}, verbs.DeviceInfo{}, 0, err
		}
		info, err := id.Context().Info()
		if err != nil {
			id.Close()
			return nil, verbs.CMEvent{}, info, 0, err
		}
		// RDMA READs kept outstanding: as many as the queue depth, within the
		// device's limit (perftest takes the device's limit too).
		rd := min(c.qd, 255)
		if m := info.Attr.MaxQPInitRdAtom; m > 0 {
			rd = min(rd, m)
		}
		if c.op == "write" {
			rd = 1 // for the verification's READ
		}
		ep, err := verbs.NewEndpoint(id, verbs.EndpointConfig{QP: caps(c.qd), CQEntries: c.qd + 1})
		if err != nil {
			id.Close() // on failure the id stays ours
			return nil, verbs.CMEvent{}, info, 0, err
		}
		ev, err := ep.ID.Connect(ctx, verbs.ConnParam{PrivateData: []byte(helloMagic), ResponderResources: 0, InitiatorDepth: uint8(rd), RetryCount: 7, RNRRetryCount: 7})
		if err == nil {
			return ep, ev, info, rd, nil
		}
		ep.Close()
		var rej *verbs.RejectedError
		if !errors.As(err, &rej) || !rej.NoListener() {
			return nil, verbs.CMEvent{}, info, 0, err
		}
		select {
		case <-ctx.Done():
			return nil, verbs.CMEvent{}, info, 0, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func client(c config) (Result, error) {
	res := Result{Role: "client", Op: c.op, Addr: c.addr.String(), Size: c.size, QD: c.qd, Signal: c.signal,
		Slots: c.slots, Poll: c.poll, Duration: c.duration.Seconds()}
	if c.poll == "event" && c.spin > 0 {
		res.Poll = fmt.Sprintf("event+spin%d", c.spin)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	ep, ev, info, rd, err := connect(ctx, c)
	res.Device, res.Transport = info.Name, info.Transport.String()
	if err != nil {
		return res, err
	}
	defer ep.Close()
	if c.op == "read" {
		// the server may have granted fewer
		res.ReadDepth = rd
		if ev.ResponderResources > 0 && int(ev.ResponderResources) < rd {
			res.ReadDepth = int(ev.ResponderResources)
		}
	}
	remote, err := parseRemote(ev.PrivateData)
	if err != nil {
		return res, err
	}
	if int(remote.len) < c.size*c.slots {
		return res, fmt.Errorf("server buffer %d bytes, need %d", remote.len, c.size*c.slots)
	}
	// local buffer: the work requests' slots, plus one for the verification
	buf, err := verbs.AllocBuffer(c.size * (c.slots + 1))
	if err != nil {
		return res, err
	}
	defer buf.Close()
	mr, err := ep.Register(buf, verbs.AccessReadSink)
	if err != nil {
		return res, err
	}
	if c.verify {
		if err := verify(ep, mr, remote, c.size, c.slots); err != nil {
			return res, fmt.Errorf("verify: %w", err)
		}
		res.Verified = true
	}
	var stop func()
	if c.cpuprof != "" {
		f, err := os.Create(c.cpuprof)
		if err != nil {
			return res, err
		}
		pprof.StartCPUProfile(f)
		stop = func() { pprof.StopCPUProfile(); f.Close() }
	}
	var ru0 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	st, err := run(ep, mr, remote, c)
	var ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	if stop != nil {
		stop()
	}
	res.Measured = st.measured.Seconds()
	res.Ops = st.ops
	res.Bytes = st.ops * uint64(c.size)
	if st.measured > 0 {
		res.MBps = float64(res.Bytes) / float64(1<<20) / st.measured.Seconds()
		res.OpsPerSec = float64(st.ops) / st.measured.Seconds()
	}
	res.TotalOps, res.Posts, res.Polls, res.EmptyPoll = st.total, st.posts, st.polls, st.empty
	res.CQWaits = ep.CQ.Waits()
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	res.UserCPU = tv(ru1.Utime) - tv(ru0.Utime)
	res.SysCPU = tv(ru1.Stime) - tv(ru0.Stime)
	if err == nil && st.ops == 0 {
		err = errors.New("no work request completed in the measured time")
	}
	return res, err
}

// verify writes a pattern to the server and reads it back into another slot.
func verify(ep *verbs.Endpoint, mr *verbs.MR, remote remoteBuf, size, slots int) error {
	b := mr.Bytes()
	src, back := b[:size], b[slots*size:(slots+1)*size]
	for i := range src {
		src[i] = byte(i*7 + 3)
	}
	clear(back)
	w := verbs.SendWR{ID: 1, Op: verbs.OpRDMAWrite, Flags: verbs.Signaled, NumSGE: 1, RemoteAddr: remote.addr, RKey: remote.rkey}
	w.SGE[0] = mr.SGE(0, size)
	r := verbs.SendWR{ID: 1, Op: verbs.OpRDMARead, Flags: verbs.Signaled, NumSGE: 1, RemoteAddr: remote.addr, RKey: remote.rkey}
	r.SGE[0] = mr.SGE(slots*size, size)
	if _, err := ep.QP.PostSend([]verbs.SendWR{w, r}); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wcs := make([]verbs.WC, 4)
	for got := 0; got < 2; {
		n, err := ep.CQ.Wait(ctx, wcs)
		if err != nil {
			return err
		}
		for _, wc := range wcs[:n] {
			if err := wc.Err(); err != nil {
				return err
			}
		}
		got += n
	}
	for i := range back {
		if back[i] != src[i] {
			return fmt.Errorf("byte %d read back as %#x, written %#x", i, back[i], src[i])
		}
	}
	return nil
}

type stats struct {
	measured            time.Duration
	ops, total          uint64
	posts, polls, empty uint64
}

// Phases of a run, advanced by timers (as perftest's SIGALRM).
const (
	phaseWarmup = iota
	phaseSample
	phaseCooldown
	phaseStop
)

// run keeps c.qd work requests in flight for c.duration.
func run(ep *verbs.Endpoint, mr *verbs.MR, remote remoteBuf, c config) (stats, error) {
	var st stats
	op := verbs.OpRDMAWrite
	if c.op == "read" {
		op = verbs.OpRDMARead
	}
	// A ring of prepared work requests: entry i uses slot i%slots on both
	// sides; the last of every group of c.signal is signaled and its ID is the
	// number of work requests its completion stands for.
	ring := make([]verbs.SendWR, 2*c.qd)
	for i := range ring {
		s := i % c.slots
		w := verbs.SendWR{Op: op, NumSGE: 1, RemoteAddr: remote.addr + uint64(s*c.size), RKey: remote.rkey}
		w.SGE[0] = mr.SGE(s*c.size, c.size)
		if (i+1)%c.signal == 0 {
			w.Flags = verbs.Signaled
			w.ID = uint64(c.signal)
		}
		ring[i] = w
	}
	var phase atomic.Int32
	advance := func(p int32) func() { // phases only move forward (timers may fire together)
		return func() {
			for o := phase.Load(); o < p && !phase.CompareAndSwap(o, p); o = phase.Load() {
			}
		}
	}
	t1 := time.AfterFunc(c.margin, advance(phaseSample))
	t2 := time.AfterFunc(c.duration-c.margin, advance(phaseCooldown))
	t3 := time.AfterFunc(c.duration, advance(phaseStop))
	defer t1.Stop()
	defer t2.Stop()
	defer t3.Stop()

	if c.lock {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	wcs := make([]verbs.WC, verbs.MaxChain)
	cq, qp := ep.CQ, ep.QP
	// a stuck connection ends in an error rather than a hang
	ctx, cancel := context.WithTimeout(context.Background(), c.duration+30*time.Second)
	defer cancel()
	var (
		inflight int // posted and not yet credited by a completion
		next     int // ring position of the next post (always a group start)
		done     uint64
		seen     int32 = phaseWarmup
		tStart   time.Time
		oStart   uint64
	)
	for {
		if p := phase.Load(); p != seen {
			now := time.Now()
			if seen < phaseSample && p >= phaseSample {
				tStart, oStart = now, done
			}
			if seen < phaseCooldown && p >= phaseCooldown {
				st.measured, st.ops = now.Sub(tStart), done-oStart
			}
			seen = p
		}
		if seen < phaseStop {
			if free := c.qd - inflight; free >= c.signal {
				n := free - free%c.signal
				if next+n > len(ring) {
					next = 0 // groups never straddle the ring's end: len(ring) = 2*qd
				}
				k, err := qp.PostSend(ring[next : next+n])
				st.posts++
				if err != nil {
					return st, fmt.Errorf("post after %d work requests: %w", done, err)
				}
				inflight += k
				next += k
			}
		} else if inflight == 0 {
			st.total = done
			return st, nil
		}
		var n int
		var err error
		if c.poll == "busy" {
			n, err = cq.Poll(wcs)
		} else {
			for i := 0; i <= c.spin && n == 0 && err == nil; i++ {
				if i == c.spin {
					n, err = cq.Wait(ctx, wcs)
				} else {
					n, err = cq.Poll(wcs)
				}
			}
		}
		st.polls++
		if err != nil {
			return st, fmt.Errorf("poll after %d work requests: %w", done, err)
		}
		if n == 0 {
			if st.empty++; st.empty%4096 == 0 && ctx.Err() != nil {
				return st, fmt.Errorf("poll after %d work requests: %w", done, ctx.Err())
			}
			continue
		}
		for i := range wcs[:n] {
			wc := &wcs[i]
			if wc.Status != verbs.WCSuccess {
				return st, fmt.Errorf("after %d work requests: %w", done, wc.Err())
			}
			inflight -= int(wc.ID)
			done += wc.ID
		}
	}
}

// ---- report: bench/verbs.sh's summary

// runLine is one line of bench/verbs.sh's runs file (perftest or verbsbench).
type runLine struct {
	Transport string  `json:"transport"`
	Device    string  `json:"device"`
	Op        string  `json:"op"`
	Size      int     `json:"size"`
	Tool      string  `json:"tool"`
	Rep       int     `json:"rep"`
	OK        bool    `json:"ok"`
	MBps      float64 `json:"mb_s"`
	OpsPerSec float64 `json:"ops_s"`
	Detail    *Result `json:"detail"` // verbsbench's own line
}

// Case is one line of the summary: a transport, op and size, both tools.
type Case struct {
	Transport   string    `json:"transport"`
	Device      string    `json:"device"`
	Op          string    `json:"op"`
	Size        int       `json:"size"`
	GoMBps      float64   `json:"go_mb_s"`
	PerftestMBs float64   `json:"perftest_mb_s"`
	Ratio       float64   `json:"ratio"` // Go / perftest (0: a side has no successful run)
	GoOps       float64   `json:"go_ops_s"`
	PerftestOps float64   `json:"perftest_ops_s"`
	GoRuns      []float64 `json:"go_runs_mb_s"`
	PerftestRun []float64 `json:"perftest_runs_mb_s"`
}

type metaFlag []string

func (m *metaFlag) String() string     { return strings.Join(*m, ",") }
func (m *metaFlag) Set(v string) error { *m = append(*m, v); return nil }

const goal = 0.8

// report turns the runs file into the Markdown table and the JSON summary.
func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	in := fs.String("in", "", "runs file (JSON lines)")
	md := fs.String("md", "", "Markdown output")
	js := fs.String("json", "", "JSON output")
	var meta metaFlag
	fs.Var(&meta, "meta", "key=value for the header (repeatable)")
	fs.Parse(args)
	data, err := os.ReadFile(*in)
	if err != nil {
		return err
	}
	var raws []json.RawMessage
	var cases []*Case
	find := func(r runLine) *Case {
		for _, c := range cases {
			if c.Transport == r.Transport && c.Op == r.Op && c.Size == r.Size {
				return c
			}
		}
		c := &Case{Transport: r.Transport, Device: r.Device, Op: r.Op, Size: r.Size}
		cases = append(cases, c)
		return c
	}
	type acc struct{ mb, ops []float64 }
	accs := map[*Case]*[2]acc{}
	how := "" // verbsbench's settings, from its first result

	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var r runLine
		if err := json.Unmarshal(line, &r); err != nil {
			return fmt.Errorf("%s: %w: %s", *in, err, line)
		}
		raws = append(raws, json.RawMessage(slices.Clone(line)))
		if d := r.Detail; how == "" && d != nil && d.Role == "client" {
			how = "every work request signaled"
			if d.Signal > 1 {
				how = fmt.Sprintf("every %d%s work request signaled", d.Signal, ordinal(d.Signal))
			}
			switch d.Poll {
			case "event":
				how += ", completions reaped with CQ.Wait (polls, and parks on the completion channel through Go's netpoller when the CQ is empty)"
			case "busy":
				how += ", completions reaped by spinning on CQ.Poll (as perftest)"
			default:
				how += ", polling " + d.Poll
			}
			if d.Slots > 1 {
				how += fmt.Sprintf(", %d buffer slots", d.Slots)
			}
		}
		c := find(r)
		if accs[c] == nil {
			accs[c] = &[2]acc{}
		}
		if !r.OK {
			continue
		}
		k := 0
		if r.Tool == "perftest" {
			k = 1
		}
		a := &accs[c][k]
		a.mb = append(a.mb, r.MBps)
		a.ops = append(a.ops, r.OpsPerSec)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	mean := func(v []float64) float64 {
		if len(v) == 0 {
			return 0
		}
		s := 0.0
		for _, x := range v {
			s += x
		}
		return s / float64(len(v))
	}
	below := 0
	for _, c := range cases {
		a := accs[c]
		c.GoRuns, c.PerftestRun = a[0].mb, a[1].mb
		c.GoMBps, c.PerftestMBs = mean(a[0].mb), mean(a[1].mb)
		c.GoOps, c.PerftestOps = mean(a[0].ops), mean(a[1].ops)
		if c.GoMBps > 0 && c.PerftestMBs > 0 {
			c.Ratio = c.GoMBps / c.PerftestMBs
		}
		if c.Ratio < goal {
			below++
		}
	}
	now := time.Now().Format(time.RFC3339)
	metaMap := map[string]string{}
	for _, kv := range meta {
		k, v, _ := strings.Cut(kv, "=")
		metaMap[k] = v
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# internal/verbs vs perftest: RDMA WRITE and READ at queue depth %s\n\n", or(metaMap["qd"], "32"))
	fmt.Fprintf(&b, "%s, guest kernel %s, %s vCPUs (qemu TCG: absolute numbers are low and vary from run to run, more so while other guests share the host), %s s per run, %s repetitions per tool in alternating order, %s s in the guest.\n\n",
		now, or(metaMap["kernel"], "?"), or(metaMap["cpus"], "?"), or(metaMap["duration_s"], "?"), or(metaMap["reps"], "?"), or(metaMap["guest_seconds"], "?"))
	b.WriteString("| transport | device | op | size | Go MB/s | perftest MB/s | Go/perftest | Go ops/s | perftest ops/s | Go runs | perftest runs |\n")
	b.WriteString("|---|---|---|---:|---:|---:|---:|---:|---:|---|---|\n")
	for _, c := range cases {
		ratio := "n/a"
		if c.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f", c.Ratio)
			if c.Ratio < goal {
				ratio += " (below 0.8)"
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %.1f | %.1f | %s | %.0f | %.0f | %s | %s |\n",
			c.Transport, c.Device, strings.ToUpper(c.Op), sizeStr(c.Size), c.GoMBps, c.PerftestMBs, ratio,
			c.GoOps, c.PerftestOps, list(c.GoRuns), list(c.PerftestRun))
	}
	if below == 0 {
		fmt.Fprintf(&b, "\nGoal Go/perftest ≥ %.1f: met in all %d cases.\n", goal, len(cases))
	} else {
		fmt.Fprintf(&b, "\nGoal Go/perftest ≥ %.1f: missed in %d of %d cases.\n", goal, below, len(cases))
	}
	fmt.Fprintf(&b, "\nMB = 2^20 bytes (perftest's unit). perftest: `ib_write_bw`/`ib_read_bw -R -d DEV -s SIZE -q 1 -t %s -D %s -F` as server and client processes. "+
		"Go: `verbsbench -role server` and `%s` (bench/verbsbench: internal/verbs, two processes, rdma_cm, "+
		"chained posts, %s, in batches of up to 64). "+
		"Both leave the first and last quarter of each run (in whole seconds) out of the measurement, as perftest does.\n",
		or(metaMap["qd"], "32"), or(metaMap["duration_s"], "5"),
		strings.TrimSpace(fmt.Sprintf("-role client -qd %s -duration %ss %s", or(metaMap["qd"], "32"), or(metaMap["duration_s"], "5"), metaMap["verbsbench_args"])), or(how, "?"))
	if *md != "" {
		if err := os.WriteFile(*md, []byte(b.String()), 0o644); err != nil {
			return err
		}
	} else {
		fmt.Print(b.String())
	}
	if *js != "" {
		doc := struct {
			Date    string            `json:"date"`
			Goal    float64           `json:"goal_ratio"`
			Meta    map[string]string `json:"meta"`
			Summary []*Case           `json:"summary"`
			Runs    []json.RawMessage `json:"runs"`
		}{now, goal, metaMap, cases, raws}
		out, err := json.MarshalIndent(doc, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*js, append(out, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func sizeStr(n int) string {
	if n%1024 == 0 {
		return fmt.Sprintf("%d KiB", n/1024)
	}
	return fmt.Sprint(n)
}

func list(v []float64) string {
	if len(v) == 0 {
		return "none"
	}
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprintf("%.1f", x)
	}
	return strings.Join(s, ", ")
}

func ordinal(n int) string {
	switch {
	case n%100 >= 11 && n%100 <= 13:
		return "th"
	case n%10 == 1:
		return "st"
	case n%10 == 2:
		return "nd"
	case n%10 == 3:
		return "rd"
	}
	return "th"
}
