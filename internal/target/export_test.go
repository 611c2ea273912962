package target

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseExport(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ExportConfig
		err  string
	}{
		{"/dev/ram0", ExportConfig{Path: "/dev/ram0"}, ""},
		{"/dev/ram0,ro", ExportConfig{Path: "/dev/ram0", ReadOnly: true}, ""},
		{"/srv/a.img,shared,bs=4096", ExportConfig{Path: "/srv/a.img", Shared: true, BlockSize: 4096}, ""},
		{"/dev/ram0,ro,rw", ExportConfig{Path: "/dev/ram0"}, ""},
		{"dev/ram0", ExportConfig{}, "absolute and clean"},
		{"/dev/../dev/ram0", ExportConfig{}, "absolute and clean"},
		{"/dev/ram0,bogus", ExportConfig{}, "unknown option"},
		{"/dev/ram0,bs=x", ExportConfig{}, "bad block size"},
		{"", ExportConfig{}, "without a path"},
		{"/dev/ram0,key=/etc/rbd/keys/ram0.key", ExportConfig{Path: "/dev/ram0", KeyFile: "/etc/rbd/keys/ram0.key"}, ""},
		{"/dev/ram0,key=/k,auth=optional", ExportConfig{Path: "/dev/ram0", KeyFile: "/k", RequireAuth: new(false)}, ""},
		{"/dev/ram0,key=keys/ram0.key", ExportConfig{}, "absolute path"},
		{"/dev/ram0,auth=required", ExportConfig{}, "needs a key_file"},
		{"/dev/ram0,allow=10.0.0.0/24,allow-ro=10.0.1.7", ExportConfig{Path: "/dev/ram0", Allow: []string{"10.0.0.0/24", "10.0.1.7 ro"}}, ""},
		{"/dev/ram0,allow=10.0.0.1/24", ExportConfig{}, "host bits set"},
		{"/dev/ram0,allow=10.0.0.300", ExportConfig{}, "allow entry"},
	} {
		got, err := ParseExport(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseExport(%q): want an error with %q, got %v", tc.in, tc.err, err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseExport(%q): want %+v, got %+v %v", tc.in, tc.want, got, err)
		}
	}
}

// An initiator's name is compared with the configured names only: nothing it
// sends reaches the filesystem.
func TestExportLookup(t *testing.T) {
	x, err := newExports([]ExportConfig{{Path: "/dev/ram0"}, {Path: "/srv/img/disk.raw"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		ok   bool
		msg  string
	}{
		{"/dev/ram0", true, ""},
		{"/srv/img/disk.raw", true, ""},
		{"/dev/ram1", false, "not exported"},
		{"/dev/../dev/ram0", false, "absolute and clean"},
		{"/dev//ram0", false, "absolute and clean"},
		{"dev/ram0", false, "absolute and clean"},
		{"/dev/ram0/", false, "absolute and clean"},
		{"/etc/shadow", false, "not exported"},
	} {
		e, err := x.lookup(tc.name)
		if tc.ok != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.msg)) || (tc.ok && e.Name() != tc.name) {
			t.Errorf("lookup(%q): ok=%v, got %v %v", tc.name, tc.ok, e, err)
		}
	}
	if _, err := newExports([]ExportConfig{{Path: "/dev/ram0"}, {Path: "/dev/ram0"}}); err == nil {
		t.Error("an export listed twice was accepted")
	}
}

func TestAllowedLongestPrefix(t *testing.T) {
	for _, tc := range []struct {
		name  string
		allow []string
		addr  string
		ok    bool
		ro    bool
	}{
		{"no list allows all", nil, "192.0.2.1", true, false},
		{"in the network", []string{"10.0.0.0/24"}, "10.0.0.9", true, false},
		{"outside", []string{"10.0.0.0/24"}, "10.0.1.9", false, false},
		{"read-only entry", []string{"10.0.0.0/24 ro"}, "10.0.0.9", true, true},
		{"longest prefix wins: host rw in ro network", []string{"10.0.0.0/16 ro", "10.0.0.7 rw"}, "10.0.0.7", true, false},
		{"longest prefix wins: host ro in rw network", []string{"10.0.0.0/16", "10.0.0.7 ro"}, "10.0.0.7", true, true},
		{"v4-mapped peer", []string{"10.0.0.0/8"}, "::ffff:10.1.2.3", true, false},
		{"v6", []string{"fd00::/64 rw"}, "fd00::5", true, false},
		{"v6 outside", []string{"fd00::/64"}, "fd01::5", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, err := newExports([]ExportConfig{{Path: "/dev/ram0", Allow: tc.allow}})
			if err != nil {
				t.Fatal(err)
			}
			ok, ro := x.list[0].allowed(netip.MustParseAddr(tc.addr))
			if ok != tc.ok || ro != tc.ro {
				t.Fatalf("allowed(%s) = %v, read-only %v; want %v, %v", tc.addr, ok, ro, tc.ok, tc.ro)
			}
		})
	}
}
