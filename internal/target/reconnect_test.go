package target_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"rbd/internal/client"
	"rbd/internal/target"
	"rbd/internal/transport/memt"
	"rbd/internal/wire"
)

// fastReconnect makes a session reconnect within milliseconds.
func fastReconnect(limit time.Duration) func(*client.Config) {
	return func(c *client.Config) {
		c.Queue.ReconnectDelay, c.Queue.ReconnectDelayMax, c.Queue.CtrlLossTimeout = time.Millisecond, 5*time.Millisecond, limit
	}
}

// verifiedIO runs writers that each write a block and read it back, over
// and over, until stop; it returns how many pairs passed and the first
// failure.
func verifiedIO(t *testing.T, qs []*client.Queue, workers int, stop <-chan struct{}) (func() (int, error), *sync.WaitGroup) {
	var mu sync.Mutex
	var pairs int
	var first error
	var wg sync.WaitGroup
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			q := qs[g%len(qs)]
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				off := uint64(g*64+k%64) * 16 << 10
				data := random(rng, 16<<10)
				if _, st := do(t, q, wire.OpWrite, 0, off, data, 0); st != wire.StatusOK {
					mu.Lock()
					first = errorf("worker %d: WRITE at %d: %v", g, off, st)
					mu.Unlock()
					return
				}
				got, st := do(t, q, wire.OpRead, 0, off, nil, len(data))
				if st != wire.StatusOK || !bytes.Equal(got, data) {
					mu.Lock()
					first = errorf("worker %d: READ at %d: %v, equal %v", g, off, st, bytes.Equal(got, data))
					mu.Unlock()
					return
				}
				mu.Lock()
				pairs++
				mu.Unlock()
			}
		}()
	}
	return func() (int, error) { mu.Lock(); defer mu.Unlock(); return pairs, first }, &wg
}

type testError string

func (e testError) Error() string { return string(e) }
func errorf(format string, args ...any) error {
	return testError(fmt.Sprintf(format, args...))
}

// TestReconnectResends: connections are dropped under verified I/O, in the
// middle of commands; every command is sent again on the next connection and
// completes with success: no error reaches the caller, every block reads
// back as written, and the reconnects and resends are counted.
func TestReconnectResends(t *testing.T) {
	for _, inlineIO := range []time.Duration{time.Second, -1} { // I/O in the loop, in workers
		t.Run(map[bool]string{true: "loop", false: "workers"}[inlineIO > 0], func(t *testing.T) {
			net := memt.New(memt.Options{Seed: 3})
			img := image(t, imageSize)
			serve(t, net, func(c *target.Config) { c.InlineIO = inlineIO }, target.ExportConfig{Path: img})
			sess := dial(t, net, img, 2, fastReconnect(10*time.Second))
			stop := make(chan struct{})
			result, wg := verifiedIO(t, sess.Queues(), 4, stop)
			const drops = 6
			for i := range drops {
				time.Sleep(30 * time.Millisecond)
				conns := net.Conns()
				c := conns[len(conns)-1-i%2] // the newest connection of one queue or the other
				if i%2 == 0 {
					c.DropAfter(i) // in the middle of a burst
				} else {
					c.Drop()
				}
			}
			time.Sleep(100 * time.Millisecond)
			close(stop)
			wg.Wait()
			pairs, err := result()
			if err != nil {
				t.Fatal(err)
			}
			snap := sess.Stats.Snapshot()
			t.Logf("%d verified write+read pairs across %d drops; %d reconnects, %d commands resent", pairs, drops, snap.Reconnects, snap.Resent)
			if pairs == 0 || snap.Reconnects < 2 {
				t.Fatalf("%d pairs, %d reconnects: the test did not exercise reconnecting", pairs, snap.Reconnects)
			}
			for _, q := range sess.Queues() {
				if st := q.State(); st.State != client.StateConnected {
					t.Errorf("queue %d: %+v", q.Index(), st)
				}
			}
		})
	}
}

