// Command wakeups measures how many times a Go process's threads sleep and
// wake per request when its goroutines wait in blocked threads (poll(2), as
// a loop that keeps its thread) or on the netpoller, with or without the
// runtime's sysmon kept out of its deep sleep (GODEBUG=schedtrace=...). It
// is the host-side model of what bench/ab.sh measures in the guest: a
// request is a ping from a driver process that crosses a chain of HOPS
// goroutines (each reads a pipe, spins WORK µs as the data path's CPU,
// writes the next pipe) and goes back; IDLE more goroutines wait and are
// never woken, as the queues of an idle device.
//
//	go run ./bench/wakeups                         # MODE=netpoller
//	MODE=poll WORK=1000 go run ./bench/wakeups
//	GODEBUG=schedtrace=2147483647 WORK=1000 go run ./bench/wakeups
//
// Env: MODE (netpoller|poll), HOPS (2), IDLE (2), RATE (pings/s, 100), WORK
// (µs per hop, 0), DUR (s, 4). Output: voluntary context switches per ping,
// all threads and each thread that switches more than once in 20 pings.
// Measured with its prototype on this project's 2-core host (Go 1.26, 100
// pings/s, 2 hops, 2 idle): with WORK=1000, netpoller 17.2 switches per ping
// (16.2 of them sysmon's), netpoller with schedtrace 2.5; with WORK=0,
// netpoller 3.2, with schedtrace 2.2, poll 11-13, poll with schedtrace 61
// (sysmon, never deep asleep, retakes the Ps of the blocked threads).
package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func env(k string, d int) int {
	if v, err := strconv.Atoi(os.Getenv(k)); err == nil {
		return v
	}
	return d
}

// switches returns a thread's voluntary and involuntary context switches.
func switches(tid int) (int, int) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/status", tid))
	v, n := 0, 0
	for _, l := range strings.Split(string(b), "\n") {
		if s, ok := strings.CutPrefix(l, "voluntary_ctxt_switches:"); ok {
			v, _ = strconv.Atoi(strings.TrimSpace(s))
		}
		if s, ok := strings.CutPrefix(l, "nonvoluntary_ctxt_switches:"); ok {
			n, _ = strconv.Atoi(strings.TrimSpace(s))
		}
	}
	return v, n
}

func threads() []int {
	es, _ := os.ReadDir("/proc/self/task")
	var t []int
	for _, e := range es {
		n, _ := strconv.Atoi(e.Name())
		t = append(t, n)
	}
	return t
}

func main() {
	if os.Getenv("WAKEUPS_DRIVER") == "1" {
		driver()
		return
	}
	mode := os.Getenv("MODE")
	if mode == "" {
		mode = "netpoller"
	}
	hops, idle, work := env("HOPS", 2), env("IDLE", 2), time.Duration(env("WORK", 0))*time.Microsecond
	if mode != "netpoller" && mode != "poll" {
		fmt.Fprintln(os.Stderr, "wakeups: MODE is netpoller or poll")
		os.Exit(2)
	}
	// pipe i is read by goroutine i; pipe hops goes back to the driver
	type pipe struct{ r, w int }
	ps := make([]pipe, hops+1+idle)
	for i := range ps {
		var fds [2]int
		if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
			panic(err)
		}
		ps[i] = pipe{fds[0], fds[1]}
	}
	hop := func(i, next int) {
		buf := make([]byte, 64)
		var f *os.File
		if mode == "netpoller" {
			f = os.NewFile(uintptr(ps[i].r), "pipe")
		} else {
			runtime.LockOSThread()
		}
		pfd := []unix.PollFd{{Fd: int32(ps[i].r), Events: unix.POLLIN}}
		for {
			var n int
			var err error
			if f != nil {
				n, err = f.Read(buf)
			} else if n, err = unix.Read(ps[i].r, buf); err == unix.EAGAIN {
				unix.Poll(pfd, -1)
				continue
			}
			if err != nil || n == 0 {
				return
			}
			for t0 := time.Now(); time.Since(t0) < work; {
			}
			if next >= 0 {
				unix.Write(ps[next].w, buf[:n])
			}
		}
	}
	for i := 0; i < hops; i++ {
		go hop(i, i+1)
	}
	for i := 0; i < idle; i++ {
		go hop(hops+1+i, -1)
	}
	time.Sleep(200 * time.Millisecond)
	before := map[int][2]int{}
	for _, t := range threads() {
		v, n := switches(t)
		before[t] = [2]int{v, n}
	}
	// the driver is another process, so that its waits are not this runtime's
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), "WAKEUPS_DRIVER=1")
	cmd.ExtraFiles = []*os.File{os.NewFile(uintptr(ps[0].w), "w"), os.NewFile(uintptr(ps[hops].r), "r")}
	out, err := cmd.Output()
	if err != nil {
		panic(err)
	}
	pings, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	if pings == 0 {
		panic("no pings")
	}
	total := 0
	var lines []string
	for _, t := range threads() {
		v, n := switches(t)
		d := v - before[t][0]
		total += d
		if d > pings/20 {
			lines = append(lines, fmt.Sprintf("  thread %d: %.2f voluntary, %.2f involuntary", t, float64(d)/float64(pings), float64(n-before[t][1])/float64(pings)))
		}
	}
	fmt.Printf("MODE=%s GOMAXPROCS=%d HOPS=%d IDLE=%d WORK=%v GODEBUG=%q: %d pings, %.2f voluntary switches per ping\n",
		mode, runtime.GOMAXPROCS(0), hops, idle, work, os.Getenv("GODEBUG"), pings, float64(total)/float64(pings))
	for _, l := range lines {
		fmt.Println(l)
	}
}

// driver pings at RATE for DUR seconds through fds 3 (out) and 4 (back) and
// prints the count.
func driver() {
	rate, dur := env("RATE", 100), env("DUR", 4)
	unix.SetNonblock(4, false)
	buf := make([]byte, 8)
	pings := 0
	for end := time.Now().Add(time.Duration(dur) * time.Second); time.Now().Before(end); pings++ {
		unix.Write(3, buf[:1])
		unix.Read(4, buf)
		time.Sleep(time.Second / time.Duration(rate))
	}
	fmt.Println(pings)
}
