package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// FuzzLoadConfig: whatever rbdt.toml holds, loading it returns a
// configuration or an error that names the file; it never panics.
func FuzzLoadConfig(f *testing.F) {
	if b, err := os.ReadFile("../../packaging/etc/rbdt.toml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("listen = [\"10.0.0.1\"]\n[[export]]\npath = \"/dev/ram0\"\n"))
	f.Add([]byte("[[export]]\npath = 7\n"))
	f.Add([]byte("unknown_key = 1\n"))
	f.Add([]byte("[[export\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		const p = "/etc/rbd/rbdt.toml"
		if _, err := parseConfig(bytes.NewReader(data), p); err != nil && !strings.Contains(err.Error(), p) {
			t.Fatalf("the error does not name the file: %v", err)
		}
	})
}
