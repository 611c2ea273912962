package initiator

import (
	"context"
	"encoding/hex"
	"errors"
	"time"

	"rbd/internal/client"
)

// A restarted rbdi (systemctl restart, an upgrade, a crash and
// Restart=on-failure) adopts the devices the old one left, so that each
// keeps its /dev/rbdiN and nbd device and a mounted filesystem never sees
// an error:
//
//   - the old rbdi, when it stops (SIGTERM), lets the requests it has read
//     finish and their replies go out (for up to 5 s, until a quiet moment),
//     closes its sockets and the session, and leaves the kernel device
//     connected (detach); killed, it does none of that;
//   - the kernel marks the device's sockets dead; new requests wait for new
//     ones for up to dead-conn-timeout, requests the old rbdi never answered
//     are sent again once their per-request timeout (--timeout) has run out;
//   - the new rbdi reads the state directory, checks that nbdX is still
//     connected with the device's backend identifier, opens the export again
//     under the same session id and queue count (the target finishes what
//     the old connections carried first), and hands the kernel new sockets
//     (NBD_CMD_RECONFIGURE).

// OpenState opens the state directory (Config.StateDir) and takes its
// lock; it fails when another rbdi holds it. Adopt and the state files of
// new devices need it; without a state directory it does nothing.
func (m *Manager) OpenState() error {
	return m.state.open()
}

// Adopt takes over the devices the state directory lists (OpenState first).
// It returns once each was tried; a device whose target does not answer yet
// is tried again in the background until dead-conn-timeout (at least 30 s)
// has passed, the time the kernel lets its requests wait. A state file whose
// kernel device is gone (the host rebooted, or it was disconnected) is
// deleted; one that cannot be read is left alone and logged.
func (m *Manager) Adopt(ctx context.Context) {
	deadline := time.Now().Add(max(m.cfg.DeadConnTimeout, 30*time.Second))
	for _, sf := range m.state.load() {
		if sf.err != nil {
			m.log.Error("device state file cannot be used: left alone", "file", sf.path, "err", sf.err)
			continue
		}
		st := sf.st
		err := m.adoptOnce(ctx, st)
		if err == nil || m.adoptDone(st, err) {
			continue
		}
		m.log.Warn("device not adopted yet: trying again", "device", "rbdi"+itoa(st.Num), "err", err)
		go m.adoptLater(ctx, st, deadline)
	}
}

func (m *Manager) adoptOnce(ctx context.Context, st *deviceState) error {
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := m.add(actx, st.Request, st)
	return err
}

// adoptDone handles the errors after which adopting stops; it reports
// whether err was one.
func (m *Manager) adoptDone(st *deviceState, err error) bool {
	var se *staleError
	var me *MappedError
	switch {
	case errors.As(err, &se):
		m.log.Info("device state dropped: its kernel device is gone", "device", "rbdi"+itoa(st.Num), "reason", se.msg)
		if err := m.state.remove(st.Num); err != nil {
			m.log.Warn("device state left behind", "err", err)
		}
		return true
	case errors.As(err, &me):
		m.log.Warn("device state names an export mapped already: left alone", "device", "rbdi"+itoa(st.Num), "mapped_as", me.Device.Name())
		return true
	}
	return false
}

func (m *Manager) adoptLater(ctx context.Context, st *deviceState, deadline time.Time) {
	delay := m.cfg.ReconnectDelay
	if delay <= 0 {
		delay = client.DefaultReconnectDelay
	}
	for {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		m.mu.Lock()
		closed := m.closed
		m.mu.Unlock()
		if closed {
			return
		}
		err := m.adoptOnce(ctx, st)
		if err == nil || m.adoptDone(st, err) {
			return
		}
		if time.Now().After(deadline) {
			m.log.Error("device not adopted: its I/O fails now; its state is kept for the next rbdi start",
				"device", "rbdi"+itoa(st.Num), "nbd_index", st.Index, "err", err)
			return
		}
		m.log.Warn("device not adopted yet: trying again", "device", "rbdi"+itoa(st.Num), "err", err, "retry_in", delay)
		delay = min(2*delay, 10*time.Second)
	}
}

// saveState writes the device's state file (no state directory: nothing).
func (m *Manager) saveState(d *Device) error {
	if !m.state.enabled() {
		return nil
	}
	st := &deviceState{Num: d.Num, Kernel: d.kernel, Request: d.req, TargetAddr: d.Target.String(),
		Session: hex.EncodeToString(d.sess.ID[:]), Queues: len(d.sess.Queues())}
	if d.kernel {
		st.Index, st.Backend = d.Index, d.backend
	}
	return m.state.save(st)
}

// detach leaves a device for the next rbdi: what the kernel and the socket
// clients sent is answered (for up to 5 s, until a quiet moment), the
// sockets and the session are closed, and the kernel device stays
// connected, with its /dev/rbdiN link and its state file. Its requests wait
// up to dead-conn-timeout for the next rbdi.
func (m *Manager) detach(d *Device) {
	m.mu.Lock()
	if m.devices[d.Num] != d {
		m.mu.Unlock()
		return
	}
	delete(m.devices, d.Num)
	m.mu.Unlock()
	d.closing.Store(true)
	if d.sock != nil {
		d.sock.shutdown(10 * time.Second)
	}
	if d.kernel {
		// what the page cache holds for the device itself (not a mounted
		// filesystem's: that is written when it is unmounted or synced)
		// goes to the target, which makes it stable (FLUSH)
		d.flushKernel("flush before leaving the device")
		for end := time.Now().Add(5 * time.Second); !d.kernelQuiet() && time.Now().Before(end); {
			time.Sleep(time.Millisecond)
		}
	}
	d.stopServing()
	if c := m.cfg.Collector; c != nil {
		c.Remove(d.Name())
	}
	if d.kernel {
		d.log.Info("device left for the next rbdi: its I/O waits for it", "nbd", d.NBDPath(), "dead_conn_timeout", m.cfg.DeadConnTimeout)
	} else {
		d.log.Info("device left for the next rbdi (its NBD socket is served again then)", "nbd_socket", d.Socket())
	}
}

// kernelQuiet reports whether every request the kernel's sockets carried
// so far has its reply written.
func (d *Device) kernelQuiet() bool {
	for _, k := range d.kfs {
		if !k.cur.Load().Quiet() {
			return false
		}
	}
	return true
}
