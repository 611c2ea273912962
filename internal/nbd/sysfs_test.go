package nbd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fakeSysfs makes /sys/block/nbdN with the given attribute files.
func fakeSysfs(t *testing.T, index string, files map[string]string) Sysfs {
	t.Helper()
	root := t.TempDir()
	for name, v := range files {
		p := filepath.Join(root, "block", "nbd"+index, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return Sysfs{Root: root}
}

func readAttr(t *testing.T, s Sysfs, index uint32, elem ...string) string {
	t.Helper()
	b, err := os.ReadFile(s.path(index, elem...))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSetMaxSectorsKB(t *testing.T) {
	tests := []struct {
		name string
		hw   string
		kb   uint32
		want uint32
	}{
		{"below the limit", "32767\n", 1024, 1024},
		{"clamped", "512\n", 1024, 512},
		{"equal", "128\n", 128, 128},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := fakeSysfs(t, "3", map[string]string{
				"queue/max_hw_sectors_kb": tt.hw,
				"queue/max_sectors_kb":    "128\n",
			})
			got, err := s.SetMaxSectorsKB(3, tt.kb)
			if err != nil {
				t.Fatalf("SetMaxSectorsKB: %v", err)
			}
			if got != tt.want {
				t.Fatalf("SetMaxSectorsKB: want %d, got %d", tt.want, got)
			}
			if v := readAttr(t, s, 3, "queue", "max_sectors_kb"); strings.TrimSpace(v) != strconv.Itoa(int(tt.want)) {
				t.Fatalf("max_sectors_kb file: want %d, got %q", tt.want, v)
			}
			if got, err := s.MaxSectorsKB(3); err != nil || got != tt.want {
				t.Fatalf("MaxSectorsKB: want %d, got %d, %v", tt.want, got, err)
			}
		})
	}
	s := fakeSysfs(t, "3", map[string]string{"queue/max_hw_sectors_kb": "x"})
	if _, err := s.SetMaxSectorsKB(3, 64); err == nil || !strings.HasPrefix(err.Error(), "nbd: ") {
		t.Fatalf("SetMaxSectorsKB with a bad max_hw_sectors_kb: want an nbd error, got %v", err)
	}
	if _, err := s.SetMaxSectorsKB(4, 64); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("SetMaxSectorsKB of a missing device: want %v, got %v", os.ErrNotExist, err)
	}
	if _, err := s.SetMaxSectorsKB(3, 0); err == nil {
		t.Fatalf("SetMaxSectorsKB(0): want an error, got nil")
	}
}

func TestScheduler(t *testing.T) {
	tests := []struct {
		content string
		want    string
	}{
		{"[mq-deadline] none\n", "mq-deadline"},
		{"mq-deadline kyber [none]\n", "none"},
		{"none\n", "none"},
	}
	for _, tt := range tests {
		s := fakeSysfs(t, "0", map[string]string{"queue/scheduler": tt.content})
		got, err := s.Scheduler(0)
		if err != nil || got != tt.want {
			t.Fatalf("Scheduler(%q): want %q, got %q, %v", tt.content, tt.want, got, err)
		}
	}
	// A plain file keeps what was written, as if the kernel accepted it.
	s := fakeSysfs(t, "0", map[string]string{"queue/scheduler": "[mq-deadline] none\n"})
	if err := s.SetScheduler(0, "none"); err != nil {
		t.Fatalf("SetScheduler: %v", err)
	}
	if got := readAttr(t, s, 0, "queue", "scheduler"); got != "none" {
		t.Fatalf("scheduler file: want %q, got %q", "none", got)
	}
	if err := s.SetScheduler(0, "bfq kyber"); err == nil {
		t.Fatalf("SetScheduler that did not take effect: want an error, got nil")
	}
}

func TestPIDAndSize(t *testing.T) {
	s := fakeSysfs(t, "2", map[string]string{"pid": "4242\n", "size": "131072\n"})
	if pid, err := s.PID(2); err != nil || pid != 4242 {
		t.Fatalf("PID: want 4242, got %d, %v", pid, err)
	}
	if size, err := s.Size(2); err != nil || size != 64<<20 {
		t.Fatalf("Size: want %d, got %d, %v", 64<<20, size, err)
	}
	if _, err := s.PID(5); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("PID of a disconnected device: want %v, got %v", os.ErrNotExist, err)
	}
}

func TestBackend(t *testing.T) {
	s := fakeSysfs(t, "3", map[string]string{"backend": "rbd:10.0.0.1:65000:/dev/ram0\n"})
	if b, err := s.Backend(3); err != nil || b != "rbd:10.0.0.1:65000:/dev/ram0" {
		t.Fatalf("Backend: got %q, %v", b, err)
	}
	if _, err := s.Backend(4); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Backend of a disconnected device: want %v, got %v", os.ErrNotExist, err)
	}
}

// Announce writes "change" to the device's uevent file, and fails (creating
// nothing) for a device that is not there.
func TestAnnounce(t *testing.T) {
	s := fakeSysfs(t, "3", map[string]string{"uevent": ""})
	if err := s.Announce(3); err != nil {
		t.Fatal(err)
	}
	if got := readAttr(t, s, 3, "uevent"); got != "change" {
		t.Fatalf("uevent = %q, want change", got)
	}
	if err := s.Announce(4); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Announce of a missing device: %v, want ErrNotExist", err)
	}
	if _, err := os.Stat(s.path(4, "uevent")); err == nil {
		t.Fatal("Announce created a uevent file")
	}
}

func TestWaitForDevice(t *testing.T) {
	s := fakeSysfs(t, "1", map[string]string{"size": "0\n"})
	go func() {
		time.Sleep(30 * time.Millisecond)
		os.WriteFile(s.path(1, "size"), []byte("2048\n"), 0o644)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.WaitForDevice(ctx, 1, 1<<20); err != nil {
		t.Fatalf("WaitForDevice: %v", err)
	}
	if err := s.WaitForDevice(ctx, 1, 0); err != nil {
		t.Fatalf("WaitForDevice of any size: %v", err)
	}

	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	err := s.WaitForDevice(short, 1, 2<<20)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "1048576") {
		t.Fatalf("WaitForDevice of the wrong size: want a deadline error showing the size, got %v", err)
	}
	short3, cancel3 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel3()
	if err := s.WaitForDevice(short3, 9, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitForDevice of a missing device: want %v, got %v", context.DeadlineExceeded, err)
	}

	go func() {
		time.Sleep(30 * time.Millisecond)
		os.WriteFile(s.path(1, "size"), []byte("0\n"), 0o644)
	}()
	if err := s.WaitForDisconnect(ctx, 1); err != nil {
		t.Fatalf("WaitForDisconnect: %v", err)
	}
}

func TestDevicePath(t *testing.T) {
	if got := DevicePath(12); got != "/dev/nbd12" {
		t.Fatalf("DevicePath: want /dev/nbd12, got %s", got)
	}
	if got := (Sysfs{}).path(3, "size"); got != "/sys/block/nbd3/size" {
		t.Fatalf("default root: want /sys/block/nbd3/size, got %s", got)
	}
}
