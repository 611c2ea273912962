package initiator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"rbd/internal/client"
	"rbd/internal/nbd"
	"rbd/internal/wire"
)

// An rbd device may also be served on an NBD Unix socket (AddRequest.NBDSocket),
// beside /dev/rbdiN or instead of it (NoKernelDevice): QEMU, qemu-img,
// libnbd's tools and fio's nbd engine connect to it directly. Each client
// runs the fixed-newstyle handshake (internal/nbd's HandshakeServer) and then
// the same transmission phase and request engine as the kernel's sockets
// (Device.serve), so the stats, the reconnect behaviour and the error
// mapping are the kernel path's.
//
// Clients share the device's RDMA queues; they do not get queues of their
// own. A session's number of queues is fixed when the target opens it (a
// second session would be a second writer, which the target refuses), each
// queue pins its slots on both hosts (128 x 256 KiB by default), and a
// queue of its own per client would make every nbdinfo a round of RDMA
// connection set-up. A client is put on the live queue that has the fewest
// socket clients, so the connections of a multi-conn client (nbdcopy) spread
// over the queues; a FLUSH on any of them covers the writes of all when the
// target offers multi-conn, which is then advertised (NBD_FLAG_CAN_MULTI_CONN).
// The replies of a socket client are written by a goroutine of the client's
// own, woken at the end of each batch of completions, so a client that stops
// reading its socket never blocks the queue's loop (and the kernel device or
// the other clients on that queue).

// DefaultSocketMode is the permission of an NBD socket unless the request
// sets one: root only.
const DefaultSocketMode os.FileMode = 0o600

// MaxSocketClients is the number of clients one device's NBD socket serves at
// once; a client beyond it is disconnected at once.
const MaxSocketClients = 64

const (
	// handshakeTimeout bounds a client's handshake.
	handshakeTimeout = 30 * time.Second
	// drainTimeout bounds the wait for a leaving client's requests.
	drainTimeout = 30 * time.Second
	// maxRequest is the largest READ or WRITE the engine takes from any NBD
	// socket: the kernel's limit (max_hw_sectors of 32 MiB), and the limit
	// of qemu-nbd and nbdkit. A socket client is told a smaller maximum
	// (socketMaxBlock) and should keep to it.
	maxRequest = 32 << 20
	// sunPathMax is the longest path a Unix socket takes (sun_path less the NUL).
	sunPathMax = 107
)

// socketConfig is where and how a device's NBD socket is made.
type socketConfig struct {
	path     string
	mode     os.FileMode
	uid, gid int // -1: unchanged (rbdi's)
}

// parseSocketConfig checks the socket options of an add request.
func parseSocketConfig(req AddRequest) (socketConfig, error) {
	sc := socketConfig{path: req.NBDSocket, mode: DefaultSocketMode, uid: -1, gid: -1}
	if req.NBDSocket == "" {
		switch {
		case req.NoKernelDevice:
			return sc, &Error{Msg: "a device without a kernel device needs an NBD socket", Hint: "give --nbd-socket PATH (nbd_socket in rbdi.toml), or drop --no-kernel-device"}
		case req.SocketMode != "" || req.SocketOwner != "":
			return sc, &Error{Msg: "socket mode and owner need an NBD socket", Hint: "give --nbd-socket PATH (nbd_socket in rbdi.toml)"}
		}
		return sc, nil
	}
	if !filepath.IsAbs(req.NBDSocket) {
		return sc, &Error{Msg: fmt.Sprintf("NBD socket %q is not an absolute path", req.NBDSocket), Hint: "give the full path, e.g. /run/rbd/vm1.sock"}
	}
	sc.path = filepath.Clean(req.NBDSocket)
	if len(sc.path) > sunPathMax-12 {
		return sc, &Error{Msg: fmt.Sprintf("NBD socket path %q is %d bytes long: a Unix socket path takes %d, and rbdi makes it under a temporary name 12 bytes longer first", sc.path, len(sc.path), sunPathMax),
			Hint: "use a shorter path, e.g. in /run/rbd"}
	}
	if req.SocketMode != "" {
		v, err := strconv.ParseUint(req.SocketMode, 8, 32)
		if err != nil || v > 0o777 {
			return sc, &Error{Msg: fmt.Sprintf("socket mode %q is not an octal permission", req.SocketMode), Hint: "give it as with chmod, e.g. 0660"}
		}
		sc.mode = os.FileMode(v)
	}
	if req.SocketOwner != "" {
		u, g, _ := strings.Cut(req.SocketOwner, ":")
		if u != "" {
			id, err := lookupID(u, func(n string) (string, error) {
				x, err := user.Lookup(n)
				if err != nil {
					return "", err
				}
				return x.Uid, nil
			})
			if err != nil {
				return sc, &Error{Msg: fmt.Sprintf("socket owner %q: no user %s", req.SocketOwner, u), Hint: "give an existing user (or a numeric uid), as USER[:GROUP]", Err: err}
			}
			sc.uid = id
		}
		if g != "" {
			id, err := lookupID(g, func(n string) (string, error) {
				x, err := user.LookupGroup(n)
				if err != nil {
					return "", err
				}
				return x.Gid, nil
			})
			if err != nil {
				return sc, &Error{Msg: fmt.Sprintf("socket owner %q: no group %s", req.SocketOwner, g), Hint: "give an existing group (or a numeric gid), as USER:GROUP or :GROUP", Err: err}
			}
			sc.gid = id
		}
	}
	return sc, nil
}

