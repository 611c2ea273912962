package nbd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// Names and numbers of the kernel's NBD generic-netlink family
// (include/uapi/linux/nbd-netlink.h).
const (
	// FamilyName is the generic-netlink family of the kernel's nbd module.
	FamilyName = "nbd"
	// FamilyVersion is the family version this package speaks.
	FamilyVersion = 1
	// MulticastGroup is the group LINK_DEAD events are sent to.
	MulticastGroup = "nbd_mc_group"
)

// Commands.
const (
	cmdConnect     = 1
	cmdDisconnect  = 2
	cmdReconfigure = 3
	cmdLinkDead    = 4
	cmdStatus      = 5
)

// Attributes.
const (
	attrIndex             = 1  // u32
	attrSizeBytes         = 2  // u64
	attrBlockSizeBytes    = 3  // u64
	attrTimeout           = 4  // u64, seconds
	attrServerFlags       = 5  // u64
	attrClientFlags       = 6  // u64
	attrSockets           = 7  // nested NBD_SOCK_ITEMs
	attrDeadConnTimeout   = 8  // u64, seconds
	attrDeviceList        = 9  // nested NBD_DEVICE_ITEMs
	attrBackendIdentifier = 10 // string

	sockItem = 1 // NBD_SOCK_ITEM, nested
	sockFD   = 1 // NBD_SOCK_FD, u32

	deviceItem      = 1 // NBD_DEVICE_ITEM, nested
	deviceIndex     = 1 // NBD_DEVICE_INDEX, u32
	deviceConnected = 2 // NBD_DEVICE_CONNECTED, u8
)

// Client flags, for ConnectConfig.ClientFlags and ReconfigureConfig.ClientFlags.
const (
	// ClientDestroyOnDisconnect deletes /dev/nbdN when it is disconnected.
	ClientDestroyOnDisconnect uint64 = 1 << 0
	// ClientDisconnectOnClose disconnects the device when its last opener
	// closes it.
	ClientDisconnectOnClose uint64 = 1 << 1
)

// A ConnectConfig describes a device for Client.Connect.
type ConnectConfig struct {
	// Index selects /dev/nbdN; nil lets the kernel pick an unused device
	// (or create one).
	Index *uint32
	// Sockets are the kernel's ends of the connections, one per hardware
	// queue (see NewSocketPair). The kernel takes its own references: close
	// them once Connect returns. More than one needs FlagCanMultiConn in
	// ServerFlags.
	Sockets []*os.File
	// SizeBytes is the device size; it must not be 0.
	SizeBytes uint64
	// BlockSize is the logical block size in bytes (a power of two from 512
	// to the page size; 4096 is usual); 0 leaves the kernel's default (1024).
	BlockSize uint64
	// Timeout is the per-request timeout, rounded up to whole seconds; 0
	// leaves the kernel's default (30 s).
	Timeout time.Duration
	// DeadConnTimeout is how long I/O waits for a new socket (Reconfigure)
	// when every connection is dead, rounded up to whole seconds; 0 fails
	// such I/O at once.
	DeadConnTimeout time.Duration
	// ServerFlags are the export's transmission flags (FlagHasFlags,
	// FlagSendFlush, FlagSendTrim, FlagCanMultiConn, ...).
	ServerFlags uint64
	// ClientFlags are ClientDestroyOnDisconnect and ClientDisconnectOnClose.
	ClientFlags uint64
	// BackendIdentifier, if set, is shown in /sys/block/nbdN/backend, and
	// Reconfigure must then name the same identifier.
	BackendIdentifier string
}

// A ReconfigureConfig describes the changes Client.Reconfigure makes to a
// connected device. Zero fields are left unchanged.
type ReconfigureConfig struct {
	// Sockets replace dead connections, each filling one dead slot. The
	// kernel silently drops sockets for which no dead slot is left, so shut
	// down (Conn.Close) the connections to be replaced and wait until the
	// kernel noticed (Client.WatchLinkDead) first. Close them once
	// Reconfigure returns.
	Sockets []*os.File
	// SizeBytes, if not 0, resizes the device.
	SizeBytes uint64
	// BlockSize, if not 0, changes the logical block size.
	BlockSize uint64
	// Timeout, if not 0, changes the per-request timeout.
	Timeout time.Duration
	// DeadConnTimeout, if not 0, changes the dead-connection timeout.
	DeadConnTimeout time.Duration
	// ClientFlags, if not nil, replaces the client flags.
	ClientFlags *uint64
	// BackendIdentifier must match the one given to Connect, if any.
	BackendIdentifier string
}

