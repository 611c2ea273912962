// Package auth is rbd's pre-shared-key authentication (protocol version 3,
// docs/protocol.md section 2.4, docs/security.md): the key files, and the two
// proofs of an OPEN, HMAC-SHA-256 over both sides' nonces and the
// connection's identity, one computed by the initiator and one by the target.
// The key itself never travels.
package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"rbd/internal/wire"
)

// MinKeyBytes is the shortest key accepted: 128 bits.
const MinKeyBytes = 16

// maxKeyFile bounds what is read from a key file.
const maxKeyFile = 4096

// Key is a pre-shared key. Its String never shows the secret.
type Key struct{ b []byte }

// IsZero reports whether k holds no key.
func (k Key) IsZero() bool { return len(k.b) == 0 }

func (k Key) String() string {
	if k.IsZero() {
		return "no key"
	}
	return "key " + k.ID()
}

// ID is a non-secret name of the key for logs and listings: the first 4
// bytes of SHA-256("rbd key id" ‖ key), in hex. Two sides can compare it to
// see whether they hold the same key.
func (k Key) ID() string {
	if k.IsZero() {
		return ""
	}
	h := sha256.New()
	h.Write([]byte("rbd key id\x00"))
	h.Write(k.b)
	return hex.EncodeToString(h.Sum(nil)[:4])
}

// ParseKey reads a key file's content: hexadecimal digits (at least 32, i.e.
// 128 bits; whitespace around and between them is ignored), as written by
// `openssl rand -hex 32`.
func ParseKey(data []byte) (Key, error) {
	s := strings.Join(strings.Fields(string(data)), "")
	if s == "" {
		return Key{}, errors.New("the key file is empty: write a key into it, e.g. openssl rand -hex 32")
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return Key{}, errors.New("the key file must hold hexadecimal digits only (e.g. from openssl rand -hex 32)")
	}
	if len(b) < MinKeyBytes {
		return Key{}, fmt.Errorf("the key has %d bits, at least %d are needed (openssl rand -hex 32 makes 256)", 8*len(b), 8*MinKeyBytes)
	}
	return Key{b: b}, nil
}

// LoadKeyFile reads a key file. It must be a regular file owned by root or
// by this process's user and readable by its owner only (mode 0600 or
// 0400), in a directory others cannot write to: a key that others could read
// or replace is refused, with a message that says how to fix it.
func LoadKeyFile(path string) (Key, error) {
	if path == "" {
		return Key{}, errors.New("no key file given")
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Key{}, fmt.Errorf("key file %s does not exist: create it with (umask 077; openssl rand -hex 32 > %s) and copy it to the peer", path, path)
		}
		return Key{}, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Key{}, fmt.Errorf("key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return Key{}, fmt.Errorf("key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return Key{}, fmt.Errorf("key file %s has mode %04o: it must be readable by its owner only (chmod 600 %s)", path, perm, path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
			return Key{}, fmt.Errorf("key file %s belongs to user %d: it must belong to root (chown root: %s)", path, st.Uid, path)
		}
	}
	if err := checkDir(path); err != nil {
		return Key{}, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return Key{}, fmt.Errorf("key file %s: %w", path, err)
	}
	if len(data) > maxKeyFile {
		return Key{}, fmt.Errorf("key file %s is larger than %d bytes: not a key", path, maxKeyFile)
	}
	k, err := ParseKey(data)
	clear(data)
	if err != nil {
		return Key{}, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}

// checkDir refuses a key file whose directory others may write to (they
// could replace the key), unless the directory is sticky (as /tmp is).
func checkDir(path string) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return fmt.Errorf("key file %s is in %s, which others can write to (mode %04o): keep keys in a directory only root writes, e.g. /etc/rbd/keys (chmod 700)", path, dir, fi.Mode().Perm())
	}
	return nil
}

// Nonce returns fresh random bytes from the system's random source.
func Nonce() [wire.NonceSize]byte {
	var n [wire.NonceSize]byte
	rand.Read(n[:]) // never fails (crypto/rand: it would crash the program first)
	return n
}

// Domain-separation labels: a proof made for one direction is never valid in
// the other, so a peer cannot reflect the other side's proof back to it.
const (
	labelInitiator = "rbd-auth-v3 initiator proof\x00"
	labelTarget    = "rbd-auth-v3 target proof\x00"
)

// transcript writes what both proofs cover: the target's nonce (the
// challenge of this connection: a proof made for another connection, or
// replayed, fails), the initiator's nonce, and the OPEN's identity (session,
// queue, queue count, flags, export name).
func transcript(key Key, label string, targetNonce [wire.NonceSize]byte, o *wire.Open) []byte {
	m := hmac.New(sha256.New, key.b)
	m.Write([]byte(label))
	m.Write(targetNonce[:])
	m.Write(o.Nonce[:])
	m.Write(o.Session[:])
	var b [10]byte
	binary.LittleEndian.PutUint16(b[0:], o.Queue)
	binary.LittleEndian.PutUint16(b[2:], o.Queues)
	binary.LittleEndian.PutUint32(b[4:], o.Flags)
	binary.LittleEndian.PutUint16(b[8:], uint16(len(o.ExportName)))
	m.Write(b[:])
	m.Write([]byte(o.ExportName))
	return m.Sum(nil)
}

// InitiatorProof is the MAC an authenticating OPEN carries (o.Nonce must be
// set; o.MAC is not covered).
func InitiatorProof(key Key, targetNonce [wire.NonceSize]byte, o *wire.Open) [wire.MACSize]byte {
	var out [wire.MACSize]byte
	copy(out[:], transcript(key, labelInitiator, targetNonce, o))
	return out
}

// CheckInitiator reports whether the OPEN's proof is right, in constant time.
func CheckInitiator(key Key, targetNonce [wire.NonceSize]byte, o *wire.Open) bool {
	if key.IsZero() {
		return false
	}
	want := InitiatorProof(key, targetNonce, o)
	return hmac.Equal(want[:], o.MAC[:])
}

// TargetProof is the MAC of the target's OPEN reply: the same transcript
// under the target's label, and the reply's first wire.OpenReplyProved
// bytes (geometry, capabilities, flags, session id), so that the initiator
// knows the geometry it is given comes from the holder of the key.
func TargetProof(key Key, targetNonce [wire.NonceSize]byte, o *wire.Open, reply []byte) [wire.MACSize]byte {
	m := hmac.New(sha256.New, key.b)
	m.Write(transcript(key, labelTarget, targetNonce, o))
	m.Write(reply[:min(len(reply), wire.OpenReplyProved)])
	var out [wire.MACSize]byte
	copy(out[:], m.Sum(nil))
	return out
}

// CheckTarget reports whether an OPEN reply's proof is right, in constant
// time; reply is the reply's payload as received.
func CheckTarget(key Key, targetNonce [wire.NonceSize]byte, o *wire.Open, reply []byte, mac [wire.MACSize]byte) bool {
	if key.IsZero() || len(reply) < wire.OpenReplyProved {
		return false
	}
	want := TargetProof(key, targetNonce, o, reply)
	return hmac.Equal(want[:], mac[:])
}

// Equal reports whether a and b are the same key, in constant time.
func Equal(a, b Key) bool { return hmac.Equal(a.b, b.b) }
