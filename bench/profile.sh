#!/bin/bash
# profile.sh: where each rbd daemon's threads sleep, wake and spend CPU while
# fio runs one workload (both daemons on rxe0, exporting /dev/ram1), per I/O:
#   1. each thread's CPU and context switches (voluntary, involuntary) over
#      the run, from /proc/PID/task/*/{stat,status}: the threads that wake
#      per I/O stand out from the Go runtime's helpers;
#   2. the system calls of each daemon (strace -c -f) over a second run, per
#      I/O (strace slows the daemons: read the counts, not the speed).
# perf's cpu-clock samples are not used: under qemu TCG they land almost
# only on the idle loop and on new processes, whatever runs.
# Run INSIDE the guest after test/vm/guest-setup.sh; the host side:
#
#   test/vm/vm.sh run "$PWD/bench/profile.sh" BINDIR [WORKLOAD...]
#
# WORKLOADs are bench/ab.sh's (rr1 by default). Env: PROF_DUR (s, 8),
# PROF_ADDR, PROF_DEV, PROF_ENV (NAME=VALUE ... for both daemons), PROF_ARGS
# (extra rbdi flags), PROF_SLEEPS=1 (a histogram of the runtime's sleeps),
# PROF_CPU=DIR (a third run under Go's CPU profiler, from each daemon's
# /debug/pprof/profile on its control socket: DIR/WORKLOAD.rbdi.pprof and
# .rbdt.pprof; DIR must be writable in the guest, vm.sh VM_RW; read them on
# the host with `go tool pprof -top BINDIR/rbdi FILE`).
set -u
BIN=${1:?usage: profile.sh BINDIR [WORKLOAD...]}
shift
WLS=${*:-rr1}
DUR=${PROF_DUR:-8}
ADDR=${PROF_ADDR:-10.77.0.1}
DEV=${PROF_DEV:-/dev/ram1}
W=$(mktemp -d /tmp/prof.XXXXXX)
HZ=$(getconf CLK_TCK)
fio_args() {
  case $1 in
    rr1) echo "--rw=randread --bs=4k --iodepth=1 --numjobs=1" ;;
    rw1) echo "--rw=randwrite --bs=4k --iodepth=1 --numjobs=1" ;;
    rr32) echo "--rw=randread --bs=4k --iodepth=16 --numjobs=2" ;;
    rw32) echo "--rw=randwrite --bs=4k --iodepth=16 --numjobs=2" ;;
    sr1m) echo "--rw=read --bs=1m --iodepth=8 --numjobs=1" ;;
    sw1m) echo "--rw=write --bs=1m --iodepth=8 --numjobs=1" ;;
    *) echo "profile: unknown workload $1" >&2; exit 2 ;;
  esac
}
# threads PID -> "TID utime+stime voluntary involuntary" per thread
threads() {
  local f
  for f in /proc/$1/task/*; do
    set -- $(sed 's/^.*) //' $f/stat 2>/dev/null) 
    [ $# -gt 13 ] || continue
    echo "${f##*/} $((${12} + ${13})) $(awk '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {n=$2} END {print v+0, n+0}' $f/status)"
  done
}
# traced NAME STRACE-ARGS...: one run of $wl with both daemons under strace
# (output in $W/NAME.PID); sets iops
traced() {
  local name=$1 p; shift
  for p in $ip $tp; do timeout $((DUR + 30)) strace -f -qq "$@" -p $p -o $W/$name.$p & done
  sleep 1
  iops=$(fio_run $wl "$d" "$DUR")
  pkill -INT -f "strace -f -qq $*" ; wait $(jobs -p | grep -v "^$ip$\|^$tp$") 2>/dev/null
}
fio_run() { # WORKLOAD DEV SECONDS -> IOPS
  fio --name=prof --filename="$2" --ioengine=libaio --direct=1 $(fio_args $1) --runtime="$3" --time_based \
    --group_reporting --output-format=json > $W/fio.json 2> $W/fio.err
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(round(j["read"]["iops"]+j["write"]["iops"], 1))' $W/fio.json
}
env ${PROF_ENV:-} "$BIN/rbdt" --listen "$ADDR" --export "$DEV" --control $W/t.sock > $W/rbdt.log 2>&1 & tp=$!
for i in $(seq 100); do grep -q listening $W/rbdt.log 2>/dev/null && break; sleep 0.1; done
env ${PROF_ENV:-} "$BIN/rbdi" --control $W/i.sock ${PROF_ARGS:-} > $W/rbdi.log 2>&1 & ip=$!
for i in $(seq 100); do [ -S $W/i.sock ] && break; sleep 0.1; done
trap 'kill $ip $tp 2>/dev/null; wait 2>/dev/null; rm -rf $W' EXIT
d=$("$BIN/rbdctl" --socket $W/i.sock -n -a "$ADDR" -d "$DEV") || { echo "profile: map failed: $d" >&2; exit 1; }
echo "profile: $("$BIN/rbdi" --version 2>&1 | head -1), ${PROF_ENV:-default env}, rbdi ${PROF_ARGS:-default flags}, $DUR s runs"
for wl in $WLS; do
  echo 3 > /proc/sys/vm/drop_caches
  threads $ip > $W/i0; threads $tp > $W/t0
  iops=$(fio_run $wl "$d" "$DUR")
  threads $ip > $W/i1; threads $tp > $W/t1
  echo
  echo "== $wl: $iops IOPS; per thread, per I/O (threads with under 0.05 switches per I/O left out)"
  for x in i:rbdi t:rbdt; do
    python3 - "${x#*:}" $W/${x%%:*}0 $W/${x%%:*}1 "$iops" "$DUR" "$HZ" <<'PY'
