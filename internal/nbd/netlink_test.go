package nbd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/genetlink/genltest"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

var testFamily = genetlink.Family{
	ID:      0x20,
	Name:    FamilyName,
	Version: FamilyVersion,
	Groups:  []genetlink.MulticastGroup{{ID: 7, Name: MulticastGroup}},
}

// testClient returns a Client talking to fn as the kernel's nbd family.
func testClient(t *testing.T, fn genltest.Func) *Client {
	t.Helper()
	cl, err := NewClient(genltest.Dial(genltest.ServeFamily(testFamily, fn)))
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// attrs is a decoded request: scalar attributes by type, plus the socket fds.
type attrs struct {
	u32     map[uint16]uint32
	u64     map[uint16]uint64
	str     map[uint16]string
	sockets []uint32
}

func decodeAttrs(t *testing.T, b []byte) attrs {
	t.Helper()
	a := attrs{u32: map[uint16]uint32{}, u64: map[uint16]uint64{}, str: map[uint16]string{}}
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		t.Fatalf("attributes: %v", err)
	}
	for ad.Next() {
		switch typ := ad.Type(); typ {
		case attrIndex:
			a.u32[typ] = ad.Uint32()
		case attrSizeBytes, attrBlockSizeBytes, attrTimeout, attrServerFlags, attrClientFlags, attrDeadConnTimeout:
			a.u64[typ] = ad.Uint64()
		case attrBackendIdentifier:
			a.str[typ] = ad.String()
		case attrSockets:
			a.sockets = []uint32{}
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				for nad.Next() {
					if nad.Type() != sockItem {
						return fmt.Errorf("socket list item of type %d", nad.Type())
					}
					nad.Nested(func(sad *netlink.AttributeDecoder) error {
						for sad.Next() {
							if sad.Type() != sockFD {
								return fmt.Errorf("socket item attribute of type %d", sad.Type())
							}
							a.sockets = append(a.sockets, sad.Uint32())
						}
						return nil
					})
				}
				return nil
			})
		default:
			t.Fatalf("unexpected attribute type %d", typ)
		}
	}
	if err := ad.Err(); err != nil {
		t.Fatalf("attributes: %v", err)
	}
	return a
}

func indexReply(cmd uint8, index uint32) []genetlink.Message {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, index)
	b, _ := ae.Encode()
	return []genetlink.Message{{Header: genetlink.Header{Command: cmd, Version: FamilyVersion}, Data: b}}
}

func testSockets(t *testing.T, n int) ([]*os.File, []uint32) {
	t.Helper()
	var files []*os.File
	var fds []uint32
	for range n {
		kern, c, err := NewSocketPair(nil)
		if err != nil {
			t.Fatalf("NewSocketPair: %v", err)
		}
		t.Cleanup(func() { kern.Close(); c.Close() })
		files = append(files, kern)
		fds = append(fds, uint32(kern.Fd()))
	}
	return files, fds
}

func TestNewClientMissingFamily(t *testing.T) {
	c := genltest.Dial(func(genetlink.Message, netlink.Message) ([]genetlink.Message, error) {
		return nil, genltest.Error(int(unix.ENOENT))
	})
	_, err := NewClient(c)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("NewClient without the family: want an error wrapping %v, got %v", os.ErrNotExist, err)
	}
	if !strings.Contains(err.Error(), "modprobe nbd") {
		t.Fatalf("NewClient without the family: want a hint to modprobe nbd, got %q", err)
	}
}

