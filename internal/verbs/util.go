package verbs

import (
	"fmt"
	"net"
	"net/netip"
)

var errNoCgo = fmt.Errorf("%w: rbd was built without cgo (libibverbs/librdmacm)", ErrNotSupported)

func htons(v uint16) uint16 { return v<<8 | v>>8 }
func ntohs(v uint16) uint16 { return v<<8 | v>>8 }

// scopeID is the interface index of a link-local IPv6 zone ("fe80::1%eth0").
func scopeID(a netip.Addr) uint32 {
	z := a.Zone()
	if z == "" {
		return 0
	}
	if ifi, err := net.InterfaceByName(z); err == nil {
		return uint32(ifi.Index)
	}
	return 0
}
