package initiator

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"rbd/internal/client"
	"rbd/internal/nbd"
)

// The kernel NBD device: its sockets, and what happens when the kernel
// gives one up.
//
// The kernel marks a socket dead when a request on it runs past its
// per-request timeout (Config.Timeout), when a send on it fails, or when
// the process serving it is gone (a restarted rbdi: adopt.go). It sends the
// requests again once it has a live socket: another of the device's, or one
// handed to it with NBD_CMD_RECONFIGURE. rbdi does that at once for every
// socket the kernel drops while the device lives (kfront.serve), and orders
// each resent write after the copy of it that rbdi may still hold
// (resendGuard).

// kfront is one queue's kernel NBD socket, and the sockets that replace it.
type kfront struct {
	d   *Device
	q   *client.Queue
	cur atomic.Pointer[nbd.Conn]

	mu   sync.Mutex
	lost bool // the queue is finished for good: no socket replaces this one
}

// flush writes the replies the queue's loop queued (its batch end).
func (k *kfront) flush() {
	if c := k.cur.Load(); c != nil {
		c.Flush()
	}
}

// giveUp closes the socket of a queue that is finished for good, so that
// the kernel sends its requests on the device's other sockets; none
// replaces it.
func (k *kfront) giveUp() {
	k.mu.Lock()
	k.lost = true
	c := k.cur.Load()
	k.mu.Unlock()
	c.Close()
}

// close closes the current socket (the device is being disconnected or
// left: Device.closing is set).
func (k *kfront) close() { k.cur.Load().Close() }

// serve serves the socket and, when the kernel drops it while the device
// lives, the ones that replace it.
func (k *kfront) serve() {
	d := k.d
	defer d.wg.Done()
	delay := time.Second
	for gen := 0; ; gen++ {
		conn := k.cur.Load()
		began := time.Now()
		if gen > 0 && d.log.Enabled(context.Background(), slog.LevelDebug) {
			d.traceKernel.Store(16) // the first requests on the new socket, for the log
		}
		d.serve(conn, k.q, true)
		k.q.Kick() // serve may return with commands staged
		conn.Close()
		if d.closing.Load() || d.ctx.Err() != nil || k.isLost() {
			return
		}
		if time.Since(began) > 10*time.Second {
			delay = time.Second
		}
		d.log.Warn("the kernel dropped an NBD socket (a request ran past --timeout, or a send failed): handing it a new one",
			"queue", k.q.Index(), "writes_held", d.writes.count())
		if d.log.Enabled(context.Background(), slog.LevelDebug) {
			d.log.Debug("writes held when the socket was dropped", "queue", k.q.Index(), "tags", d.writes.tags(16))
		}
		for {
			err := k.replace()
			if err == nil {
				break
			}
			if errors.Is(err, errGone) {
				return
			}
			d.log.Warn("handing the kernel a new NBD socket", "queue", k.q.Index(), "err", err, "retry_in", delay)
			if !k.sleep(delay) {
				return
			}
			delay = min(2*delay, 10*time.Second)
		}
		if time.Since(began) < time.Second {
			// a socket the kernel did not take (it had no dead slot for it)
			// ends at once: do not spin
			if !k.sleep(delay) {
				return
			}
			delay = min(2*delay, 10*time.Second)
		}
	}
}

func (k *kfront) isLost() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lost
}

func (k *kfront) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return !k.d.closing.Load()
	case <-k.d.ctx.Done():
		return false
	}
}

var errGone = errors.New("the device is going")