import sys
name, f0, f1, iops, dur, hz = sys.argv[1:]
n = max(1.0, float(iops) * float(dur))
rd = lambda f: {l.split()[0]: list(map(int, l.split()[1:])) for l in open(f) if l.strip()}
a, b = rd(f0), rd(f1)
rows = []
for tid, v in b.items():
    u = a.get(tid, [0, 0, 0])
    d = [v[k] - u[k] for k in range(3)]
    rows.append((tid, d[0] * 1e6 / int(hz) / n, d[1] / n, d[2] / n))
rows.sort(key=lambda r: -(r[2] + r[3]))
tot = [sum(r[k] for r in rows) for k in (1, 2, 3)]
print(f"{name}: {len(rows)} threads; all: {tot[0]:.0f} µs CPU, {tot[1]:.2f} voluntary + {tot[2]:.2f} involuntary switches per I/O")
for tid, cpu, vol, inv in rows:
    if vol + inv >= 0.05:
        print(f"  thread {tid:>7}: {cpu:8.0f} µs CPU  {vol:6.2f} vol  {inv:6.2f} invol")
PY
  done
  if command -v strace > /dev/null; then
    traced strace -c
    for x in "$ip rbdi" "$tp rbdt"; do
      set -- $x
      echo "$2 under strace ($wl, $iops IOPS): system calls per I/O"
      awk -v n="$(python3 -c "print(max(1.0, $iops * $DUR))")" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" { printf "  %-20s %7.2f\n", $NF, $4 / n }' $W/strace.$1 | sort -k2 -rn | head -12
    done
  fi
  if [ -n "${PROF_SLEEPS:-}" ] && command -v strace > /dev/null; then
    # the Go runtime's sleeps: sysmon backs off from 20 µs to 10 ms while
    # it finds nothing to do, and starts again at 20 µs after a wake-up
    traced sleeps -e trace=nanosleep,clock_nanosleep
    for x in "$ip rbdi" "$tp rbdt"; do
      set -- $x
      echo "$2 sleeps ($wl, $iops IOPS): requested duration -> count per I/O"
      python3 - $W/sleeps.$1 "$iops" "$DUR" <<'PY'
import re, sys, collections
f, iops, dur = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
n = max(1.0, iops * dur)
c = collections.Counter()
for l in open(f):
    m = re.search(r'tv_sec=(\d+), tv_nsec=(\d+)', l)
    if m:
        us = int(m.group(1)) * 1000000 + int(m.group(2)) // 1000
        c[us] += 1
for us, k in sorted(c.items()):
    if k / n >= 0.01:
        print(f"  {us:>8} µs  {k / n:6.2f}")
PY
    done
  fi
  if [ -n "${PROF_CPU:-}" ]; then
    mkdir -p "$PROF_CPU"
    pids=""
    for x in "i rbdi" "t rbdt"; do
      set -- $x
      curl -s --unix-socket $W/$1.sock -o "$PROF_CPU/$wl.$2.pprof" "http://rbd/debug/pprof/profile?seconds=$DUR" & pids="$pids $!"
    done
    sleep 0.5
    iops=$(fio_run $wl "$d" "$DUR")
    wait $pids
    echo "CPU profiles ($wl, $iops IOPS): $(ls "$PROF_CPU"/$wl.*.pprof | tr '\n' ' ')"
  fi
done
"$BIN/rbdctl" --socket $W/i.sock -r -d "$d" > /dev/null 2>&1 || true
