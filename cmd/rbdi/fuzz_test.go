package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzLoadConfig: whatever rbdi.toml holds, loading it returns a
// configuration whose devices have a target and an export (and whose key
// files are absolute paths), or an error that names the file; it never
// panics.
func FuzzLoadConfig(f *testing.F) {
	if b, err := os.ReadFile("../../packaging/etc/rbdi.toml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("queues = 2\n[[device]]\ntarget = \"10.0.0.1\"\nexport = \"/dev/ram0\"\n"))
	f.Add([]byte("[[device]]\ntarget = \"t\"\n"))
	f.Add([]byte("[[target]]\naddress = \"t\"\nkey_file = \"rel\"\n"))
	f.Add([]byte("timeout = \"x\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		const p = "/etc/rbd/rbdi.toml"
		fc, err := parseConfig(bytes.NewReader(data), p)
		if err != nil {
			if !strings.Contains(err.Error(), p) {
				t.Fatalf("the error does not name the file: %v", err)
			}
			return
		}
		for i, d := range fc.Device {
			if d.Target == "" || d.Export == "" || d.KeyFile != "" && !filepath.IsAbs(d.KeyFile) {
				t.Fatalf("device %d accepted: %+v", i, d)
			}
		}
	})
}