func lookupID(name string, lookup func(string) (string, error)) (int, error) {
	if n, err := strconv.Atoi(name); err == nil && n >= 0 {
		return n, nil
	}
	s, err := lookup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(s)
}

// sockServer serves a device's NBD socket.
type sockServer struct {
	d    *Device
	cfg  socketConfig
	ln   *net.UnixListener
	ino  uint64 // the socket file's inode: only ours is removed
	log  *slog.Logger
	hs   *nbd.HandshakeServer
	exp  nbd.Export
	wg   sync.WaitGroup // the accept loop and the clients' goroutines
	once sync.Once

	mu      sync.Mutex
	closed  bool
	clients map[*sockClient]struct{}
	flush   []*queueFlush // per queue
}

// queueFlush is a queue's batch end: the kernel socket's replies are
// written from the queue's loop, the socket clients' writers are woken.
type queueFlush struct {
	kernel  *nbd.Conn
	clients atomic.Pointer[[]*sockClient]
}

func (f *queueFlush) run() {
	if f.kernel != nil {
		f.kernel.Flush()
	}
	if cs := f.clients.Load(); cs != nil {
		for _, c := range *cs {
			select {
			case c.wake <- struct{}{}:
			default:
			}
		}
	}
}

// sockClient is one connected client.
type sockClient struct {
	uc    *net.UnixConn
	conn  *nbd.Conn
	queue int
	wake  chan struct{}
	quit  chan struct{}
	peer  string
}

// nbdFlags are the transmission flags of the device's export, for the
// kernel and for socket clients.
func nbdFlags(ex wire.OpenReply) uint64 {
	flags := uint64(nbd.FlagHasFlags | nbd.FlagSendFlush | nbd.FlagSendFUA | nbd.FlagSendWriteZeroes)
	if ex.Caps&wire.CapTrim != 0 {
		flags |= nbd.FlagSendTrim
	}
	if ex.Caps&wire.CapReadOnly != 0 {
		flags |= nbd.FlagReadOnly
	}
	if ex.Caps&wire.CapRotational != 0 {
		flags |= nbd.FlagRotational
	}
	if ex.Caps&wire.CapMultiConn != 0 {
		flags |= nbd.FlagCanMultiConn
	}
	return flags
}

// socketMaxBlock is the largest request a socket client is told to send,
// the kernel device's max_sectors_kb: a slot, or up to an eighth of the
// queue's slots and 1 MiB (a larger request goes out as several commands in
// parallel; an eighth of the slots keeps it from starving the queue).
func socketMaxBlock(q *client.Queue, blockSize uint32) uint32 {
	slot := uint32(q.SlotSize())
	m := max(slot, min(1<<20, slot*uint32(max(1, q.Depth()/8))))
	return m / blockSize * blockSize
}

