package auth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"rbd/internal/wire"
)

const hexKey = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

func mustKey(t *testing.T, s string) Key {
	t.Helper()
	k, err := ParseKey([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestParseKey(t *testing.T) {
	for _, tc := range []struct {
		name, in, err string
	}{
		{"openssl rand -hex 32", hexKey + "\n", ""},
		{"128 bits, spaced", "0011 2233 4455 6677\n8899 aabb ccdd eeff", ""},
		{"empty", "\n", "empty"},
		{"not hex", "secret-password-secret-password!", "hexadecimal"},
		{"odd digits", hexKey[:33], "hexadecimal"},
		{"too short", "00112233445566778899aabbccddee", "at least 128"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseKey([]byte(tc.in))
			if tc.err == "" {
				if err != nil || k.IsZero() {
					t.Fatalf("ParseKey: %v", err)
				}
				if strings.Contains(k.String(), tc.in[:8]) || len(k.ID()) != 8 {
					t.Fatalf("String %q / ID %q shows the key or is malformed", k.String(), k.ID())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("ParseKey: %v, want %q", err, tc.err)
			}
		})
	}
}

func TestLoadKeyFile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    os.FileMode
		dirMode os.FileMode
		content string
		err     string
	}{
		{"0600", 0o600, 0o700, hexKey, ""},
		{"0400", 0o400, 0o755, hexKey, ""},
		{"group readable", 0o640, 0o700, hexKey, "mode 0640: it must be readable by its owner only (chmod 600"},
		{"world readable", 0o644, 0o700, hexKey, "mode 0644"},
		{"directory others write", 0o600, 0o777, hexKey, "which others can write to"},
		{"bad content", 0o600, 0o700, "xyz", "hexadecimal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "keys")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, "k")
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			os.Chmod(p, tc.mode)
			os.Chmod(dir, tc.dirMode)
			t.Cleanup(func() { os.Chmod(dir, 0o700) })
			k, err := LoadKeyFile(p)
			if tc.err == "" {
				if err != nil || !Equal(k, mustKey(t, hexKey)) {
					t.Fatalf("LoadKeyFile: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), p) {
				t.Fatalf("LoadKeyFile: %v, want %q naming the file", err, tc.err)
			}
		})
	}
	if _, err := LoadKeyFile(filepath.Join(t.TempDir(), "none")); err == nil || !strings.Contains(err.Error(), "openssl rand -hex 32") {
		t.Fatalf("missing file: %v, want how to make one", err)
	}
	if _, err := LoadKeyFile(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("a directory: %v", err)
	}
}

// Every part of the identity is covered by both proofs, the two directions
// never produce each other's proof, and another key fails.
func TestProofs(t *testing.T) {
	key := mustKey(t, hexKey)
	other := mustKey(t, strings.Repeat("ab", 32))
	nt := [wire.NonceSize]byte{1}
	base := wire.Open{Session: wire.SessionID{7}, Queue: 1, Queues: 2, Flags: wire.OpenAuth, ExportName: "/dev/vg0/db", Nonce: [wire.NonceSize]byte{2}}
	base.MAC = InitiatorProof(key, nt, &base)
	if !CheckInitiator(key, nt, &base) {
		t.Fatal("the right proof fails")
	}
	reply := make([]byte, 64)
	reply[0] = 0x42
	tmac := TargetProof(key, nt, &base, reply)
	if !CheckTarget(key, nt, &base, reply, tmac) {
		t.Fatal("the right target proof fails")
	}
	if tmac == base.MAC || CheckTarget(key, nt, &base, reply, base.MAC) {
		t.Fatal("the initiator's proof passes as the target's (reflection)")
	}
	for _, tc := range []struct {
		name string
		mut  func(o *wire.Open, nt *[wire.NonceSize]byte, k *Key)
	}{
		{"target nonce (replay on another connection)", func(o *wire.Open, nt *[wire.NonceSize]byte, k *Key) { nt[0]++ }},
		{"initiator nonce", func(o *wire.Open, nt *[wire.NonceSize]byte, k *Key) { o.Nonce[0]++ }},
		{"session", func(o *wire.Open, nt *[wire.NonceSize]byte, k *Key) { o.Session[15]++ }},
		{"queue", func(o *wire.Open, nt *[wire.NonceSize]byte, k *Key) { o.Queue = 0 }},
		{"queues", func(o *wire.Open, nt *[wire.NonceSize]byte, k *Key) { o.Queues = 3 }},
		{"flags", func(o *wire.Open, nt *[wire.NonceSize]byte, k *Key) { o.Flags |= wire.OpenReadOnly }},
		{"export", func(o *wire.Open, nt *[wire.NonceSize]byte, k *Key) { o.ExportName = "/dev/vg0/dc" }},
		{"key", func(o *wire.Open, nt *[wire.NonceSize]byte, k *Key) { *k = other }},
		{"no key", func(o *wire.Open, nt *[wire.NonceSize]byte, k *Key) { *k = Key{} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, n, k := base, nt, key
			tc.mut(&o, &n, &k)
			if CheckInitiator(k, n, &o) {
				t.Error("initiator proof still passes")
			}
			if CheckTarget(k, n, &o, reply, tmac) {
				t.Error("target proof still passes")
			}
		})
	}
	changed := append([]byte(nil), reply...)
	changed[wire.OpenReplyProved-1] ^= 1
	if CheckTarget(key, nt, &base, changed, tmac) {
		t.Error("target proof passes for another reply")
	}
	if CheckTarget(key, nt, &base, reply[:wire.OpenReplyProved-1], tmac) {
		t.Error("target proof passes for a short reply")
	}
}

func FuzzParseKey(f *testing.F) {
	f.Add([]byte(hexKey))
	f.Add([]byte("00 11\n22"))
	f.Add([]byte("zz"))
	f.Fuzz(func(t *testing.T, in []byte) {
		k, err := ParseKey(in)
		if err != nil {
			return
		}
		if len(k.b) < MinKeyBytes || strings.Contains(k.String(), string(in)) {
			t.Fatalf("key of %d bytes accepted or shown: %q", len(k.b), k.String())
		}
	})
}
