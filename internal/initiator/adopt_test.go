package initiator_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"rbd/internal/initiator"
	"rbd/internal/nbd"
	"rbd/internal/target"
	"rbd/internal/wire"
)

// stateManager is a manager of the rig's network keeping its state in dir.
func (r *rig) stateManager(t *testing.T, dir string) *initiator.Manager {
	t.Helper()
	m := initiator.NewManager(initiator.Config{Queues: 2, QueueDepth: 16, Transport: r.net, Log: quiet(), DevDir: r.dir,
		ReconnectDelay: 50 * time.Millisecond, CtrlLossTimeout: 20 * time.Second, StateDir: dir})
	if err := m.OpenState(); err != nil {
		t.Fatalf("OpenState: %v", err)
	}
	return m
}

// TestAdoptAfterRestart: a manager with a state directory leaves its
// devices when it closes (rbdi stopping) and keeps their state; a second
// one adopts them, under the same number, on the same NBD socket, with the
// data there; a third cannot take the directory while the second holds it;
// removing the device deletes its state.
func TestAdoptAfterRestart(t *testing.T) {
	r := newRig(t, 8<<20)
	state := filepath.Join(r.dir, "state")
	m1 := r.stateManager(t, state)
	sock := filepath.Join(r.dir, "adopt.sock")
	ctx := context.Background()
	d1, err := m1.Add(ctx, initiator.AddRequest{Target: targetAddr.Addr().String(), Port: targetAddr.Port(), Export: r.img,
		NoKernelDevice: true, NBDSocket: sock, Queues: 2})
	if err != nil {
		t.Fatal(err)
	}
	data := random(128 << 10)
	nc := dialNBD(t, sock, "")
	if errno, _ := nc.do(t, nbd.CmdWrite, 64<<10, uint32(len(data)), data); errno != 0 {
		t.Fatalf("write: errno %d", errno)
	}
	nc.c.Close()
	file := filepath.Join(state, "devices", d1.Name()+".json")
	fi, err := os.Stat(file)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file %s: %v, mode %v; want 0600", file, err, fi.Mode())
	}
	m1.Close()
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("state after the manager closed: %v, want kept", err)
	}

	m2 := r.stateManager(t, state)
	defer m2.Close()
	m3 := initiator.NewManager(initiator.Config{Transport: r.net, Log: quiet(), StateDir: state})
	if err := m3.OpenState(); !errors.Is(err, initiator.ErrStateLocked) {
		t.Fatalf("a second manager on a held state directory: %v, want ErrStateLocked", err)
	}
	m2.Adopt(ctx)
	d2, err := m2.Find(d1.Name())
	if err != nil {
		t.Fatalf("after Adopt: %v", err)
	}
	if !d2.Adopted() || d2.Num != d1.Num || d2.Socket() != sock || len(d2.Session().Queues()) != 2 || d2.Session().ID != d1.Session().ID {
		t.Fatalf("adopted device: adopted %v, rbdi%d, socket %q, %d queues, same session %v", d2.Adopted(), d2.Num, d2.Socket(),
			len(d2.Session().Queues()), d2.Session().ID == d1.Session().ID)
	}
	nc = dialNBD(t, sock, "")
	errno, got := nc.do(t, nbd.CmdRead, 64<<10, uint32(len(data)), nil)
	if errno != 0 || !bytes.Equal(got, data) {
		t.Fatalf("read after the adoption: errno %d, equal %v", errno, bytes.Equal(got, data))
	}
	nc.c.Close()
	if err := m2.Remove(ctx, d2.Name()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state after Remove: %v, want gone", err)
	}
}

// TestAdoptBadState: a state file that cannot be read is left alone; one
// whose kernel device is gone (no nbd device here) is deleted; neither
// makes a device.
func TestAdoptBadState(t *testing.T) {
	r := newRig(t, 1<<20)
	state := filepath.Join(r.dir, "state")
	if err := os.MkdirAll(filepath.Join(state, "devices"), 0o700); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(state, "devices", "rbdi3.json")
	os.WriteFile(garbage, []byte("{not json"), 0o600)
	wrongNum := filepath.Join(state, "devices", "rbdi4.json")
	gone := filepath.Join(state, "devices", "rbdi5.json")
	for path, num := range map[string]int{wrongNum: 9, gone: 5} {
		b, _ := json.Marshal(map[string]any{"version": 1, "num": num, "kernel": true, "nbd_index": 4000, "backend": "rbd:10.0.0.1:65000:" + r.img,
			"request": map[string]any{"target": "10.0.0.1", "export": r.img}, "target_addr": targetAddr.String(),
			"session": "00112233445566778899aabbccddeeff", "queues": 1})
		os.WriteFile(path, b, 0o600)
	}
	m := r.stateManager(t, state)
	defer m.Close()
	m.Adopt(context.Background())
	if n := len(m.List()); n != 0 {
		t.Fatalf("%d devices adopted from bad state files", n)
	}
	for _, p := range []string{garbage, wrongNum} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("unusable state file %s: %v, want left alone", filepath.Base(p), err)
		}
	}
	if _, err := os.Stat(gone); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file of a gone kernel device: %v, want deleted", err)
	}
}