// TestTargetRestart: the target goes away (all its connections end) and a
// new one comes back at the same address; commands issued meanwhile wait and
// then complete, and what was written before reads back.
func TestTargetRestart(t *testing.T) {
	net := memt.New(memt.Options{})
	img := image(t, imageSize)
	srv1, stop1 := serveStoppable(t, net, img)
	sess := dial(t, net, img, 1, fastReconnect(10*time.Second))
	q := sess.Queues()[0]
	data := random(rand.New(rand.NewPCG(1, 2)), 64<<10)
	if _, st := do(t, q, wire.OpWrite, 0, 1<<20, data, 0); st != wire.StatusOK {
		t.Fatalf("WRITE: %v", st)
	}
	_ = srv1
	stop1() // the target is gone
	done := make(chan []byte, 1)
	go func() { got, _ := do(t, q, wire.OpRead, 0, 1<<20, nil, len(data)); done <- got }()
	time.Sleep(50 * time.Millisecond)
	if st := q.State(); st.State != client.StateReconnecting || st.Attempt < 1 {
		t.Fatalf("while the target is away: %+v", st)
	}
	select {
	case <-done:
		t.Fatal("a READ completed while no target was there")
	default:
	}
	serveStoppable(t, net, img) // back
	select {
	case got := <-done:
		if !bytes.Equal(got, data) {
			t.Fatal("data after the restart differs")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the READ did not complete after the target came back")
	}
	if st := q.State(); st.State != client.StateConnected {
		t.Fatalf("after the restart: %+v", st)
	}
}

// TestCtrlLossTimeout: when no target comes back within CtrlLossTimeout,
// the commands waiting fail with ESHUTDOWN and the queue is failed.
func TestCtrlLossTimeout(t *testing.T) {
	net := memt.New(memt.Options{})
	img := image(t, imageSize)
	_, stop := serveStoppable(t, net, img)
	sess := dial(t, net, img, 1, fastReconnect(200*time.Millisecond))
	q := sess.Queues()[0]
	stop()
	t0 := time.Now()
	_, st := do(t, q, wire.OpRead, 0, 0, nil, 4096)
	if el := time.Since(t0); st != wire.StatusShutdown || el > 5*time.Second {
		t.Fatalf("READ with no target: %v after %v, want ESHUTDOWN after about 200ms", st, el)
	}
	<-q.Done()
	if st := q.State(); st.State != client.StateFailed || st.LastErr == "" {
		t.Fatalf("after ctrl-loss-timeout: %+v", st)
	}
	if _, err := q.Acquire(context.Background()); err == nil {
		t.Fatal("a failed queue still hands out slots")
	}
}

// TestFencing: a write stalled in the old connection's backend I/O finishes
// before the replacing connection's OPEN is answered, so the resent (newer)
// write to the same block lands last.
func TestFencing(t *testing.T) {
	net := memt.New(memt.Options{})
	img := image(t, imageSize)
	gate := make(chan struct{})
	var first atomic.Bool
	serve(t, net, func(c *target.Config) {
		c.InlineIO = -1 // in workers, so that the hook can stall one
		c.BeforeIO = func(op wire.Op, off uint64) {
			if op == wire.OpWrite && off == 2<<20 && !first.Swap(true) {
				<-gate // only the first copy of the write stalls
			}
		}
	}, target.ExportConfig{Path: img})
	sess := dial(t, net, img, 1, fastReconnect(10*time.Second))
	q := sess.Queues()[0]
	old := bytes.Repeat([]byte{0xaa}, 4096)
	newer := bytes.Repeat([]byte{0x55}, 4096)
	res := make(chan wire.Status, 1)
	go func() { _, st := do(t, q, wire.OpWrite, 0, 2<<20, old, 0); res <- st }()
	time.Sleep(30 * time.Millisecond) // the old write is stalled in the target's worker
	net.Conns()[0].Drop()
	// The write is resent on the new connection. Without a fence it would
	// complete while its first copy is still stalled, the newer write would
	// follow, and the stalled copy would land last.
	var st wire.Status
	select {
	case st = <-res:
	case <-time.After(150 * time.Millisecond):
		close(gate) // fenced: the OPEN waits for the stalled write; let it land
		st = <-res
		gate = nil
	}
	if st != wire.StatusOK {
		t.Fatalf("resent WRITE: %v", st)
	}
	if _, st := do(t, q, wire.OpWrite, 0, 2<<20, newer, 0); st != wire.StatusOK {
		t.Fatalf("newer WRITE: %v", st)
	}
	if gate != nil {
		close(gate) // (no fence) the stalled copy lands now
		time.Sleep(50 * time.Millisecond)
	}
	if got := fileAt(t, img, 2<<20, 4096); !bytes.Equal(got, newer) {
		t.Fatalf("the block holds %#x..., want the newer write: the old connection's write landed after it", got[:4])
	}
}

// serveStoppable is serve with a stop function instead of the cleanup.
func serveStoppable(t *testing.T, net *memt.Network, img string) (*target.Server, func()) {
	t.Helper()
	return serveStoppableExport(t, net, target.ExportConfig{Path: img})
}

// serveStoppableExport is serveStoppable for one export configured as ex.
func serveStoppableExport(t *testing.T, net *memt.Network, ex target.ExportConfig) (*target.Server, func()) {
	t.Helper()
	srv, err := target.NewServer(target.Config{Listen: []netip.AddrPort{targetAddr}, Exports: []target.ExportConfig{ex}, Transport: net, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return srv, stop
}

// TestTargetStopUnderIO: the target stops (SIGTERM's path: Server.Close)
// while verified I/O runs, and a new one starts: requests running finish
// and are answered, those arriving during the stop are sent again after the
// reconnect, and no command fails.
func TestTargetStopUnderIO(t *testing.T) {
	net := memt.New(memt.Options{})
	img := image(t, imageSize)
	_, stop1 := serveStoppable(t, net, img)
	sess := dial(t, net, img, 2, fastReconnect(10*time.Second))
	halt := make(chan struct{})
	result, wg := verifiedIO(t, sess.Queues(), 4, halt)
	time.Sleep(50 * time.Millisecond)
	stop1()
	time.Sleep(50 * time.Millisecond)
	serveStoppable(t, net, img)
	time.Sleep(100 * time.Millisecond)
	close(halt)
	wg.Wait()
	pairs, err := result()
	if err != nil {
		t.Fatal(err)
	}
	snap := sess.Stats.Snapshot()
	t.Logf("%d verified pairs across a target stop and start; %d reconnects, %d resent", pairs, snap.Reconnects, snap.Resent)
	if snap.Reconnects < 2 {
		t.Fatalf("%d reconnects: both queues should have reconnected", snap.Reconnects)
	}
}

// TestIdleTimeout: an initiator that goes silent (its host died) loses its
// connections after the target's IdleTimeout, and with them its export's
// writer claim: another initiator can open the export read-write. One that
// lives sends heartbeats while idle and keeps its connection.
func TestIdleTimeout(t *testing.T) {
	net := memt.New(memt.Options{})
	img := image(t, imageSize)
	srv := serve(t, net, func(c *target.Config) { c.IdleTimeout = 150 * time.Millisecond }, target.ExportConfig{Path: img})
	live := dial(t, net, img, 1, func(c *client.Config) {
		c.Queue.KeepAlive, c.Queue.KeepAliveTimeout = 20*time.Millisecond, time.Second
	})
	time.Sleep(500 * time.Millisecond) // idle, with heartbeats
	if _, st := do(t, live.Queues()[0], wire.OpRead, 0, 0, nil, 4096); st != wire.StatusOK {
		t.Fatalf("READ after an idle time with heartbeats: %v", st)
	}
	if n := live.Stats.Snapshot().Reconnects; n != 0 {
		t.Fatalf("the live initiator was dropped (%d reconnects)", n)
	}
	live.Close()
	// the target lets go of the claim once it has seen the DISCONNECT and
	// the connection's end, a moment after Close returns
	for deadline := time.Now().Add(5 * time.Second); len(srv.Sessions()) != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the closed session is still on the target after 5s: %+v", srv.Sessions())
		}
	}

	dead := dial(t, net, img, 1, func(c *client.Config) { c.Queue.NoReconnect = true }) // heartbeats every 5 s
	conn := net.Conns()[len(net.Conns())-1]
	conn.Freeze(memt.Initiator) // its host is gone: nothing more comes from it
	time.Sleep(600 * time.Millisecond)
	// the claim is free: another session may write
	other := dial(t, net, img, 1)
	data := bytes.Repeat([]byte{7}, 4096)
	if _, st := do(t, other.Queues()[0], wire.OpWrite, 0, 0, data, 0); st != wire.StatusOK {
		t.Fatalf("WRITE of a new session after the silent one was dropped: %v", st)
	}
	_ = dead
}

// TestFastIOFail: with a fast-io-fail-timeout of 300 ms and the target
// gone, a command waiting for the reconnect fails after about 300 ms, new
// ones fail at once, the queue goes on reconnecting (it is not failed), and
// once a target is back, I/O works again on the same queue.
func TestFastIOFail(t *testing.T) {
	net := memt.New(memt.Options{})
	img := image(t, imageSize)
	_, stop := serveStoppable(t, net, img)
	sess := dial(t, net, img, 1, fastReconnect(time.Minute), func(c *client.Config) {
		c.Queue.FastIOFailTimeout = 300 * time.Millisecond
	})
	q := sess.Queues()[0]
	data := bytes.Repeat([]byte{0x3c}, 4096)
	if _, st := do(t, q, wire.OpWrite, 0, 0, data, 0); st != wire.StatusOK {
		t.Fatalf("WRITE: %v", st)
	}
	t0 := time.Now() // the connection is lost after this
	stop()
	_, st := do(t, q, wire.OpRead, 0, 0, nil, 4096)
	el := time.Since(t0)
	if st != wire.StatusShutdown || el < 290*time.Millisecond || el > 5*time.Second {
		t.Fatalf("READ with the target gone: %v after %v, want ESHUTDOWN after about 300ms", st, el)
	}
	s, err := q.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	err = s.Submit(wire.OpRead, 0, 0, 4096, func(*client.Slot, client.Completion) { t.Error("a refused command completed") })
	s.Release()
	if !errors.Is(err, client.ErrReconnecting) {
		t.Fatalf("a command submitted while failing fast: %v, want ErrReconnecting", err)
	}
	if st := q.State(); st.State != client.StateReconnecting {
		t.Fatalf("while failing fast the queue is %+v, want reconnecting", st)
	}
	serve(t, net, nil, target.ExportConfig{Path: img})
	deadline := time.Now().Add(10 * time.Second)
	for q.State().State != client.StateConnected {
		if time.Now().After(deadline) {
			t.Fatalf("no reconnect: %+v", q.State())
		}
		time.Sleep(5 * time.Millisecond)
	}
	got, st := do(t, q, wire.OpRead, 0, 0, nil, 4096)
	if st != wire.StatusOK || !bytes.Equal(got, data) {
		t.Fatalf("READ after the reconnect: %v", st)
	}
}

// TestWithdraw: Queue.Withdraw gives up a tagged command that waits for a
// reconnect (it completes at once with ESHUTDOWN and is never sent again,
// so its data never lands), leaves the commands of other owners to be sent
// again, and does not touch a command out on a live connection (it counts
// it, and the command completes as usual).
func TestWithdraw(t *testing.T) {
	net := memt.New(memt.Options{})
	img := image(t, imageSize)
	gate := make(chan struct{})
	var stalled atomic.Bool
	_, stop := serveStoppableExport(t, net, target.ExportConfig{Path: img})
	sess := dial(t, net, img, 1, fastReconnect(time.Minute))
	q := sess.Queues()[0]
	submit := func(owner uint64, off uint64, b byte) chan client.Completion {
		t.Helper()
		s, err := q.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		s.Owner = owner
		copy(s.Buf, bytes.Repeat([]byte{b}, 4096))
		ch := make(chan client.Completion, 1)
		if err := s.Submit(wire.OpWrite, 0, off, 4096, func(s *client.Slot, c client.Completion) { ch <- c; s.Release() }); err != nil {
			t.Fatal(err)
		}
		return ch
	}
	// the target is gone: both commands wait for the reconnect
	stop()
	for q.State().State != client.StateReconnecting {
		time.Sleep(time.Millisecond)
	}
	gone := submit(7, 0, 0xaa)
	kept := submit(8, 1<<20, 0xbb)
	if w, live := q.Withdraw(0); w != 0 || live != 0 {
		t.Fatalf("Withdraw(0) = %d, %d: owner 0 is no owner", w, live)
	}
	if w, live := q.Withdraw(7); w != 1 || live != 0 {
		t.Fatalf("Withdraw(7) while reconnecting = %d withdrawn, %d live; want 1, 0", w, live)
	}
	if c := <-gone; c.Status != wire.StatusShutdown {
		t.Fatalf("withdrawn command completed with %v, want ESHUTDOWN", c.Status)
	}
	// a target is back (stalling writes at 2 MiB, the next test)
	serve(t, net, func(c *target.Config) {
		c.InlineIO = -1
		c.BeforeIO = func(op wire.Op, off uint64) {
			if op == wire.OpWrite && off == 2<<20 && !stalled.Swap(true) {
				<-gate
			}
		}
	}, target.ExportConfig{Path: img})
	if c := <-kept; c.Status != wire.StatusOK {
		t.Fatalf("the other owner's command after the reconnect: %v", c.Status)
	}
	if got := fileAt(t, img, 0, 4096); got[0] == 0xaa {
		t.Fatal("the withdrawn write landed")
	}
	if got := fileAt(t, img, 1<<20, 4096); got[0] != 0xbb {
		t.Fatalf("the kept write did not land: %#x", got[0])
	}
	// out on a live connection: counted, left alone
	live := submit(9, 2<<20, 0xcc)
	for !stalled.Load() {
		time.Sleep(time.Millisecond)
	}
	if w, n := q.Withdraw(9); w != 0 || n != 1 {
		t.Fatalf("Withdraw(9) of a command on a live connection = %d withdrawn, %d live; want 0, 1", w, n)
	}
	close(gate)
	if c := <-live; c.Status != wire.StatusOK {
		t.Fatalf("the live command: %v", c.Status)
	}
	if got := fileAt(t, img, 2<<20, 4096); got[0] != 0xcc {
		t.Fatalf("the live write did not land: %#x", got[0])
	}
}
