package verbs

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"
)

// NodeType is enum ibv_node_type.
type NodeType int

func (n NodeType) String() string {
	switch n {
	case 1:
		return "CA"
	case 2:
		return "switch"
	case 3:
		return "router"
	case 4:
		return "RNIC"
	case 5:
		return "usNIC"
	case 6:
		return "usNIC UDP"
	}
	return "unknown"
}

// Transport is enum ibv_transport_type.
type Transport int

const (
	TransportIB    Transport = 0
	TransportIWARP Transport = 1
)

func (t Transport) String() string {
	switch t {
	case TransportIB:
		return "InfiniBand"
	case TransportIWARP:
		return "iWARP"
	}
	return "unknown"
}

// PortState is enum ibv_port_state.
type PortState int

func (s PortState) String() string {
	switch s {
	case 1:
		return "DOWN"
	case 2:
		return "INIT"
	case 3:
		return "ARMED"
	case 4:
		return "ACTIVE"
	case 5:
		return "ACTIVE_DEFER"
	}
	return "NOP"
}

// PortActive is the state of a usable port.
const PortActive PortState = 4

// MTU is enum ibv_mtu.
type MTU int

// Bytes is the MTU in bytes (0 when unknown).
func (m MTU) Bytes() int {
	if m < 1 || m > 5 {
		return 0
	}
	return 128 << m
}

func (m MTU) String() string { return fmt.Sprint(m.Bytes()) }

// LinkLayer is the port's link layer.
type LinkLayer int

func (l LinkLayer) String() string {
	switch l {
	case 1:
		return "InfiniBand"
	case 2:
		return "Ethernet"
	}
	return "unspecified"
}

// DeviceAttr are the limits ibv_query_device reports.
type DeviceAttr struct {
	FirmwareVersion   string
	NodeGUID          uint64
	VendorID          uint32
	VendorPartID      uint32
	MaxMRSize         uint64
	MaxQP             int
	MaxQPWR           int
	MaxSGE            int
	MaxCQ             int
	MaxCQE            int
	MaxMR             int
	MaxPD             int
	MaxQPRdAtom       int // RDMA READs a QP serves at once (responder resources)
	MaxQPInitRdAtom   int // RDMA READs a QP keeps outstanding (initiator depth)
	MaxResponderDepth int
	PhysPortCount     int
	MaxSRQ            int
	PageSizeCapMask   uint64
	DeviceCapFlags    uint32
}

// PortAttr are a port's facts.
type PortAttr struct {
	Port        int
	State       PortState
	MaxMTU      MTU
	ActiveMTU   MTU
	GIDTableLen int
	LinkLayer   LinkLayer
	ActiveSpeed uint8
	ActiveWidth uint8
	MaxMsgSize  uint32
}

// GID is one entry of a port's GID table.
type GID struct {
	Index  int
	Raw    [16]byte
	Type   string // "IB/RoCE v1", "RoCE v2" (from sysfs; empty where not reported)
	NetDev string // the netdev the GID belongs to (RoCE)
}

// Addr returns the GID as an IPv6 address; RoCE v2 GIDs of IPv4 addresses are
// IPv4-mapped.
func (g GID) Addr() netip.Addr { return netip.AddrFrom16(g.Raw) }

func (g GID) String() string { return g.Addr().String() }

// DeviceNames lists the RDMA devices libibverbs sees.
func DeviceNames() ([]string, error) {
	if !cgoAvailable {
		return nil, errNoCgo
	}
	return cDeviceNames()
}

// SysfsDevices lists the RDMA devices the kernel has (/sys/class/infiniband),
// without libibverbs.
func SysfsDevices() []string {
	ents, err := os.ReadDir("/sys/class/infiniband")
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// Context is an open RDMA device (struct ibv_context). A Context from
// OpenDevice is owned and closed by Close; one from a CMID belongs to librdmacm,
// and its Close does nothing.
type Context struct {
	mu    sync.Mutex
	ctx   unsafe.Pointer
	owned bool
}

// OpenDevice opens the RDMA device with the given name.
func OpenDevice(name string) (*Context, error) {
	if !cgoAvailable {
		return nil, errNoCgo
	}
	ctx, err := cOpenDevice(name)
	if err != nil {
		return nil, err
	}
	return &Context{ctx: ctx, owned: true}, nil
}

func (c *Context) ptr() (unsafe.Pointer, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx == nil {
		return nil, ErrClosed
	}
	return c.ctx, nil
}

// Close closes an owned device context; it is idempotent.
func (c *Context) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx == nil {
		return nil
	}
	ctx := c.ctx
	c.ctx = nil
	if c.owned {
		return cCloseDevice(ctx)
	}
	return nil
}

