package initiator

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"rbd/internal/client"
	"rbd/internal/wire"
)

// TestReserveMapped: a host maps an export (target address, port, export)
// once. The check is made under the lock that reserves the number, so of two
// adds of the same export one fails, whatever the timing.
func TestReserveMapped(t *testing.T) {
	dir := t.TempDir()
	m := NewManager(Config{DevDir: dir})
	ram0 := mapping{netip.MustParseAddrPort("10.0.0.1:65000"), "/dev/ram0"}
	m.devices[0] = &Device{Num: 0, Target: ram0.target, Export: ram0.export, kernel: true}
	// a stale link takes rbdi1
	if err := os.Symlink("nbd9", filepath.Join(dir, "rbdi1")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		want    mapping
		num     int
		mapped  string // the device a *MappedError names
		pending string // part of the *Error when another add is under way
	}{
		{"same target, port and export", ram0, 0, "/dev/rbdi0", ""},
		{"another port", mapping{netip.MustParseAddrPort("10.0.0.1:65001"), "/dev/ram0"}, 2, "", ""},
		{"another address", mapping{netip.MustParseAddrPort("10.0.0.2:65000"), "/dev/ram0"}, 2, "", ""},
		{"another export", mapping{ram0.target, "/dev/ram1"}, 2, "", ""},
		{"being mapped right now", mapping{ram0.target, "/dev/ram2"}, 0, "", "is being mapped right now, as /dev/rbdi7"},
	} {
		if tc.pending != "" {
			m.adding[7] = tc.want
		}
		n, err := m.reserveNumber(tc.want)
		var me *MappedError
		var ie *Error
		switch {
		case tc.mapped != "":
			if !errors.As(err, &me) || me.Device.Path() != tc.mapped || !errors.As(err, &ie) ||
				!strings.Contains(ie.Msg, "mapped already as "+tc.mapped) || !strings.Contains(ie.Hint, "rbdctl -r -d "+tc.mapped) {
				t.Errorf("%s: want a *MappedError naming %s in an *Error, got %v", tc.name, tc.mapped, err)
			}
		case tc.pending != "":
			if err == nil || errors.As(err, &me) || !strings.Contains(err.Error(), tc.pending) {
				t.Errorf("%s: want %q, got %v", tc.name, tc.pending, err)
			}
			delete(m.adding, 7)
		default:
			if err != nil || n != tc.num {
				t.Errorf("%s: want rbdi%d, got %d %v", tc.name, tc.num, n, err)
			}
			m.unreserve(n)
		}
	}

	// concurrent adds of one export: exactly one reserves
	var wg sync.WaitGroup
	var mu sync.Mutex
	won, refused := 0, 0
	ram3 := mapping{ram0.target, "/dev/ram3"}
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := m.reserveNumber(ram3)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				won++
			} else if strings.Contains(err.Error(), "being mapped right now") {
				refused++
			}
		}()
	}
	wg.Wait()
	if won != 1 || refused != 15 {
		t.Errorf("16 concurrent adds of one export: %d reserved, %d refused; want 1 and 15", won, refused)
	}
}

// TestOnChange: the hook is optional.
func TestOnChange(t *testing.T) {
	NewManager(Config{}).onChange() // no hook: no panic
	calls := 0
	NewManager(Config{OnChange: func() { calls++ }}).onChange()
	if calls != 1 {
		t.Errorf("OnChange called %d times, want 1", calls)
	}
}

// TestAddKeyFile: a key file that others could read is refused before
// anything is set up, with a message that says so.
func TestAddKeyFile(t *testing.T) {
	dir := t.TempDir()
	loose := filepath.Join(dir, "loose.key")
	if err := os.WriteFile(loose, []byte(strings.Repeat("ab", 32)), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(loose, 0o644)
	for _, tc := range []struct {
		name string
		cfg  Config
		req  AddRequest
		want string
	}{
		{"device key file", Config{}, AddRequest{Target: "10.0.0.1", Export: "/dev/ram0", KeyFile: loose}, "mode 0644: it must be readable by its owner only"},
		{"target key file", Config{TargetKeys: map[string]string{"10.0.0.1": loose}}, AddRequest{Target: "10.0.0.1", Export: "/dev/ram0"}, "mode 0644"},
		{"target key file by address and port", Config{TargetKeys: map[string]string{"10.0.0.1:65000": loose}}, AddRequest{Target: "10.0.0.1", Export: "/dev/ram0"}, "mode 0644"},
		{"missing", Config{}, AddRequest{Target: "10.0.0.1", Export: "/dev/ram0", KeyFile: filepath.Join(dir, "none")}, "does not exist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.DevDir = t.TempDir()
			m := NewManager(tc.cfg)
			_, err := m.Add(t.Context(), tc.req)
			var ie *Error
			if !errors.As(err, &ie) || !strings.Contains(ie.Msg, tc.want) {
				t.Fatalf("Add: %v, want %q", err, tc.want)
			}
		})
	}
}

// TestAuthErrors: what the initiator says when the target wants a key.
func TestAuthErrors(t *testing.T) {
	to := netip.MustParseAddrPort("10.0.0.1:65000")
	for _, tc := range []struct {
		name string
		err  error
		msg  string
		hint string
	}{
		{"no key given", &client.ExportError{Export: "/dev/vg0/db", Status: wire.StatusAccess, Message: "export /dev/vg0/db requires authentication"},
			"target 10.0.0.1 requires authentication for /dev/vg0/db: give --key-file", "--key-file /etc/rbd/keys/"},
		{"wrong key", &client.ExportError{Export: "/dev/vg0/db", Status: wire.StatusAccess, Keyed: true, Message: "authentication for export /dev/vg0/db failed"},
			"target 10.0.0.1 refused the key for /dev/vg0/db: authentication for export /dev/vg0/db failed", "same key"},
		{"target without proof", &client.AuthError{Target: to, Export: "/dev/vg0/db"},
			"did not prove that it holds the key for /dev/vg0/db", "key_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ie *Error
			if err := addError(tc.err, to, "/dev/vg0/db"); !errors.As(err, &ie) || !strings.Contains(ie.Msg, tc.msg) || !strings.Contains(ie.Hint, tc.hint) {
				t.Fatalf("addError: %#v, want %q / hint %q", err, tc.msg, tc.hint)
			}
		})
	}
}