// TestResendGuard: the kernel sends a write again (same tag, new cookie:
// after its timeout, or to the rbdi that adopted the device) while rbdi
// still holds the first copy. A copy out on a live connection (stalled in
// the target's backend) is waited for; one waiting for a reconnect is
// withdrawn and never lands. Either way a newer write to the block, issued
// after the resent one completed, is what the block holds at the end.
func TestResendGuard(t *testing.T) {
	r := newRig(t, 8<<20)
	gate := make(chan struct{})
	var opened sync.Once
	open := func() { opened.Do(func() { close(gate) }) }
	t.Cleanup(open) // before the target stops (cleanups run last first)
	var stall atomic.Bool
	r.tcfg = func(c *target.Config) {
		c.InlineIO = -1 // backend I/O in workers, where the hook can stall it
		c.BeforeIO = func(op wire.Op, off uint64) {
			if op == wire.OpWrite && off == 1<<20 && stall.CompareAndSwap(true, false) {
				<-gate
			}
		}
	}
	r.stop()
	r.startTarget(t)
	d, _ := r.add(t, initiator.AddRequest{Queues: 1})
	kf, conn, err := nbd.NewSocketPair(nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := net.FileConn(kf)
	kf.Close()
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { initiator.ServeAsKernel(d, conn, 0); close(served) }()
	defer func() { conn.Close(); <-served }()
	k := &nbdClient{c: kc, br: bufio.NewReader(kc), reads: map[uint64]uint32{}}
	// as the kernel makes it: cookie<<32 | tag, copied in the host's byte
	// order, read by the NBD decoder big-endian
	handle := func(cookie, tag uint64) uint64 {
		var b [8]byte
		binary.NativeEndian.PutUint64(b[:], cookie<<32|tag)
		return binary.BigEndian.Uint64(b[:])
	}
	blk := func(b byte) []byte { return bytes.Repeat([]byte{b}, 4096) }
	replies := make(chan [2]uint64, 8) // handle, errno
	go func() {
		for {
			var h [nbd.ReplySize]byte
			if _, err := io.ReadFull(k.br, h[:]); err != nil {
				close(replies)
				return
			}
			replies <- [2]uint64{binary.BigEndian.Uint64(h[8:]), uint64(binary.BigEndian.Uint32(h[4:]))}
		}
	}()
	next := func(what string) [2]uint64 {
		t.Helper()
		select {
		case rp := <-replies:
			return rp
		case <-time.After(20 * time.Second):
			t.Fatalf("no reply: %s", what)
		}
		return [2]uint64{}
	}

	// 1. the first copy is out on the live connection, stalled in the backend
	stall.Store(true)
	k.send(t, nbd.CmdWrite, handle(1, 5), 1<<20, 4096, blk(0x11))
	for stall.Load() {
		time.Sleep(time.Millisecond)
	}
	k.send(t, nbd.CmdWrite, handle(2, 5), 1<<20, 4096, blk(0x11)) // the kernel's resend
	select {
	case rp := <-replies:
		t.Fatalf("reply %#x before the stalled first copy finished: the resend was not held back", rp[0])
	case <-time.After(100 * time.Millisecond):
	}
	open()
	if rp := next("first copy"); rp != [2]uint64{handle(1, 5), 0} {
		t.Fatalf("first reply %#x errno %d, want the first copy's", rp[0], rp[1])
	}
	if rp := next("resent copy"); rp != [2]uint64{handle(2, 5), 0} {
		t.Fatalf("second reply %#x errno %d, want the resent copy's", rp[0], rp[1])
	}

	// 2. the first copy waits for a reconnect: withdrawn, it never lands
	r.stop()
	for st, _ := d.State(); st != initiator.StateReconnecting; st, _ = d.State() {
		time.Sleep(time.Millisecond)
	}
	k.send(t, nbd.CmdWrite, handle(1, 9), 2<<20, 4096, blk(0x22))
	time.Sleep(20 * time.Millisecond)
	k.send(t, nbd.CmdWrite, handle(2, 9), 2<<20, 4096, blk(0x33))
	if rp := next("withdrawn copy"); rp[0] != handle(1, 9) || rp[1] == 0 {
		t.Fatalf("reply %#x errno %d, want the first copy failed (withdrawn)", rp[0], rp[1])
	}
	r.startTarget(t)
	if rp := next("resent copy after the reconnect"); rp != [2]uint64{handle(2, 9), 0} {
		t.Fatalf("reply %#x errno %d, want the resent copy's", rp[0], rp[1])
	}
	k.send(t, nbd.CmdWrite, handle(1, 10), 2<<20, 4096, blk(0x44)) // newer
	if rp := next("newer write"); rp != [2]uint64{handle(1, 10), 0} {
		t.Fatalf("reply %#x errno %d", rp[0], rp[1])
	}
	time.Sleep(50 * time.Millisecond)
	if got := fileAt(t, r.img, 2<<20, 4096); got[0] != 0x44 {
		t.Fatalf("block holds %#x, want the newer write (0x44)", got[0])
	}
	if got := fileAt(t, r.img, 1<<20, 4096); got[0] != 0x11 {
		t.Fatalf("block holds %#x, want 0x11", got[0])
	}
	if n := d.Stats.Snapshot().KernelResent; n != 2 {
		t.Errorf("kernel_resent %d, want 2", n)
	}
}

// TestKernelTag: the tag of handles as the guest's kernel sent them, as
// nbd.DecodeRequest returns them (from a debug log: hardware queue 1 tag
// 0x36 cookie 5; queue 0 tag 0 cookie 11; queue 0 tag 0x1a cookie 10).
func TestKernelTag(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the recorded handles are a little-endian host's")
	}
	for _, tc := range []struct {
		handle uint64
		tag    uint32
	}{{0x3600010005000000, 0x10036}, {0x0b000000, 0}, {0x1a0000000a000000, 0x1a}} {
		if got := initiator.KernelTag(tc.handle); got != tc.tag {
			t.Errorf("KernelTag(%#x) = %#x, want %#x", tc.handle, got, tc.tag)
		}
	}
}