// replace hands the kernel a new socket for the dead one, served from now on.
func (k *kfront) replace() error {
	d := k.d
	kf, conn, err := nbd.NewSocketPair(nil)
	if err != nil {
		return err
	}
	defer kf.Close() // the kernel holds its own reference once it took it
	nl, err := nbd.Dial()
	if err != nil {
		conn.Close()
		return err
	}
	defer nl.Close()
	k.mu.Lock()
	if k.lost || d.closing.Load() {
		k.mu.Unlock()
		conn.Close()
		return errGone
	}
	k.cur.Store(conn) // before the kernel sends on it: the batch end flushes it
	k.mu.Unlock()
	if err := nl.Reconfigure(d.Index, nbd.ReconfigureConfig{Sockets: []*os.File{kf}, BackendIdentifier: d.backend}); err != nil {
		conn.Close()
		return err
	}
	d.Stats.AddSocketReplaced()
	return nil
}

// flushKernel writes back what the page cache holds for the kernel device
// (fsync of the block device: a FLUSH, which the target makes stable); a
// failure is logged as what.
func (d *Device) flushKernel(what string) {
	f, err := os.OpenFile(d.NBDPath(), os.O_RDONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		d.log.Warn(what, "err", err)
	}
}

// startKernelFronts makes one socketpair per queue and serves rbdi's ends
// before the kernel sees them; it returns the kernel's ends, for Connect or
// Reconfigure (the caller closes them once the kernel has them).
func (d *Device) startKernelFronts() ([]*os.File, error) {
	var kernel []*os.File
	for _, q := range d.sess.Queues() {
		kf, conn, err := nbd.NewSocketPair(nil)
		if err != nil {
			for _, f := range kernel {
				f.Close()
			}
			d.stopKernelFronts()
			return nil, err
		}
		kernel = append(kernel, kf)
		k := &kfront{d: d, q: q}
		k.cur.Store(conn)
		d.kfs = append(d.kfs, k)
		q.SetBatchEnd(k.flush) // replies leave from the queue's loop, one writev per batch
		d.wg.Add(1)
		go k.serve()
	}
	return kernel, nil
}

// stopServing ends what serves a device that is removed or left: its
// context, the kernel sockets (Device.closing is set) and their readers,
// the NBD socket's clients, the session.
func (d *Device) stopServing() {
	d.stop()
	d.stopKernelFronts() // and the NBD socket's clients: d.wg counts them too
	if d.sock != nil {
		d.sock.wait()
	}
	d.sess.Close()
}

// stopKernelFronts closes the kernel sockets and waits for their readers
// (and for every other goroutine d.wg counts).
func (d *Device) stopKernelFronts() {
	d.closing.Store(true)
	for _, k := range d.kfs {
		k.close()
	}
	d.wg.Wait()
}

// connectNBD creates the kernel device for a new device.
func (m *Manager) connectNBD(nl *nbd.Client, d *Device) error {
	kernel, err := d.startKernelFronts()
	if err != nil {
		return err
	}
	defer closeFiles(kernel)
	ex := d.sess.Export
	idx, err := nl.Connect(nbd.ConnectConfig{Sockets: kernel, SizeBytes: ex.Size, BlockSize: uint64(ex.LogicalBlockSize),
		Timeout: m.cfg.Timeout, DeadConnTimeout: m.cfg.DeadConnTimeout, ServerFlags: nbdFlags(ex),
		BackendIdentifier: d.backend})
	if err != nil {
		d.stopKernelFronts()
		return &Error{Msg: "creating the NBD device: " + err.Error(), Err: err}
	}
	d.Index = idx
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.cfg.Sysfs.WaitForDevice(ctx, idx, ex.Size); err != nil {
		d.log.Warn("device size not seen in sysfs", "err", err)
	}
	// The kernel scans a new disk's partition table at its first open: do it
	// now, so partitions show up at once (not when a user first opens it).
	if f, err := os.Open(d.NBDPath()); err == nil {
		f.Close()
	}
	m.tuneNBD(d)
	return nil
}

