package initiator

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/Mellanox/rdmamap"
	"github.com/jsimonetti/rtnetlink/v2"
	"golang.org/x/sys/unix"

	"rbd/internal/verbs"
)

// RouteError says why the target's address cannot be reached over RDMA.
type RouteError struct {
	Target netip.Addr
	Iface  string // the interface the route leaves by ("" when there is no route)
	Reason string
	Hint   string
}

func (e *RouteError) Error() string { return e.Reason }

// checkRoute looks the target's address up in the kernel's routing table (as
// `ip route get` does) and checks that the interface it leaves by has an RDMA
// device. It returns the interface and the RDMA device.
func checkRoute(dst netip.Addr) (iface, rdmaDev string, err error) {
	c, err := rtnetlink.Dial(nil)
	if err != nil {
		return "", "", fmt.Errorf("rtnetlink: %w", err)
	}
	defer c.Close()
	req := &rtnetlink.RouteMessage{Family: unix.AF_INET, DstLength: 32, Attributes: rtnetlink.RouteAttributes{Dst: net.IP(dst.AsSlice())}}
	if dst.Is6() {
		req.Family, req.DstLength = unix.AF_INET6, 128
	}
	rms, err := c.Route.Get(req)
	if err != nil || len(rms) == 0 {
		if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) || err == nil {
			return "", "", &RouteError{Target: dst, Reason: fmt.Sprintf("no route to %s", dst),
				Hint: "check the address, or add a route / an address on the RDMA interface (ip addr add ... dev IFACE)"}
		}
		return "", "", &RouteError{Target: dst, Reason: fmt.Sprintf("no route to %s: %v", dst, err), Hint: "check the address and the routing table (ip route get " + dst.String() + ")"}
	}
	rm := rms[0]
	ifindex := int(rm.Attributes.OutIface)
	if rm.Type == unix.RTN_LOCAL {
		// the target is this host: rdma_cm uses the interface that owns the address
		if name := ifaceOwning(dst); name != "" {
			iface = name
		}
	}
	if iface == "" {
		ifi, err := net.InterfaceByIndex(ifindex)
		if err != nil {
			return "", "", &RouteError{Target: dst, Reason: fmt.Sprintf("route to %s: interface %d: %v", dst, ifindex, err)}
		}
		iface = ifi.Name
	}
	if dev := rdmaDeviceFor(iface); dev != "" {
		return iface, dev, nil
	}
	return iface, "", &RouteError{Target: dst, Iface: iface,
		Reason: fmt.Sprintf("the route to %s leaves by %s, which has no RDMA device", dst, iface),
		Hint:   fmt.Sprintf("give %s an RDMA device, e.g. soft-RoCE: rdma link add rxe0 type rxe netdev %s (or soft-iWARP: rdma link add siw0 type siw netdev %s)", iface, iface, iface)}
}

func ifaceOwning(a netip.Addr) string {
	ifs, err := net.Interfaces()
	if err != nil {
		return ""
	}
	for _, ifi := range ifs {
		addrs, _ := ifi.Addrs()
		for _, ad := range addrs {
			if pn, ok := ad.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(pn.IP); ok && ip.Unmap() == a {
					return ifi.Name
				}
			}
		}
	}
	return ""
}

// rdmaDeviceFor finds the RDMA device on a netdev: rdmamap knows RoCE and
// InfiniBand devices (sysfs); iWARP devices are matched by their GID, which
// is the netdev's MAC address.
func rdmaDeviceFor(netdev string) string {
	if dev, err := rdmamap.GetRdmaDeviceForNetdevice(netdev); err == nil && dev != "" {
		return dev
	}
	for _, name := range verbs.SysfsDevices() {
		ctx, err := verbs.OpenDevice(name)
		if err != nil {
			continue
		}
		info, err := ctx.Info()
		ctx.Close()
		if err != nil {
			continue
		}
		for _, p := range info.Ports {
			for _, nd := range p.NetDevs {
				if nd == netdev {
					return name
				}
			}
		}
	}
	return ""
}
