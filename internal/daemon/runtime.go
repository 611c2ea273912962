package daemon

import (
	"os"
	"strings"
	"syscall"
)

// awakeSysmon is the GODEBUG setting that keeps the Go runtime's sysmon
// thread out of its deep sleep. By default sysmon sleeps deeply whenever
// every P is idle — with a block device at low queue depth, between any two
// requests — and the first system call after that wakes it and sets it back
// to polling every 20 µs until it has seen a millisecond of nothing to do:
// most of the daemons' thread wake-ups per I/O at queue depth 1, and about a
// third of their CPU, in the benchmark's guest. With schedtrace set, sysmon
// never sleeps deeply and stays at its slowest period (10 ms) while the
// data path waits on the netpoller. The price: sysmon wakes 100 times a
// second in an idle daemon, and the runtime writes one "SCHED" line to
// stderr every 2^31-1 ms (24.8 days) of the machine's uptime.
const awakeSysmon = "schedtrace=2147483647"

// sysmonEnv returns env with awakeSysmon added to GODEBUG, and whether it
// added it: not when GODEBUG names schedtrace already (GODEBUG=schedtrace=0
// keeps the runtime's default).
func sysmonEnv(env []string) ([]string, bool) {
	out := make([]string, 0, len(env)+1)
	found := false
	for _, kv := range env {
		v, ok := strings.CutPrefix(kv, "GODEBUG=")
		if !ok {
			out = append(out, kv)
			continue
		}
		for _, s := range strings.Split(v, ",") {
			if strings.HasPrefix(strings.TrimSpace(s), "schedtrace=") {
				return env, false
			}
		}
		if found {
			continue // the first GODEBUG wins, as for getenv
		}
		found = true
		if v != "" {
			v += ","
		}
		out = append(out, "GODEBUG="+v+awakeSysmon)
	}
	if !found {
		out = append(out, "GODEBUG="+awakeSysmon)
	}
	return out, true
}

// TuneRuntime makes the daemon run with awakeSysmon: the runtime reads
// GODEBUG only at start, so the process executes itself again (same pid,
// arguments and open files) with it in the environment. The path executed is
// the binary's own (os.Executable), not /proc/self/exe, whose name would
// become the process's (comm "exe" in ps, the journal, rdma resource
// lists). Call it first, before any goroutine, socket or device is made. It
// returns when there is nothing to do, or when the exec fails (the daemon
// then runs as it is).
func TuneRuntime() {
	env, changed := sysmonEnv(os.Environ())
	if !changed {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	syscall.Exec(exe, os.Args, env)
}