// nbdExport is what socket clients are told about the device.
func (d *Device) nbdExport() nbd.Export {
	ex := d.sess.Export
	flags := nbdFlags(ex)
	if d.ReadOnly {
		flags |= nbd.FlagReadOnly
	}
	lbs := ex.LogicalBlockSize
	return nbd.Export{
		Name:        d.Name(),
		Description: fmt.Sprintf("rbd %s on %s", d.Export, d.Target),
		Size:        ex.Size,
		Flags:       uint16(flags),
		MinBlock:    lbs,
		PrefBlock:   max(lbs, ex.PhysicalBlockSize, 4096),
		MaxBlock:    socketMaxBlock(d.sess.Queues()[0], lbs),
	}
}

// check refuses a request that the engine must not send to the target: out
// of the device, not aligned to its block size, too large to buffer, empty,
// or a write to a read-only device. The kernel never sends one; an NBD
// socket client might. It returns the NBD error to answer with, or 0.
func (d *Device) check(r nbd.Request) uint32 {
	switch r.Type {
	case nbd.CmdRead, nbd.CmdWrite, nbd.CmdTrim, nbd.CmdWriteZeroes:
	default:
		return 0 // FLUSH, DISC, and what serve refuses itself
	}
	ex := &d.sess.Export
	mask := uint64(ex.LogicalBlockSize) - 1
	switch {
	case r.Length == 0, (r.Offset|uint64(r.Length))&mask != 0:
		return nbd.EINVAL
	case r.Offset > ex.Size || uint64(r.Length) > ex.Size-r.Offset:
		if r.Type == nbd.CmdRead {
			return nbd.EINVAL
		}
		return nbd.ENOSPC
	case r.Length > maxRequest && (r.Type == nbd.CmdRead || r.Type == nbd.CmdWrite):
		return nbd.EINVAL
	case r.Type != nbd.CmdRead && d.ReadOnly:
		return nbd.EPERM
	}
	return 0
}

// listenSocket makes the device's NBD socket and starts accepting. The
// kernel's sockets (d.conns, if any) must be set up already: the queues'
// batch ends are replaced by ones that also wake the socket clients.
func (m *Manager) listenSocket(d *Device, sc socketConfig) error {
	m.sockMu.Lock()
	defer m.sockMu.Unlock()
	for _, o := range m.List() {
		if o.sock != nil && o.sock.cfg.path == sc.path {
			return &Error{Msg: fmt.Sprintf("NBD socket %s is %s's already", sc.path, o.Name()), Hint: "give each device a socket of its own"}
		}
	}
	ln, ino, err := makeSocket(sc)
	if err != nil {
		return err
	}
	s := &sockServer{d: d, cfg: sc, ln: ln, ino: ino, log: d.log.With("nbd_socket", sc.path), clients: map[*sockClient]struct{}{}}
	s.exp = d.nbdExport()
	s.hs = &nbd.HandshakeServer{
		Lookup: func(name string) (nbd.Export, bool) {
			// the default export "", or the device by its name or its export
			if name == "" || name == d.Name() || name == d.Export {
				return s.exp, true
			}
			return nbd.Export{}, false
		},
		List: func() []string { return []string{d.Name()} },
		// the engine sends simple replies only
		NoStructuredReplies: true,
	}
	for i, q := range d.sess.Queues() {
		f := &queueFlush{}
		if i < len(d.conns) {
			f.kernel = d.conns[i]
		}
		s.flush = append(s.flush, f)
		q.SetBatchEnd(f.run)
	}
	d.sock = s
	s.wg.Add(1)
	go s.accept()
	s.log.Info("serving NBD socket", "mode", fmt.Sprintf("%#o", sc.mode), "uid", sc.uid, "gid", sc.gid,
		"min_block", s.exp.MinBlock, "pref_block", s.exp.PrefBlock, "max_block", s.exp.MaxBlock)
	return nil
}

