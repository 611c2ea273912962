//go:build !linux || !cgo

package verbs

import (
	"net/netip"
	"unsafe"
)

const cgoAvailable = false

func cDeviceNames() ([]string, error)                                        { return nil, errNoCgo }
func cOpenDevice(string) (unsafe.Pointer, error)                             { return nil, errNoCgo }
func cCloseDevice(unsafe.Pointer) error                                      { return errNoCgo }
func cDeviceName(unsafe.Pointer) string                                      { return "" }
func cDeviceKind(unsafe.Pointer) (NodeType, Transport)                       { return -1, -1 }
func cQueryDevice(unsafe.Pointer) (DeviceAttr, error)                        { return DeviceAttr{}, errNoCgo }
func cQueryPort(unsafe.Pointer, int) (PortAttr, error)                       { return PortAttr{}, errNoCgo }
func cQueryGID(unsafe.Pointer, int, int) ([16]byte, error)                   { return [16]byte{}, errNoCgo }
func cAllocPD(unsafe.Pointer) (unsafe.Pointer, error)                        { return nil, errNoCgo }
func cDeallocPD(unsafe.Pointer) error                                        { return errNoCgo }
func cDeregMR(unsafe.Pointer) error                                          { return errNoCgo }
func cCreateCompChannel(unsafe.Pointer) (unsafe.Pointer, int, error)         { return nil, -1, errNoCgo }
func cDestroyCompChannel(unsafe.Pointer) error                               { return errNoCgo }
func cDestroyCQ(unsafe.Pointer) error                                        { return errNoCgo }
func cReqNotifyCQ(unsafe.Pointer, bool) error                                { return errNoCgo }
func cGetCQEvent(unsafe.Pointer) (unsafe.Pointer, error)                     { return nil, errNoCgo }
func cAckCQEvents(unsafe.Pointer, int)                                       {}
func cPollCQ(unsafe.Pointer, []WC) (int, error)                              { return 0, errNoCgo }
func cDestroyQP(unsafe.Pointer)                                              {}
func cPostSend(unsafe.Pointer, []SendWR) (int, error)                        { return 0, errNoCgo }
func cPostRecv(unsafe.Pointer, []RecvWR) (int, error)                        { return 0, errNoCgo }
func cCreateEventChannel() (unsafe.Pointer, int, error)                      { return nil, -1, errNoCgo }
func cDestroyEventChannel(unsafe.Pointer)                                    {}
func cCreateID(unsafe.Pointer) (unsafe.Pointer, error)                       { return nil, errNoCgo }
func cDestroyID(unsafe.Pointer) error                                        { return errNoCgo }
func cMigrateID(unsafe.Pointer, unsafe.Pointer) error                        { return errNoCgo }
func cBindAddr(unsafe.Pointer, netip.AddrPort) error                         { return errNoCgo }
func cListen(unsafe.Pointer, int) error                                      { return errNoCgo }
func cResolveAddr(unsafe.Pointer, netip.AddrPort, netip.AddrPort, int) error { return errNoCgo }
func cResolveRoute(unsafe.Pointer, int) error                                { return errNoCgo }
func cConnect(unsafe.Pointer, bool, *ConnParam) error                        { return errNoCgo }
func cReject(unsafe.Pointer, []byte) error                                   { return errNoCgo }
func cDisconnect(unsafe.Pointer) error                                       { return errNoCgo }
func cIDVerbs(unsafe.Pointer) unsafe.Pointer                                 { return nil }
func cIDPort(unsafe.Pointer) int                                             { return 0 }
func cIDAddrs(unsafe.Pointer) (netip.AddrPort, netip.AddrPort) {
	return netip.AddrPort{}, netip.AddrPort{}
}
func cGetCMEvent(unsafe.Pointer) (rawCMEvent, error) { return rawCMEvent{}, errNoCgo }
func cEventString(CMEventType) string                { return "" }
func cCreateCQ(unsafe.Pointer, int, unsafe.Pointer, int) (unsafe.Pointer, int, error) {
	return nil, 0, errNoCgo
}
func cRegMR(unsafe.Pointer, unsafe.Pointer, int, Access) (unsafe.Pointer, uint32, uint32, error) {
	return nil, 0, 0, errNoCgo
}
func cCreateQP(unsafe.Pointer, unsafe.Pointer, unsafe.Pointer, unsafe.Pointer, *QPCaps) (unsafe.Pointer, uint32, error) {
	return nil, 0, errNoCgo
}
