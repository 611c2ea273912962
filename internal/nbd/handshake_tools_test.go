package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// This file tests the handshake against real NBD clients: nbdinfo (libnbd)
// and qemu-img (qemu's NBD client), from the Debian packages libnbd-bin and
// qemu-utils (scripts/deps.sh installs them). The server is ServeHandshake
// plus hsServeRAM, a minimal transmission loop over the wire codec.

// hsRAMDisk is a RAM-backed export.
type hsRAMDisk struct {
	mu  sync.Mutex
	mem []byte
}

// hsServeRAM serves the transmission phase of one connection whose
// handshake negotiated neg, one request at a time. It returns nil when the
// client disconnects.
func hsServeRAM(c net.Conn, neg Negotiated, d *hsRAMDisk) error {
	br := bufio.NewReader(c)
	var hdr [RequestSize]byte
	var out [OffsetDataHeaderSize]byte
	size := uint64(len(d.mem))
	maxLen := neg.Export.MaxBlock
	send := func(b ...[]byte) error {
		bufs := net.Buffers(b)
		_, err := bufs.WriteTo(c)
		return err
	}
	simple := func(handle uint64, errno uint32) error {
		EncodeReply(out[:], handle, errno)
		return send(out[:ReplySize])
	}
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		req, err := DecodeRequest(hdr[:])
		if err != nil {
			return err
		}
		inBounds := req.Offset <= size && uint64(req.Length) <= size-req.Offset && req.Length <= maxLen
		switch req.Type {
		case CmdDisc:
			return nil
		case CmdRead:
			if !inBounds {
				if !neg.StructuredReplies {
					err = simple(req.Handle, EINVAL)
				} else {
					err = send(AppendReplyError(nil, req.Handle, EINVAL, fmt.Sprintf("read of %d bytes at %d is out of bounds", req.Length, req.Offset), true))
				}
				break
			}
			data := make([]byte, req.Length)
			d.mu.Lock()
			copy(data, d.mem[req.Offset:])
			d.mu.Unlock()
			switch {
			case !neg.StructuredReplies:
				EncodeReply(out[:], req.Handle, 0)
				err = send(out[:ReplySize], data)
			case req.Length == 0:
				EncodeReplyNone(out[:], req.Handle)
				err = send(out[:StructuredReplySize])
			default:
				EncodeOffsetData(out[:], req.Handle, req.Offset, req.Length, true)
				err = send(out[:], data)
			}
		case CmdWrite:
			if req.Length > maxLen {
				return fmt.Errorf("write of %d bytes, more than the maximum block size", req.Length)
			}
			data := make([]byte, req.Length)
			if _, err := io.ReadFull(br, data); err != nil {
				return err
			}
			if !inBounds {
				err = simple(req.Handle, ENOSPC)
				break
			}
			d.mu.Lock()
			copy(d.mem[req.Offset:], data)
			d.mu.Unlock()
			err = simple(req.Handle, 0)
		case CmdFlush:
			err = simple(req.Handle, 0)
		case CmdTrim, CmdWriteZeroes:
			if !inBounds {
				err = simple(req.Handle, ENOSPC)
				break
			}
			d.mu.Lock()
			clear(d.mem[req.Offset : req.Offset+uint64(req.Length)])
			d.mu.Unlock()
			err = simple(req.Handle, 0)
		default:
			err = simple(req.Handle, EINVAL)
		}
		if err != nil {
			return err
		}
	}
}

// hsServeUnix serves exports on a Unix socket in a temporary directory until
// the test ends, and returns the socket's path.
func hsServeUnix(t *testing.T, exports map[string]Export, disks map[string]*hsRAMDisk) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	lookup := func(name string) (Export, bool) {
		e, ok := exports[name]
		return e, ok
	}
	list := func() []string {
		var names []string
		for n := range exports {
			names = append(names, n)
		}
		slices.Sort(names)
		return names
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				neg, err := ServeHandshake(c, lookup, list)
				if err != nil {
					if !errors.Is(err, ErrAbort) {
						t.Logf("handshake: %v", err)
					}
					return
				}
				t.Logf("negotiated %q (structured replies %v, client flags %#x)", neg.Name, neg.StructuredReplies, neg.ClientFlags)
				c.SetDeadline(time.Time{})
				// net.ErrClosed: the test is over and closed the connection.
				if err := hsServeRAM(c, neg, disks[neg.Name]); err != nil && !errors.Is(err, net.ErrClosed) {
					t.Errorf("transmission: %v", err)
				}
			}()
		}
	}()
	return sock
}

func hsTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed (Debian package %s; scripts/deps.sh installs it): %v", name,
			map[string]string{"nbdinfo": "libnbd-bin", "qemu-img": "qemu-utils"}[name], err)
	}
	return p
}

func hsRun(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, stderr.Bytes())
	}
	return out
}

const hsToolDiskSize = 4 << 20