// makeSocket binds the socket under a temporary name beside the path, sets
// its mode and owner, and renames it into place, so that it never exists at
// the path with other permissions. A stale socket at the path (nobody
// listens) is replaced; anything else there is an error.
func makeSocket(sc socketConfig) (*net.UnixListener, uint64, error) {
	if err := checkSocketPath(sc); err != nil {
		return nil, 0, err
	}
	dir := filepath.Dir(sc.path)
	var rnd [4]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(dir, ".rbdi"+hex.EncodeToString(rnd[:]))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, 0, &Error{Msg: fmt.Sprintf("NBD socket %s: %v", sc.path, err), Err: err}
	}
	ln.SetUnlinkOnClose(false) // the socket moves; rbdi removes it itself
	fail := func(what string, err error) (*net.UnixListener, uint64, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, 0, &Error{Msg: fmt.Sprintf("NBD socket %s: %s: %v", sc.path, what, err), Err: err}
	}
	if err := os.Chmod(tmp, sc.mode); err != nil {
		return fail("setting its mode", err)
	}
	if sc.uid >= 0 || sc.gid >= 0 {
		if err := os.Lchown(tmp, sc.uid, sc.gid); err != nil {
			return fail("setting its owner", err)
		}
	}
	if err := os.Rename(tmp, sc.path); err != nil {
		return fail("moving it into place", err)
	}
	st, err := os.Lstat(sc.path)
	if err != nil {
		ln.Close()
		return nil, 0, &Error{Msg: fmt.Sprintf("NBD socket %s: %v", sc.path, err), Err: err}
	}
	var ino uint64
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		ino = sys.Ino
	}
	return ln, ino, nil
}

// checkSocketPath says whether a socket can be made at the path: its
// directory exists, and nothing is there but a stale socket. Add checks it
// before it connects to the target, and makeSocket again.
func checkSocketPath(sc socketConfig) error {
	dir := filepath.Dir(sc.path)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return &Error{Msg: fmt.Sprintf("NBD socket %s: directory %s does not exist", sc.path, dir), Hint: "create it first (mkdir -p " + dir + ")", Err: err}
	}
	if st, err := os.Lstat(sc.path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return &Error{Msg: fmt.Sprintf("NBD socket %s: the path exists and is not a socket", sc.path), Hint: "give another path, or remove what is there"}
		}
		if c, err := net.DialTimeout("unix", sc.path, time.Second); err == nil {
			c.Close()
			return &Error{Msg: fmt.Sprintf("NBD socket %s: another server listens on it", sc.path), Hint: "give another path, or stop that server"}
		}
	}
	return nil
}