// A DeviceStatus is one device as reported by the kernel's STATUS command.
type DeviceStatus struct {
	// Index is N of /dev/nbdN.
	Index uint32
	// Connected reports whether the device is configured (has a config,
	// which it keeps until disconnected and released).
	Connected bool
}

// A Client configures kernel NBD devices over the "nbd" generic-netlink
// family. Most operations need CAP_SYS_ADMIN. A Client is safe for concurrent
// use; requests are serialized on its socket.
type Client struct {
	c      *genetlink.Conn
	family genetlink.Family
	group  uint32 // ID of MulticastGroup, 0 if the family has none

	// dialWatch opens the socket WatchLinkDead listens on; joinGroup joins
	// it to the multicast group. Tests replace them.
	dialWatch func() (*genetlink.Conn, error)
	joinGroup func(c *genetlink.Conn, group uint32) error
}

// Dial opens a generic-netlink socket and looks up the nbd family. When the
// family does not exist (the nbd module is not loaded), the error wraps
// os.ErrNotExist.
func Dial() (*Client, error) {
	c, err := genetlink.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial generic netlink: %w", err)
	}
	cl, err := NewClient(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	return cl, nil
}

// NewClient returns a Client that uses c, which it owns from then on (Close
// closes it), after looking up the nbd family on it. When the family does
// not exist, the error wraps os.ErrNotExist. WatchLinkDead opens sockets of
// its own with genetlink.Dial.
func NewClient(c *genetlink.Conn) (*Client, error) {
	f, err := c.GetFamily(FamilyName)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("nbd: the kernel's nbd module is not loaded (modprobe nbd): %w", err)
		}
		return nil, fmt.Errorf("nbd: look up generic netlink family %q: %w", FamilyName, err)
	}
	if f.Version < FamilyVersion {
		return nil, fmt.Errorf("nbd: generic netlink family %q has version %d, want %d or later", FamilyName, f.Version, FamilyVersion)
	}
	cl := &Client{
		c:         c,
		family:    f,
		dialWatch: func() (*genetlink.Conn, error) { return genetlink.Dial(nil) },
		joinGroup: (*genetlink.Conn).JoinGroup,
	}
	for _, g := range f.Groups {
		if g.Name == MulticastGroup {
			cl.group = g.ID
		}
	}
	return cl, nil
}

// Close closes the Client's socket. Channels from WatchLinkDead are not
// affected; they end with their contexts.
func (c *Client) Close() error {
	return c.c.Close()
}

// seconds converts a timeout to whole seconds, rounding up.
func seconds(d time.Duration) uint64 {
	return uint64((d + time.Second - 1) / time.Second)
}

// encodeSockets encodes NBD_ATTR_SOCKETS.
func encodeSockets(ae *netlink.AttributeEncoder, socks []*os.File) error {
	for i, f := range socks {
		if f == nil {
			return fmt.Errorf("nbd: socket %d is nil", i)
		}
	}
	ae.Nested(attrSockets, func(nae *netlink.AttributeEncoder) error {
		for _, f := range socks {
			fd := f.Fd()
			nae.Nested(sockItem, func(sae *netlink.AttributeEncoder) error {
				sae.Uint32(sockFD, uint32(fd))
				return nil
			})
		}
		return nil
	})
	return nil
}

// execute sends one request and returns the replies; the sockets are kept
// alive until the kernel has answered, since it looks their fds up.
func (c *Client) execute(op string, cmd uint8, flags netlink.HeaderFlags, ae *netlink.AttributeEncoder, socks []*os.File) ([]genetlink.Message, error) {
	b, err := ae.Encode()
	if err != nil {
		return nil, fmt.Errorf("nbd: %s: encode attributes: %w", op, err)
	}
	msgs, err := c.c.Execute(genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: FamilyVersion},
		Data:   b,
	}, c.family.ID, flags)
	runtime.KeepAlive(socks)
	if err != nil {
		return nil, fmt.Errorf("nbd: %s: %w", op, err)
	}
	return msgs, nil
}