func hsToolExports() (map[string]Export, map[string]*hsRAMDisk) {
	exports := map[string]Export{
		"ram": {Description: "rbd test RAM disk", Size: hsToolDiskSize,
			Flags:    FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagCanMultiConn,
			MinBlock: 512, PrefBlock: 4096, MaxBlock: 1 << 20},
		"small": {Size: 1 << 20, Flags: FlagReadOnly, MaxBlock: 1 << 20},
	}
	disks := map[string]*hsRAMDisk{
		"ram":   {mem: make([]byte, hsToolDiskSize)},
		"small": {mem: make([]byte, 1<<20)},
	}
	return exports, disks
}

// TestHandshakeNbdinfo checks what libnbd's nbdinfo reports about the
// exports: NBD_OPT_GO's information and NBD_OPT_LIST.
func TestHandshakeNbdinfo(t *testing.T) {
	nbdinfo := hsTool(t, "nbdinfo")
	exports, disks := hsToolExports()
	sock := hsServeUnix(t, exports, disks)

	out := hsRun(t, nbdinfo, "--json", "nbd+unix:///ram?socket="+sock)
	t.Logf("nbdinfo --json:\n%s", out)
	var info struct {
		Protocol   string `json:"protocol"`
		Structured bool   `json:"structured"`
		Exports    []map[string]any
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("nbdinfo output: %v", err)
	}
	if info.Protocol != "newstyle-fixed" || !info.Structured || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: protocol %q, structured replies %v, %d exports", info.Protocol, info.Structured, len(info.Exports))
	}
	e := info.Exports[0]
	want := map[string]any{
		"export-name":          "ram",
		"description":          "rbd test RAM disk",
		"export-size":          float64(hsToolDiskSize),
		"block_size_minimum":   float64(512),
		"block_size_preferred": float64(4096),
		"block_size_maximum":   float64(1 << 20),
		"is_read_only":         false,
		"is_rotational":        false,
		"can_flush":            true,
		"can_fua":              true,
		"can_trim":             true,
		"can_zero":             true,
		"can_multi_conn":       true,
		"can_df":               false,
		"can_cache":            false,
	}
	for k, v := range want {
		if got, ok := e[k]; !ok || got != v {
			t.Errorf("nbdinfo %s = %v (present %v), want %v", k, got, ok, v)
		}
	}

	out = hsRun(t, nbdinfo, "--json", "nbd+unix:///small?socket="+sock)
	if err := json.Unmarshal(out, &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo small: %v %s", err, out)
	}
	e = info.Exports[0]
	if e["export-size"] != float64(1<<20) || e["is_read_only"] != true || e["block_size_minimum"] != float64(1) || e["block_size_preferred"] != float64(4096) {
		t.Errorf("nbdinfo small: %s", out)
	}

	out = hsRun(t, nbdinfo, "--list", "--json", "nbd+unix:///?socket="+sock)
	t.Logf("nbdinfo --list --json:\n%s", out)
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("nbdinfo --list output: %v", err)
	}
	var names []string
	for _, e := range info.Exports {
		names = append(names, fmt.Sprint(e["export-name"]))
	}
	if !slices.Equal(names, []string{"ram", "small"}) {
		t.Errorf("nbdinfo --list: exports %q, want ram and small", names)
	}

	// An unknown export fails NBD_OPT_GO, and nbdinfo says so.
	cmd := exec.Command(nbdinfo, "nbd+unix:///nope?socket="+sock)
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("nbdinfo of an unknown export succeeded:\n%s", out)
	} else if !bytes.Contains(out, []byte("nope")) {
		t.Errorf("nbdinfo of an unknown export: %v\n%s", err, out)
	}
}

// TestHandshakeQemuImg copies a random 4 MiB image into the export with
// qemu-img convert and back out, and compares.
func TestHandshakeQemuImg(t *testing.T) {
	qemuImg := hsTool(t, "qemu-img")
	exports, disks := hsToolExports()
	sock := hsServeUnix(t, exports, disks)
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src.img"), filepath.Join(dir, "dst.img")
	data := make([]byte, hsToolDiskSize)
	rng := rand.NewChaCha8([32]byte{'r', 'b', 'd'})
	rng.Read(data)
	clear(data[1<<20 : 1<<20+64<<10]) // a zero run, which qemu may send as WRITE_ZEROES
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	url := "nbd+unix:///ram?socket=" + sock
	hsRun(t, qemuImg, "convert", "-n", "-f", "raw", "-O", "raw", src, url)
	disks["ram"].mu.Lock()
	same := bytes.Equal(disks["ram"].mem, data)
	disks["ram"].mu.Unlock()
	if !same {
		t.Fatal("the export's contents differ from the image qemu-img wrote")
	}
	hsRun(t, qemuImg, "convert", "-f", "raw", "-O", "raw", url, dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("image read back through qemu-img differs (%d bytes, want %d)", len(got), len(data))
	}
	out := hsRun(t, qemuImg, "info", "--output=json", url)
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil || info.VirtualSize != hsToolDiskSize {
		t.Errorf("qemu-img info: %v %s", err, out)
	}
}