func TestConnect(t *testing.T) {
	files, fds := testSockets(t, 2)
	tests := []struct {
		name string
		cfg  ConnectConfig
		want attrs
	}{
		{
			name: "full",
			cfg: ConnectConfig{
				Index:             new(uint32(3)),
				Sockets:           files,
				SizeBytes:         64 << 20,
				BlockSize:         4096,
				Timeout:           1500 * time.Millisecond,
				DeadConnTimeout:   time.Minute,
				ServerFlags:       FlagHasFlags | FlagSendFlush | FlagSendTrim | FlagCanMultiConn,
				ClientFlags:       ClientDestroyOnDisconnect,
				BackendIdentifier: "rbd:vol1",
			},
			want: attrs{
				u32: map[uint16]uint32{attrIndex: 3},
				u64: map[uint16]uint64{
					attrSizeBytes: 64 << 20, attrBlockSizeBytes: 4096, attrTimeout: 2, attrDeadConnTimeout: 60,
					attrServerFlags: 0x125, attrClientFlags: 1,
				},
				str:     map[uint16]string{attrBackendIdentifier: "rbd:vol1"},
				sockets: fds,
			},
		},
		{
			name: "minimal, any index",
			cfg:  ConnectConfig{Sockets: files[:1], SizeBytes: 1 << 30},
			want: attrs{
				u32:     map[uint16]uint32{},
				u64:     map[uint16]uint64{attrSizeBytes: 1 << 30, attrServerFlags: 0},
				str:     map[uint16]string{},
				sockets: fds[:1],
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got attrs
			cl := testClient(t, genltest.CheckRequest(testFamily.ID, cmdConnect, netlink.Request,
				func(greq genetlink.Message, _ netlink.Message) ([]genetlink.Message, error) {
					if greq.Header.Version != FamilyVersion {
						return nil, fmt.Errorf("version %d", greq.Header.Version)
					}
					got = decodeAttrs(t, greq.Data)
					return indexReply(cmdConnect, 5), nil
				}))
			idx, err := cl.Connect(tt.cfg)
			if err != nil {
				t.Fatalf("Connect: %v", err)
			}
			if idx != 5 {
				t.Fatalf("Connect index: want 5, got %d", idx)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Connect attributes:\nwant %+v\n got %+v", tt.want, got)
			}
		})
	}
}

func TestConnectErrors(t *testing.T) {
	files, _ := testSockets(t, 2)
	ok := ConnectConfig{Sockets: files[:1], SizeBytes: 1 << 20}
	tests := []struct {
		name   string
		cfg    ConnectConfig
		kernel genltest.Func
		want   error // matched with errors.Is when not nil
		substr string
	}{
		{name: "no sockets", cfg: ConnectConfig{SizeBytes: 1}, substr: "no sockets"},
		{name: "no size", cfg: ConnectConfig{Sockets: files[:1]}, substr: "size is 0"},
		{name: "nil socket", cfg: ConnectConfig{Sockets: []*os.File{nil}, SizeBytes: 1}, substr: "socket 0 is nil"},
		{name: "multi-conn flag", cfg: ConnectConfig{Sockets: files, SizeBytes: 1}, substr: "FlagCanMultiConn"},
		{
			name: "busy",
			cfg:  ok,
			kernel: func(genetlink.Message, netlink.Message) ([]genetlink.Message, error) {
				return nil, genltest.Error(int(unix.EBUSY))
			},
			want: unix.EBUSY,
		},
		{
			name: "permission",
			cfg:  ok,
			kernel: func(genetlink.Message, netlink.Message) ([]genetlink.Message, error) {
				return nil, genltest.Error(int(unix.EPERM))
			},
			want: os.ErrPermission,
		},
		{
			name: "reply without index",
			cfg:  ok,
			kernel: func(genetlink.Message, netlink.Message) ([]genetlink.Message, error) {
				return []genetlink.Message{{Header: genetlink.Header{Command: cmdConnect}}}, nil
			},
			substr: "no device index",
		},
		{
			name: "malformed reply",
			cfg:  ok,
			kernel: func(genetlink.Message, netlink.Message) ([]genetlink.Message, error) {
				return []genetlink.Message{{Header: genetlink.Header{Command: cmdConnect}, Data: []byte{5, 0, 1}}}, nil
			},
			substr: "parse reply",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kernel := tt.kernel
			if kernel == nil {
				kernel = func(genetlink.Message, netlink.Message) ([]genetlink.Message, error) {
					t.Errorf("request sent to the kernel")
					return indexReply(cmdConnect, 0), nil
				}
			}
			cl := testClient(t, kernel)
			_, err := cl.Connect(tt.cfg)
			if err == nil {
				t.Fatalf("Connect: want an error, got nil")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Connect: want an error wrapping %v, got %v", tt.want, err)
			}
			if !strings.HasPrefix(err.Error(), "nbd: ") || !strings.Contains(err.Error(), tt.substr) {
				t.Fatalf("Connect error: want \"nbd: ...%s...\", got %q", tt.substr, err)
			}
		})
	}
}

