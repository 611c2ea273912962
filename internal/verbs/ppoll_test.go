package verbs

import (
	"testing"

	"golang.org/x/sys/unix"
)

// ppollMasked waits with SIGURG blocked: the kernel takes the mask (no
// EINVAL), and a ready fd ends the wait.
func TestPpollMasked(t *testing.T) {
	fd, err := unix.Eventfd(1, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if e := ppollMasked(fds); e != 0 {
		t.Fatalf("ppoll: %v", e)
	}
	if fds[0].Revents&unix.POLLIN == 0 {
		t.Fatalf("revents %#x, want POLLIN", fds[0].Revents)
	}
}