// checkAdoptable: the kernel device a state file names must still be
// connected with the same backend identifier.
func (m *Manager) checkAdoptable(st *deviceState) error {
	b, err := m.cfg.Sysfs.Backend(st.Index)
	if err != nil || b != st.Backend {
		why := fmt.Sprintf("its backend is %q", b)
		if err != nil {
			why = err.Error()
		}
		return &staleError{fmt.Sprintf("nbd%d is no longer this device (%s)", st.Index, why)}
	}
	return nil
}

// adoptNBD takes over the kernel device an earlier rbdi left (its state
// file names it; checkAdoptable passed): its dead sockets are replaced by new ones (NBD_CMD_RECONFIGURE),
// and the timeouts set to this rbdi's.
func (m *Manager) adoptNBD(nl *nbd.Client, d *Device, st *deviceState) error {
	if ds, err := nl.Status(st.Index); err != nil || !ds.Connected {
		return &staleError{fmt.Sprintf("nbd%d is not connected (%v)", st.Index, err)}
	}
	size, err := m.cfg.Sysfs.Size(st.Index)
	if err == nil && size != d.sess.Export.Size {
		// the export changed size while no rbdi served it: the kernel learns
		// the new size with the sockets
		d.log.Warn("the export's size changed while the device waited", "was", size, "now", d.sess.Export.Size)
	}
	d.Index = st.Index
	kernel, err := d.startKernelFronts()
	if err != nil {
		return err
	}
	defer closeFiles(kernel)
	rc := nbd.ReconfigureConfig{Sockets: kernel, BackendIdentifier: d.backend, Timeout: m.cfg.Timeout, DeadConnTimeout: m.cfg.DeadConnTimeout}
	if err == nil && size != d.sess.Export.Size {
		rc.SizeBytes = d.sess.Export.Size
	}
	if err := nl.Reconfigure(st.Index, rc); err != nil {
		d.stopKernelFronts()
		return &Error{Msg: fmt.Sprintf("handing nbd%d its new sockets: %v", st.Index, err), Err: err}
	}
	m.tuneNBD(d)
	return nil
}

// tuneNBD sets the device's scheduler and largest request.
func (m *Manager) tuneNBD(d *Device) {
	idx := d.Index
	if err := m.cfg.Sysfs.SetScheduler(idx, "none"); err != nil {
		d.log.Debug("scheduler", "err", err)
	}
	// Requests up to 1 MiB reach rbd whole (the kernel splits larger ones):
	// a request larger than a slot goes out as several commands in parallel,
	// and bounding it by an eighth of the slots keeps it from starving the
	// queue.
	q0 := d.sess.Queues()[0]
	kb := uint32(q0.SlotSize() / 1024)
	kb = max(kb, min(1024, kb*uint32(max(1, q0.Depth()/8))))
	if got, err := m.cfg.Sysfs.SetMaxSectorsKB(idx, kb); err != nil {
		d.log.Warn("max_sectors_kb", "want", kb, "err", err)
	} else if got < kb {
		d.log.Info("max_sectors_kb limited by the kernel", "want", kb, "got", got)
	}
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// staleError: a state file names a kernel device that is no longer the
// one it describes (the host rebooted, or someone disconnected it).
type staleError struct{ msg string }

func (e *staleError) Error() string { return e.msg }

// resendGuard orders the kernel's resent writes after the copies rbdi holds.
//
// A request the kernel sends again (after its timeout, a failed send, or
// the death of the rbdi that had it) keeps its tag (hardware queue and tag,
// blk_mq_unique_tag) under a new cookie: the driver's handle is cookie<<32 |
// tag, copied into the request in the host's byte order (kernelTag).
// rbdi may still hold the first copy: waiting for its queue to reconnect,
// or out on a live connection. Were that copy to run after the resent
// request and after the writes the kernel issues once the resent one has
// completed, it would put old data over new. So before a resent WRITE, TRIM
// or WRITE_ZEROES goes out, the copy is withdrawn (Queue.Withdraw: it will
// never run; the target finished what a dead connection carried before it
// took the next) or, when it is out on a live connection, waited for.
// Reads and flushes may run twice: that changes nothing.
type resendGuard struct {
	held []atomic.Pointer[request] // by hardware queue × guardTags + tag
}

// guardTags bounds the tags tracked per hardware queue (the kernel's NBD
// driver has 128).
const guardTags = 1024

func (g *resendGuard) init(queues int) { g.held = make([]atomic.Pointer[request], queues*guardTags) }

// kernelTag is the tag in a kernel NBD request's handle. The driver copies
// its u64 (cookie<<32 | tag) into the request as it lies in memory, while
// nbd.DecodeRequest reads the handle's 8 bytes big-endian, as an opaque
// value: the tag is the low half of the value the bytes hold in the host's
// order.
func kernelTag(handle uint64) uint32 {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], handle)
	return uint32(binary.NativeEndian.Uint64(b[:]))
}