func TestDisconnect(t *testing.T) {
	var got attrs
	cl := testClient(t, genltest.CheckRequest(testFamily.ID, cmdDisconnect, netlink.Request|netlink.Acknowledge,
		func(greq genetlink.Message, _ netlink.Message) ([]genetlink.Message, error) {
			got = decodeAttrs(t, greq.Data)
			return nil, genltest.Error(0) // the ACK
		}))
	if err := cl.Disconnect(4); err != nil {
		t.Fatalf("Disconnect: %v", err)
	}
	if want := (attrs{u32: map[uint16]uint32{attrIndex: 4}, u64: map[uint16]uint64{}, str: map[uint16]string{}}); !reflect.DeepEqual(got, want) {
		t.Fatalf("Disconnect attributes: want %+v, got %+v", want, got)
	}

	cl = testClient(t, func(genetlink.Message, netlink.Message) ([]genetlink.Message, error) {
		return nil, genltest.Error(int(unix.EINVAL))
	})
	if err := cl.Disconnect(99); !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "nbd99") {
		t.Fatalf("Disconnect of a missing device: want an EINVAL error naming nbd99, got %v", err)
	}
}

func TestReconfigure(t *testing.T) {
	files, fds := testSockets(t, 1)
	tests := []struct {
		name string
		cfg  ReconfigureConfig
		want attrs
	}{
		{
			name: "socket only",
			cfg:  ReconfigureConfig{Sockets: files},
			want: attrs{u32: map[uint16]uint32{attrIndex: 2}, u64: map[uint16]uint64{}, str: map[uint16]string{}, sockets: fds},
		},
		{
			name: "everything",
			cfg: ReconfigureConfig{
				Sockets: files, SizeBytes: 1 << 30, BlockSize: 512, Timeout: time.Second, DeadConnTimeout: 10 * time.Millisecond,
				ClientFlags: new(uint64(0)), BackendIdentifier: "b",
			},
			want: attrs{
				u32: map[uint16]uint32{attrIndex: 2},
				u64: map[uint16]uint64{
					attrSizeBytes: 1 << 30, attrBlockSizeBytes: 512, attrTimeout: 1, attrDeadConnTimeout: 1, attrClientFlags: 0,
				},
				str:     map[uint16]string{attrBackendIdentifier: "b"},
				sockets: fds,
			},
		},
		{
			name: "resize",
			cfg:  ReconfigureConfig{SizeBytes: 1 << 20},
			want: attrs{u32: map[uint16]uint32{attrIndex: 2}, u64: map[uint16]uint64{attrSizeBytes: 1 << 20}, str: map[uint16]string{}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got attrs
			cl := testClient(t, genltest.CheckRequest(testFamily.ID, cmdReconfigure, netlink.Request|netlink.Acknowledge,
				func(greq genetlink.Message, _ netlink.Message) ([]genetlink.Message, error) {
					got = decodeAttrs(t, greq.Data)
					return nil, genltest.Error(0)
				}))
			if err := cl.Reconfigure(2, tt.cfg); err != nil {
				t.Fatalf("Reconfigure: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Reconfigure attributes:\nwant %+v\n got %+v", tt.want, got)
			}
		})
	}
}

func deviceListReply(devs ...DeviceStatus) []genetlink.Message {
	ae := netlink.NewAttributeEncoder()
	ae.Nested(attrDeviceList, func(lae *netlink.AttributeEncoder) error {
		for _, d := range devs {
			lae.Nested(deviceItem, func(dae *netlink.AttributeEncoder) error {
				dae.Uint32(deviceIndex, d.Index)
				var c uint8
				if d.Connected {
					c = 1
				}
				dae.Uint8(deviceConnected, c)
				return nil
			})
		}
		return nil
	})
	b, _ := ae.Encode()
	return []genetlink.Message{{Header: genetlink.Header{Command: cmdStatus, Version: FamilyVersion}, Data: b}}
}

func TestStatus(t *testing.T) {
	all := []DeviceStatus{{0, false}, {1, true}, {7, true}}
	cl := testClient(t, genltest.CheckRequest(testFamily.ID, cmdStatus, netlink.Request,
		func(greq genetlink.Message, _ netlink.Message) ([]genetlink.Message, error) {
			a := decodeAttrs(t, greq.Data)
			idx, ok := a.u32[attrIndex]
			if !ok {
				return deviceListReply(all...), nil
			}
			for _, d := range all {
				if d.Index == idx {
					return deviceListReply(d), nil
				}
			}
			return deviceListReply(), nil
		}))
	got, err := cl.List()
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if !reflect.DeepEqual(got, all) {
		t.Fatalf("List: want %v, got %v", all, got)
	}
	for _, want := range all {
		got, err := cl.Status(want.Index)
		if err != nil {
			t.Fatalf("Status(%d): %v", want.Index, err)
		}
		if got != want {
			t.Fatalf("Status(%d): want %+v, got %+v", want.Index, want, got)
		}
	}
	if _, err := cl.Status(3); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Status of a missing device: want an error wrapping %v, got %v", os.ErrNotExist, err)
	}
}