// Connect configures and starts a device over cfg.Sockets and returns its
// index. Serve the daemon's ends of the sockets before calling it: the kernel
// may send I/O (a partition scan) as soon as the disk is added.
func (c *Client) Connect(cfg ConnectConfig) (uint32, error) {
	if len(cfg.Sockets) == 0 {
		return 0, errors.New("nbd: connect: no sockets")
	}
	if cfg.SizeBytes == 0 {
		return 0, errors.New("nbd: connect: size is 0")
	}
	if len(cfg.Sockets) > 1 && cfg.ServerFlags&FlagCanMultiConn == 0 {
		return 0, fmt.Errorf("nbd: connect: %d sockets need FlagCanMultiConn in the server flags", len(cfg.Sockets))
	}
	ae := netlink.NewAttributeEncoder()
	if cfg.Index != nil {
		ae.Uint32(attrIndex, *cfg.Index)
	}
	ae.Uint64(attrSizeBytes, cfg.SizeBytes)
	if cfg.BlockSize != 0 {
		ae.Uint64(attrBlockSizeBytes, cfg.BlockSize)
	}
	if cfg.Timeout > 0 {
		ae.Uint64(attrTimeout, seconds(cfg.Timeout))
	}
	if cfg.DeadConnTimeout > 0 {
		ae.Uint64(attrDeadConnTimeout, seconds(cfg.DeadConnTimeout))
	}
	ae.Uint64(attrServerFlags, cfg.ServerFlags)
	if cfg.ClientFlags != 0 {
		ae.Uint64(attrClientFlags, cfg.ClientFlags)
	}
	if cfg.BackendIdentifier != "" {
		ae.String(attrBackendIdentifier, cfg.BackendIdentifier)
	}
	if err := encodeSockets(ae, cfg.Sockets); err != nil {
		return 0, err
	}
	// Request only: the kernel answers success with a message carrying the
	// index (an ACK would arrive as a second datagram nobody reads).
	msgs, err := c.execute("connect", cmdConnect, netlink.Request, ae, cfg.Sockets)
	if err != nil {
		return 0, err
	}
	for _, m := range msgs {
		if idx, ok, err := parseIndex(m.Data); err != nil {
			return 0, fmt.Errorf("nbd: connect: parse reply: %w", err)
		} else if ok {
			return idx, nil
		}
	}
	return 0, errors.New("nbd: connect: the kernel's reply has no device index")
}

// Disconnect asks the kernel to disconnect /dev/nbdN: it sends a DISC request
// on every connection and shuts the sockets down. I/O still queued fails.
func (c *Client) Disconnect(index uint32) error {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, index)
	_, err := c.execute(fmt.Sprintf("disconnect nbd%d", index), cmdDisconnect, netlink.Request|netlink.Acknowledge, ae, nil)
	return err
}

// Reconfigure changes a connected device: it hands over sockets for dead
// connections and changes size and timeouts (see ReconfigureConfig).
func (c *Client) Reconfigure(index uint32, cfg ReconfigureConfig) error {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, index)
	if cfg.SizeBytes != 0 {
		ae.Uint64(attrSizeBytes, cfg.SizeBytes)
	}
	if cfg.BlockSize != 0 {
		ae.Uint64(attrBlockSizeBytes, cfg.BlockSize)
	}
	if cfg.Timeout > 0 {
		ae.Uint64(attrTimeout, seconds(cfg.Timeout))
	}
	if cfg.DeadConnTimeout > 0 {
		ae.Uint64(attrDeadConnTimeout, seconds(cfg.DeadConnTimeout))
	}
	if cfg.ClientFlags != nil {
		ae.Uint64(attrClientFlags, *cfg.ClientFlags)
	}
	if cfg.BackendIdentifier != "" {
		ae.String(attrBackendIdentifier, cfg.BackendIdentifier)
	}
	if len(cfg.Sockets) > 0 {
		if err := encodeSockets(ae, cfg.Sockets); err != nil {
			return err
		}
	}
	_, err := c.execute(fmt.Sprintf("reconfigure nbd%d", index), cmdReconfigure, netlink.Request|netlink.Acknowledge, ae, cfg.Sockets)
	return err
}