// Name is the device's name (rxe0, siw0, mlx5_0).
func (c *Context) Name() string {
	p, err := c.ptr()
	if err != nil {
		return ""
	}
	return cDeviceName(p)
}

// Kind returns the device's node type and transport.
func (c *Context) Kind() (NodeType, Transport) {
	p, err := c.ptr()
	if err != nil {
		return -1, -1
	}
	return cDeviceKind(p)
}

// Query returns the device's limits.
func (c *Context) Query() (DeviceAttr, error) {
	p, err := c.ptr()
	if err != nil {
		return DeviceAttr{}, err
	}
	return cQueryDevice(p)
}

// QueryPort returns the facts of port (numbered from 1).
func (c *Context) QueryPort(port int) (PortAttr, error) {
	p, err := c.ptr()
	if err != nil {
		return PortAttr{}, err
	}
	return cQueryPort(p, port)
}

// GIDs returns the port's non-empty GID table entries.
func (c *Context) GIDs(port int) ([]GID, error) {
	p, err := c.ptr()
	if err != nil {
		return nil, err
	}
	pa, err := cQueryPort(p, port)
	if err != nil {
		return nil, err
	}
	name := cDeviceName(p)
	var out []GID
	for i := 0; i < pa.GIDTableLen; i++ {
		raw, err := cQueryGID(p, port, i)
		if err != nil {
			break
		}
		if raw == ([16]byte{}) {
			continue
		}
		g := GID{Index: i, Raw: raw}
		base := fmt.Sprintf("/sys/class/infiniband/%s/ports/%d/gid_attrs", name, port)
		g.Type = readTrim(filepath.Join(base, "types", fmt.Sprint(i)))
		g.NetDev = readTrim(filepath.Join(base, "ndevs", fmt.Sprint(i)))
		out = append(out, g)
	}
	return out, nil
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// DeviceInfo are a device's facts for diagnostics and stats.
type DeviceInfo struct {
	Name      string
	NodeType  NodeType
	Transport Transport
	Attr      DeviceAttr
	Ports     []PortInfo
}

// PortInfo is one port of a DeviceInfo.
type PortInfo struct {
	PortAttr
	GIDs    []GID
	NetDevs []string // netdevs of the port (sysfs), e.g. the interface rxe or siw is on
}

// Info gathers the device's facts.
func (c *Context) Info() (DeviceInfo, error) {
	p, err := c.ptr()
	if err != nil {
		return DeviceInfo{}, err
	}
	di := DeviceInfo{Name: cDeviceName(p)}
	di.NodeType, di.Transport = cDeviceKind(p)
	if di.Attr, err = cQueryDevice(p); err != nil {
		return di, err
	}
	for port := 1; port <= di.Attr.PhysPortCount; port++ {
		pa, err := cQueryPort(p, port)
		if err != nil {
			return di, err
		}
		pi := PortInfo{PortAttr: pa}
		pi.GIDs, _ = c.GIDs(port)
		seen := map[string]bool{}
		for _, g := range pi.GIDs {
			if g.NetDev != "" && !seen[g.NetDev] {
				seen[g.NetDev] = true
				pi.NetDevs = append(pi.NetDevs, g.NetDev)
			}
		}
		if len(pi.NetDevs) == 0 && len(pi.GIDs) > 0 && di.Transport == TransportIWARP {
			// iWARP: no gid_attrs; the GID is the netdev's MAC address
			if nd := netDevByMAC(pi.GIDs[0].Raw[:6]); nd != "" {
				pi.NetDevs = []string{nd}
			}
		}
		di.Ports = append(di.Ports, pi)
	}
	return di, nil
}

// netDevByMAC finds the interface with the given hardware address.
func netDevByMAC(mac []byte) string {
	ifs, err := net.Interfaces()
	if err != nil {
		return ""
	}
	for _, ifi := range ifs {
		if bytes.Equal(ifi.HardwareAddr, mac) {
			return ifi.Name
		}
	}
	return ""
}