func TestWatchLinkDead(t *testing.T) {
	events := make(chan genetlink.Message)
	cl := testClient(t, func(genetlink.Message, netlink.Message) ([]genetlink.Message, error) {
		return nil, errors.New("unexpected request")
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var joined uint32
	cl.joinGroup = func(_ *genetlink.Conn, group uint32) error {
		joined = group
		return nil
	}
	cl.dialWatch = func() (*genetlink.Conn, error) {
		return genltest.Dial(func(greq genetlink.Message, _ netlink.Message) ([]genetlink.Message, error) {
			select {
			case m := <-events:
				return []genetlink.Message{m}, nil
			case <-ctx.Done():
				return nil, errors.New("socket closed")
			}
		}), nil
	}
	ch, err := cl.WatchLinkDead(ctx)
	if err != nil {
		t.Fatalf("WatchLinkDead: %v", err)
	}
	if joined != 7 {
		t.Fatalf("joined group: want 7, got %d", joined)
	}
	sendEvents := []genetlink.Message{
		indexReply(cmdLinkDead, 3)[0],
		indexReply(cmdStatus, 8)[0],                                       // not LINK_DEAD: ignored
		{Header: genetlink.Header{Command: cmdLinkDead}},                  // no index: ignored
		{Header: genetlink.Header{Command: cmdLinkDead}, Data: []byte{1}}, // malformed: ignored
		indexReply(cmdLinkDead, 4)[0],
	}
	go func() {
		for _, m := range sendEvents {
			select {
			case events <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	for _, want := range []uint32{3, 4} {
		select {
		case got := <-ch:
			if got != want {
				t.Fatalf("LINK_DEAD event: want index %d, got %d", want, got)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no LINK_DEAD event for %d", want)
		}
	}
	cancel()
	select {
	case idx, ok := <-ch:
		if ok {
			t.Fatalf("after cancel: want a closed channel, got event %d", idx)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("channel not closed after cancel")
	}
}

func TestWatchLinkDeadErrors(t *testing.T) {
	f := testFamily
	f.Groups = nil
	cl, err := NewClient(genltest.Dial(genltest.ServeFamily(f, nil)))
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	defer cl.Close()
	if _, err := cl.WatchLinkDead(context.Background()); err == nil || !strings.Contains(err.Error(), MulticastGroup) {
		t.Fatalf("WatchLinkDead without the group: want an error naming %q, got %v", MulticastGroup, err)
	}

	cl = testClient(t, nil)
	cl.dialWatch = func() (*genetlink.Conn, error) { return genltest.Dial(nil), nil }
	cl.joinGroup = func(*genetlink.Conn, uint32) error { return unix.EPERM }
	if _, err := cl.WatchLinkDead(context.Background()); !errors.Is(err, unix.EPERM) {
		t.Fatalf("WatchLinkDead when joining fails: want %v, got %v", unix.EPERM, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := cl.WatchLinkDead(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("WatchLinkDead with a done context: want %v, got %v", context.Canceled, err)
	}
}

func FuzzParseDeviceList(f *testing.F) {
	f.Add(deviceListReply(DeviceStatus{1, true}, DeviceStatus{2, false})[0].Data)
	f.Add(deviceListReply()[0].Data)
	f.Add([]byte{8, 0, 9, 0, 4, 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		devs, err := parseDeviceList(b)
		if err != nil {
			return
		}
		// Round trip: what parsed must encode to something that parses
		// the same.
		again, err := parseDeviceList(deviceListReply(devs...)[0].Data)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if len(devs) == 0 && len(again) == 0 {
			return
		}
		if !reflect.DeepEqual(devs, again) {
			t.Fatalf("round trip: want %v, got %v", devs, again)
		}
	})
}

func FuzzParseIndex(f *testing.F) {
	f.Add(indexReply(cmdConnect, 5)[0].Data)
	f.Add([]byte{})
	f.Add([]byte{5, 0, 1, 0, 9})
	f.Fuzz(func(t *testing.T, b []byte) {
		idx, ok, err := parseIndex(b)
		if err != nil || !ok {
			return
		}
		got, ok, err := parseIndex(indexReply(cmdConnect, idx)[0].Data)
		if err != nil || !ok || got != idx {
			t.Fatalf("round trip: want %d, got %d, %v, %v", idx, got, ok, err)
		}
	})
}