func (s *sockServer) accept() {
	defer s.wg.Done()
	for {
		uc, err := s.ln.AcceptUnix()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("NBD socket accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			uc.Close()
			return
		}
		if len(s.clients) >= MaxSocketClients {
			s.mu.Unlock()
			s.log.Warn("NBD socket client refused: too many clients", "max", MaxSocketClients, "peer", peerOf(uc))
			uc.Close()
			continue
		}
		c := &sockClient{uc: uc, queue: -1, wake: make(chan struct{}, 1), quit: make(chan struct{}), peer: peerOf(uc)}
		s.clients[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveClient(c)
	}
}

// peerOf names the process at the other end, from SO_PEERCRED.
func peerOf(uc *net.UnixConn) string {
	rc, err := uc.SyscallConn()
	if err != nil {
		return "?"
	}
	var cred *unix.Ucred
	rc.Control(func(fd uintptr) { cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if err != nil || cred == nil {
		return "?"
	}
	return fmt.Sprintf("pid %d uid %d", cred.Pid, cred.Uid)
}

// serveClient runs one client: the handshake, then the engine on a queue,
// and when the client leaves (NBD_CMD_DISC, or it closed its end) or the
// device goes, its requests are let finish and answered before the
// connection closes.
func (s *sockServer) serveClient(c *sockClient) {
	defer s.wg.Done()
	defer s.forget(c)
	c.uc.SetDeadline(time.Now().Add(handshakeTimeout))
	neg, err := s.hs.Serve(c.uc)
	if err != nil {
		if !errors.Is(err, nbd.ErrAbort) {
			s.log.Info("NBD socket client left in the handshake", "peer", c.peer, "err", err)
		}
		c.uc.Close()
		return
	}
	c.uc.SetDeadline(time.Time{})
	conn := nbd.NewConn(c.uc, nil)
	q := s.attach(c, conn)
	if q == nil { // the device is being removed
		conn.Close()
		return
	}
	s.log.Info("NBD socket client connected", "peer", c.peer, "export", neg.Name, "queue", q.Index())
	go c.flushLoop()
	s.d.serve(conn, q) // attach counted it in d.wg
	q.Kick()           // serve may return with commands staged (NBD_CMD_DISC right behind them)
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	if err := conn.Drain(ctx); errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn("NBD socket client: requests still unanswered when its connection closed", "peer", c.peer, "pending", conn.Pending())
	}
	cancel()
	close(c.quit)
	s.log.Info("NBD socket client disconnected", "peer", c.peer)
}

// flushLoop writes the client's replies when the queue's loop finished a
// batch of completions.
func (c *sockClient) flushLoop() {
	for {
		select {
		case <-c.wake:
			c.conn.Flush()
		case <-c.quit:
			return
		}
	}
}

// attach puts the client on the live queue with the fewest socket clients,
// and counts its serve in the device's wait group (under s.mu, so that none
// is added once shutdown began).
func (s *sockServer) attach(c *sockClient, conn *nbd.Conn) *client.Queue {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	c.conn = conn
	qs := s.d.sess.Queues()
	count := make([]int, len(qs))
	for o := range s.clients {
		if o.queue >= 0 {
			count[o.queue]++
		}
	}
	best := -1
	for i, q := range qs {
		select {
		case <-q.Done():
			continue // finished for good
		default:
		}
		if best < 0 || count[i] < count[best] {
			best = i
		}
	}
	if best < 0 {
		best = 0 // all finished: the device failed, and its I/O fails
	}
	c.queue = best
	s.publish(best)
	s.d.wg.Add(1)
	return qs[best]
}

// publish renews queue i's list of clients to wake (s.mu held).
func (s *sockServer) publish(i int) {
	var list []*sockClient
	for o := range s.clients {
		if o.queue == i && o.conn != nil {
			list = append(list, o)
		}
	}
	s.flush[i].clients.Store(&list)
}

func (s *sockServer) forget(c *sockClient) {
	s.mu.Lock()
	delete(s.clients, c)
	if c.queue >= 0 {
		s.publish(c.queue)
	}
	s.mu.Unlock()
}

// clientCount is the number of clients connected (handshakes included).
func (s *sockServer) clientCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
}

// queueLost disconnects the clients of a queue that finished for good: they
// connect again, and land on a live queue.
func (s *sockServer) queueLost(i int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.clients {
		if c.queue == i && c.conn != nil {
			c.conn.Close()
		}
	}
}

// shutdown stops accepting, removes the socket file and lets each client's
// requests finish: the read side of each connection is shut, so the engine
// sees the end of the client's requests, answers those it has and the
// connection closes. Clients still there after wait are closed hard (their
// requests end when the device stops). Idempotent.
func (s *sockServer) shutdown(wait time.Duration) {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.ln.Close()
		if st, err := os.Lstat(s.cfg.path); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Ino == s.ino {
				os.Remove(s.cfg.path)
			}
		}
		n := len(s.clients)
		for c := range s.clients {
			c.uc.CloseRead()
		}
		s.mu.Unlock()
		if n > 0 {
			s.log.Info("closing the NBD socket's clients", "clients", n)
		}
		done := make(chan struct{})
		go func() { s.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(wait):
			s.mu.Lock()
			s.log.Warn("NBD socket clients still busy; closing them", "clients", len(s.clients))
			for c := range s.clients {
				if c.conn != nil {
					c.conn.Close()
				} else {
					c.uc.Close()
				}
			}
			s.mu.Unlock()
		}
	})
}

// wait waits for the clients' goroutines, once the device's context is done.
func (s *sockServer) wait() { s.wg.Wait() }

// flushTarget sends a FLUSH to the target (a device without a kernel
// device, before its removal: the clients flush their own writes, this
// covers those that did not).
func (d *Device) flushTarget(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, q := range d.sess.Queues() {
		select {
		case <-q.Done():
			continue
		default:
		}
		s, err := q.Acquire(ctx)
		if err != nil {
			return fmt.Errorf("flush: %w", err)
		}
		done := make(chan wire.Status, 1)
		if err := s.Submit(wire.OpFlush, 0, 0, 0, func(s *client.Slot, c client.Completion) {
			c.Release()
			s.Release()
			done <- c.Status
		}); err != nil {
			s.Release()
			return fmt.Errorf("flush: %w", err)
		}
		select {
		case st := <-done:
			if st != wire.StatusOK {
				return fmt.Errorf("flush: %v", st.Err())
			}
			return nil
		case <-ctx.Done():
			return fmt.Errorf("flush: no answer from the target: %w", ctx.Err())
		}
	}
	return errors.New("flush: no live queue")
}
