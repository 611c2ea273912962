package nbd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DevicePath returns the device node of /dev/nbdN.
func DevicePath(index uint32) string {
	return fmt.Sprintf("/dev/nbd%d", index)
}

// Sysfs reads and tunes NBD devices through sysfs. Root is the sysfs mount
// point; the zero value uses /sys. A Sysfs is safe for concurrent use.
type Sysfs struct {
	Root string
}

func (s Sysfs) path(index uint32, elem ...string) string {
	root := s.Root
	if root == "" {
		root = "/sys"
	}
	return filepath.Join(append([]string{root, "block", fmt.Sprintf("nbd%d", index)}, elem...)...)
}

func (s Sysfs) read(index uint32, elem ...string) (string, error) {
	b, err := os.ReadFile(s.path(index, elem...))
	if err != nil {
		return "", fmt.Errorf("nbd: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func (s Sysfs) readUint(index uint32, elem ...string) (uint64, error) {
	v, err := s.read(index, elem...)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("nbd: %s: %w", s.path(index, elem...), err)
	}
	return n, nil
}

func (s Sysfs) write(index uint32, value string, elem ...string) error {
	p := s.path(index, elem...)
	// sysfs attributes exist or not; never create one (O_CREATE) under a
	// test root by accident either.
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("nbd: %w", err)
	}
	if _, err := f.WriteString(value); err != nil {
		f.Close()
		return fmt.Errorf("nbd: write %q to %s: %w", value, p, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("nbd: write %q to %s: %w", value, p, err)
	}
	return nil
}

// SetMaxSectorsKB sets the device's largest request size
// (queue/max_sectors_kb), clamped to the hardware limit in
// queue/max_hw_sectors_kb, and returns the value now in effect.
func (s Sysfs) SetMaxSectorsKB(index uint32, kb uint32) (uint32, error) {
	if kb == 0 {
		return 0, errors.New("nbd: max_sectors_kb must not be 0")
	}
	hw, err := s.readUint(index, "queue", "max_hw_sectors_kb")
	if err != nil {
		return 0, err
	}
	if uint64(kb) > hw {
		kb = uint32(hw)
	}
	if err := s.write(index, strconv.FormatUint(uint64(kb), 10), "queue", "max_sectors_kb"); err != nil {
		return 0, err
	}
	got, err := s.readUint(index, "queue", "max_sectors_kb")
	if err != nil {
		return 0, err
	}
	return uint32(got), nil
}

// MaxSectorsKB returns the device's largest request size in KiB.
func (s Sysfs) MaxSectorsKB(index uint32) (uint32, error) {
	v, err := s.readUint(index, "queue", "max_sectors_kb")
	return uint32(v), err
}

// SetScheduler selects the device's I/O scheduler (queue/scheduler), for
// example "none", and checks that it took effect.
func (s Sysfs) SetScheduler(index uint32, name string) error {
	if err := s.write(index, name, "queue", "scheduler"); err != nil {
		return err
	}
	cur, err := s.Scheduler(index)
	if err != nil {
		return err
	}
	if cur != name {
		return fmt.Errorf("nbd: nbd%d: scheduler is %q after selecting %q", index, cur, name)
	}
	return nil
}

// Scheduler returns the device's current I/O scheduler (the bracketed entry
// of queue/scheduler).
func (s Sysfs) Scheduler(index uint32) (string, error) {
	v, err := s.read(index, "queue", "scheduler")
	if err != nil {
		return "", err
	}
	for _, f := range strings.Fields(v) {
		if strings.HasPrefix(f, "[") && strings.HasSuffix(f, "]") {
			return f[1 : len(f)-1], nil
		}
	}
	// A single scheduler may be printed without brackets.
	if f := strings.Fields(v); len(f) == 1 {
		return f[0], nil
	}
	return "", fmt.Errorf("nbd: %s: no current scheduler in %q", s.path(index, "queue", "scheduler"), v)
}

// PID returns the pid attribute: the id of the task that connected the
// device, which for a multi-threaded process (any Go program) is the id of
// one of its threads, not the process id. The error wraps os.ErrNotExist
// when the device is not connected.
func (s Sysfs) PID(index uint32) (int, error) {
	v, err := s.readUint(index, "pid")
	return int(v), err
}

// Announce asks udev to look at the device again (a "change" uevent), for
// example once the daemon has made a link to it that a udev rule claims.
func (s Sysfs) Announce(index uint32) error {
	return s.write(index, "change", "uevent")
}

// Backend returns the backend attribute: the identifier the device was
// connected with (ConnectConfig.BackendIdentifier). The error wraps
// os.ErrNotExist when the device is not connected (the kernel removes the
// attribute at disconnect) or was connected without one.
func (s Sysfs) Backend(index uint32) (string, error) {
	return s.read(index, "backend")
}

// Size returns the device's size in bytes (the size attribute counts
// 512-byte sectors); 0 means not connected.
func (s Sysfs) Size(index uint32) (uint64, error) {
	sectors, err := s.readUint(index, "size")
	return sectors * 512, err
}

// WaitForDevice waits until the device reports size bytes (any non-zero
// size if size is 0), polling its size attribute until ctx is done.
func (s Sysfs) WaitForDevice(ctx context.Context, index uint32, size uint64) error {
	return s.waitSize(ctx, index, func(got uint64) bool {
		if size == 0 {
			return got != 0
		}
		return got == size
	})
}

// WaitForDisconnect waits until the device's size is 0, which the kernel
// sets once the device is disconnected and its last user is gone.
func (s Sysfs) WaitForDisconnect(ctx context.Context, index uint32) error {
	return s.waitSize(ctx, index, func(got uint64) bool { return got == 0 })
}

func (s Sysfs) waitSize(ctx context.Context, index uint32, ok func(uint64) bool) error {
	const maxDelay = 50 * time.Millisecond
	delay := time.Millisecond
	var t *time.Timer
	for {
		got, err := s.Size(index)
		if err == nil && ok(got) {
			return nil
		}
		// a missing or unreadable size is "not yet": keep polling, and say
		// why if time runs out
		if t == nil {
			t = time.NewTimer(delay)
			defer t.Stop()
		} else {
			t.Reset(delay)
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("nbd: nbd%d: %w (%v)", index, ctx.Err(), err)
			}
			return fmt.Errorf("nbd: nbd%d: size is %d bytes: %w", index, got, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, maxDelay)
	}
}

// WaitForDevice waits until /sys/block/nbdN/size reports size bytes (any
// non-zero size if size is 0); see Sysfs.WaitForDevice.
func WaitForDevice(ctx context.Context, index uint32, size uint64) error {
	return Sysfs{}.WaitForDevice(ctx, index, size)
}
