package target

import (
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
	} {
		got, err := ParseExport(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseExport(%q): want an error with %q, got %v", tc.in, tc.err, err)
			}
			continue
		}
		if err != nil || got != tc.want {
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