// Status reports one device. The error wraps os.ErrNotExist when the kernel
// has no /dev/nbdN.
func (c *Client) Status(index uint32) (DeviceStatus, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, index)
	devs, err := c.status(fmt.Sprintf("status nbd%d", index), ae)
	if err != nil {
		return DeviceStatus{}, err
	}
	for _, d := range devs {
		if d.Index == index {
			return d, nil
		}
	}
	return DeviceStatus{}, fmt.Errorf("nbd: status nbd%d: %w", index, os.ErrNotExist)
}

// List reports every NBD device the kernel has.
func (c *Client) List() ([]DeviceStatus, error) {
	return c.status("list devices", netlink.NewAttributeEncoder())
}

func (c *Client) status(op string, ae *netlink.AttributeEncoder) ([]DeviceStatus, error) {
	msgs, err := c.execute(op, cmdStatus, netlink.Request, ae, nil)
	if err != nil {
		return nil, err
	}
	var devs []DeviceStatus
	for _, m := range msgs {
		d, err := parseDeviceList(m.Data)
		if err != nil {
			return nil, fmt.Errorf("nbd: %s: parse reply: %w", op, err)
		}
		devs = append(devs, d...)
	}
	return devs, nil
}

// WatchLinkDead subscribes to the kernel's LINK_DEAD events on a socket of
// its own and returns a channel that receives the index of a device each
// time one of its connections dies (the kernel noticed the socket fail or
// close). Events the channel's buffer cannot hold wait until they are read.
// The channel is closed when ctx is done or the socket fails.
func (c *Client) WatchLinkDead(ctx context.Context) (<-chan uint32, error) {
	if c.group == 0 {
		return nil, fmt.Errorf("nbd: watch link-dead events: family %q has no multicast group %q", FamilyName, MulticastGroup)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	wc, err := c.dialWatch()
	if err != nil {
		return nil, fmt.Errorf("nbd: watch link-dead events: dial: %w", err)
	}
	if err := c.joinGroup(wc, c.group); err != nil {
		wc.Close()
		return nil, fmt.Errorf("nbd: watch link-dead events: join group %q: %w", MulticastGroup, err)
	}
	ch := make(chan uint32, 16)
	stop := context.AfterFunc(ctx, func() { wc.Close() })
	go func() {
		defer close(ch)
		defer stop()
		defer wc.Close()
		for {
			msgs, _, err := wc.Receive()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				if errors.Is(err, syscall.ENOBUFS) {
					continue // overrun: events were lost, keep listening
				}
				return
			}
			for _, m := range msgs {
				if m.Header.Command != cmdLinkDead {
					continue
				}
				idx, ok, err := parseIndex(m.Data)
				if err != nil || !ok {
					continue
				}
				select {
				case ch <- idx:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return ch, nil
}

// parseIndex returns NBD_ATTR_INDEX from a message's attributes.
func parseIndex(b []byte) (idx uint32, ok bool, err error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return 0, false, err
	}
	for ad.Next() {
		if ad.Type() == attrIndex {
			idx, ok = ad.Uint32(), true
		}
	}
	if err := ad.Err(); err != nil {
		return 0, false, err
	}
	return idx, ok, nil
}

// parseDeviceList returns the devices in a STATUS reply's
// NBD_ATTR_DEVICE_LIST.
func parseDeviceList(b []byte) ([]DeviceStatus, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	var devs []DeviceStatus
	for ad.Next() {
		if ad.Type() != attrDeviceList {
			continue
		}
		ad.Nested(func(lad *netlink.AttributeDecoder) error {
			for lad.Next() {
				if lad.Type() != deviceItem {
					continue
				}
				var d DeviceStatus
				var haveIndex bool
				lad.Nested(func(dad *netlink.AttributeDecoder) error {
					for dad.Next() {
						switch dad.Type() {
						case deviceIndex:
							d.Index, haveIndex = dad.Uint32(), true
						case deviceConnected:
							d.Connected = dad.Uint8() != 0
						}
					}
					return dad.Err()
				})
				if !haveIndex {
					return errors.New("device item without an index")
				}
				devs = append(devs, d)
			}
			return lad.Err()
		})
	}
	if err := ad.Err(); err != nil {
		return nil, err
	}
	return devs, nil
}
