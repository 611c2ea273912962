// Command tcgcost measures what the primitives of rbd's data path cost on
// the machine it runs on (meant for the qemu TCG guest, where they differ
// from a real CPU by orders of magnitude unevenly): a clock read, a system
// call, a goroutine hand-off over a channel, a wake-up through the
// netpoller (pipe ping-pong between two goroutines), a wake-up of a thread
// blocked in read(2) (pipe ping-pong between two locked threads), and a
// memcpy of 4 KiB. Each figure is wall time and process CPU per operation
// (CPU from getrusage, so the runtime's helper threads count too).
//
//	go build -o bin/tcgcost ./bench/tcgcost && test/vm/vm.sh run "$PWD/bin/tcgcost"
package main

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func cpu() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func ctxsw() int64 {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return ru.Nvcsw + ru.Nivcsw
}

func measure(name string, n int, f func(n int)) {
	c0, t0, s0 := cpu(), time.Now(), ctxsw()
	f(n)
	wall, c, s := time.Since(t0), cpu()-c0, ctxsw()-s0
	fmt.Printf("%-34s %10.2f µs wall %10.2f µs CPU %6.2f switches  per op (n=%d)\n", name,
		float64(wall.Nanoseconds())/1e3/float64(n), float64(c.Nanoseconds())/1e3/float64(n), float64(s)/float64(n), n)
}

func pipePong(n int, locked bool) {
	a, b, _ := os.Pipe()
	c, d, _ := os.Pipe()
	if locked {
		// blocking fds: the threads sleep in read(2)
		for _, f := range []*os.File{a, b, c, d} {
			unix.SetNonblock(int(f.Fd()), false)
		}
	}
	done := make(chan bool)
	go func() {
		if locked {
			runtime.LockOSThread()
		}
		buf := make([]byte, 1)
		for range n {
			if locked {
				unix.Read(int(a.Fd()), buf)
				unix.Write(int(d.Fd()), buf)
			} else {
				a.Read(buf)
				d.Write(buf)
			}
		}
		done <- true
	}()
	if locked {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	buf := []byte{1}
	for range n {
		if locked {
			unix.Write(int(b.Fd()), buf)
			unix.Read(int(c.Fd()), buf)
		} else {
			b.Write(buf)
			c.Read(buf)
		}
	}
	<-done
	for _, f := range []*os.File{a, b, c, d} {
		f.Close()
	}
}

func main() {
	if b, err := os.ReadFile("/sys/devices/system/clocksource/clocksource0/current_clocksource"); err == nil {
		fmt.Printf("clocksource: %s", b)
	}
	fmt.Printf("GOMAXPROCS %d, NumCPU %d, %s\n", runtime.GOMAXPROCS(0), runtime.NumCPU(), runtime.Version())
	measure("time.Now", 200000, func(n int) {
		for range n {
			_ = time.Now()
		}
	})
	measure("getppid (raw system call)", 50000, func(n int) {
		for range n {
			syscall.RawSyscall(syscall.SYS_GETPPID, 0, 0, 0)
		}
	})
	measure("getppid (system call)", 50000, func(n int) {
		for range n {
			syscall.Syscall(syscall.SYS_GETPPID, 0, 0, 0)
		}
	})
	src, dst := make([]byte, 4096), make([]byte, 4096)
	measure("copy 4 KiB", 50000, func(n int) {
		for range n {
			copy(dst, src)
		}
	})
	measure("channel ping-pong (round trip)", 20000, func(n int) {
		p, q := make(chan int), make(chan int)
		go func() {
			for v := range p {
				q <- v
			}
		}()
		for i := range n {
			p <- i
			<-q
		}
		close(p)
	})
	measure("pipe ping-pong, netpoller (round trip)", 5000, func(n int) { pipePong(n, false) })
	measure("pipe ping-pong, blocked threads (round trip)", 5000, func(n int) { pipePong(n, true) })
	measure("idle 1 s (runtime background)", 1, func(int) { time.Sleep(time.Second) })
}