func (g *resendGuard) index(handle uint64) (int, bool) {
	tag := kernelTag(handle)
	hw, t := int(tag>>16), int(tag&0xffff)
	i := hw*guardTags + t
	if t >= guardTags || i >= len(g.held) {
		return 0, false
	}
	return i, true
}

// count is how many writes are held.
func (g *resendGuard) count() int {
	n := 0
	for i := range g.held {
		if g.held[i].Load() != nil {
			n++
		}
	}
	return n
}

// tags lists up to max held tags, for the log.
func (g *resendGuard) tags(max int) []string {
	var out []string
	for i := range g.held {
		if len(out) < max && g.held[i].Load() != nil {
			out = append(out, fmt.Sprintf("%#x", uint32(i/guardTags)<<16|uint32(i%guardTags)))
		}
	}
	return out
}

// hold records a kernel write in flight; it reports whether it did.
func (g *resendGuard) hold(handle uint64, r *request) bool {
	i, ok := g.index(handle)
	return ok && g.held[i].CompareAndSwap(nil, r)
}

// release forgets it once it is answered.
func (g *resendGuard) release(handle uint64, r *request) {
	if i, ok := g.index(handle); ok {
		g.held[i].CompareAndSwap(r, nil)
	}
}

// await returns once no copy of the request with this handle's tag is held:
// it withdraws the copy from d's queues, or waits for its completion. q is
// the reader's queue: what the reader staged goes out first (the copy may
// be among it). It gives up when the device is going.
func (g *resendGuard) await(handle uint64, d *Device, q *client.Queue) {
	i, ok := g.index(handle)
	if !ok || g.held[i].Load() == nil {
		return
	}
	began := time.Now()
	withdrawn, warned := 0, false
	q.Kick()
	for n := 0; ; n++ {
		p := g.held[i].Load()
		if p == nil {
			break
		}
		tok := p.token.Load()
		if g.held[i].Load() != p { // finished (and perhaps reused) meanwhile
			continue
		}
		for _, q := range d.sess.Queues() {
			w, _ := q.Withdraw(tok)
			withdrawn += w
		}
		if d.closing.Load() || d.ctx.Err() != nil {
			return
		}
		if !warned && time.Since(began) > 5*time.Second {
			d.log.Warn("a resent write waits for its first copy, still out on the target", "tag", fmt.Sprintf("%#x", kernelTag(handle)))
			warned = true
		}
		time.Sleep(min(50*time.Microsecond<<min(n, 13), 200*time.Millisecond))
	}
	d.Stats.AddResentByKernel()
	d.log.Debug("the kernel resent a write rbdi still held", "tag", fmt.Sprintf("%#x", kernelTag(handle)),
		"withdrawn", withdrawn, "waited", time.Since(began).Round(time.Microsecond))
}

// modifies reports whether an NBD request changes data (the ones
// resendGuard orders).
func modifies(t uint16) bool {
	return t == nbd.CmdWrite || t == nbd.CmdTrim || t == nbd.CmdWriteZeroes
}
