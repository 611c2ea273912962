#!/bin/bash
# ab.sh: compare two builds of rbd in ONE guest boot, interleaved, so that a
# data-path change is judged against the run before it on the same noisy
# machine (make bench compares rbd with its peers; this compares rbd with
# itself). Run INSIDE the guest, after test/vm/guest-setup.sh; bench/ab-run.sh
# is the host side that boots the guest.
#
#   bench/ab.sh A_BINDIR B_BINDIR [OUT.jsonl]
#
# Each repetition runs every workload on A, then on B (then B first on the
# next repetition), each time with freshly started daemons exporting /dev/ram1
# over rxe0 (10.77.0.1). Per run: fio IOPS and mean latency, and each daemon's
# CPU µs and context switches (voluntary + involuntary, all threads) per I/O.
# Env: AB_REPS (3) AB_DUR (s per run, 8) AB_ADDR (10.77.0.1) AB_DEV (/dev/ram1)
# AB_WORKLOADS ("rr1 rr32 rw32 sr1m") AB_ARGS_A / AB_ARGS_B (extra rbdi flags)
# AB_ENV_A / AB_ENV_B (NAME=VALUE ... set for both daemons of A / B: one build
# can then be compared with itself under two settings). AB_ENV_C / AB_ENV_D
# (and AB_ARGS_C / AB_ARGS_D), when set, add configurations C and D: B's
# build under those settings, in the same rotation.
set -u
A=${1:?usage: ab.sh A_BINDIR B_BINDIR [OUT.jsonl]}
B=${2:?usage: ab.sh A_BINDIR B_BINDIR [OUT.jsonl]}
OUT=${3:-/dev/null}
REPS=${AB_REPS:-3}
DUR=${AB_DUR:-8}
ADDR=${AB_ADDR:-10.77.0.1}
DEV=${AB_DEV:-/dev/ram1}
WLS=${AB_WORKLOADS:-rr1 rr32 rw32 sr1m}
W=$(mktemp -d /tmp/ab.XXXXXX)
HZ=$(getconf CLK_TCK)

wl_args() { # workload -> fio args
  case $1 in
    rr1) echo "--rw=randread --bs=4k --iodepth=1 --numjobs=1" ;;
    rr32) echo "--rw=randread --bs=4k --iodepth=16 --numjobs=2" ;;
    rw32) echo "--rw=randwrite --bs=4k --iodepth=16 --numjobs=2" ;;
    rw1) echo "--rw=randwrite --bs=4k --iodepth=1 --numjobs=1" ;;
    sr128k) echo "--rw=read --bs=128k --iodepth=8 --numjobs=1" ;;
    sw128k) echo "--rw=write --bs=128k --iodepth=8 --numjobs=1" ;;
    sr1m) echo "--rw=read --bs=1m --iodepth=8 --numjobs=1" ;;
    sw1m) echo "--rw=write --bs=1m --iodepth=8 --numjobs=1" ;;
  esac
}
# proc_counts PID -> "cpu_ticks ctx_switches" summed over its threads
proc_counts() {
  local t=0 c=0 f
  for f in /proc/$1/task/*; do
    set -- $(sed 's/^.*) //' $f/stat 2>/dev/null)
    [ $# -gt 13 ] && t=$((t + ${12} + ${13}))
    c=$((c + $(awk '/ctxt_switches/ { s += $2 } END { print s + 0 }' $f/status 2>/dev/null)))
  done
  echo "$t $c"
}
run_one() { # LABEL BINDIR
  local label=$1 bin=$2 extra envs
  eval "extra=\${AB_ARGS_$label:-}; envs=\${AB_ENV_$label:-}"
  env $envs $bin/rbdt --listen $ADDR --export $DEV --control $W/t.sock > $W/rbdt.$label.log 2>&1 & local tp=$!
  for i in $(seq 100); do grep -q listening $W/rbdt.$label.log 2>/dev/null && break; sleep 0.1; done
  env $envs $bin/rbdi --control $W/i.sock $extra > $W/rbdi.$label.log 2>&1 & local ip=$!
  for i in $(seq 100); do [ -S $W/i.sock ] && break; sleep 0.1; done
  local d
  d=$($bin/rbdctl --socket $W/i.sock -n -a $ADDR -d $DEV 2>&1) || { echo "ab: map failed ($label): $d" >&2; kill $ip $tp; wait; return 1; }
  for wl in $WLS; do
    echo 3 > /proc/sys/vm/drop_caches
    local b_i b_t a_i a_t
    b_i=$(proc_counts $ip); b_t=$(proc_counts $tp)
    fio --name=ab --filename=$d --ioengine=libaio --direct=1 $(wl_args $wl) --runtime=$DUR --ramp_time=1 \
      --time_based --group_reporting --output-format=json > $W/fio.json 2>$W/fio.err
    a_i=$(proc_counts $ip); a_t=$(proc_counts $tp)
    python3 - "$label" "$wl" "$W/fio.json" "$b_i" "$a_i" "$b_t" "$a_t" "$HZ" "$DUR" <<'PY' | tee -a "$OUT"
import json, sys
label, wl, path, bi, ai, bt, at, hz, dur = sys.argv[1:]
j = json.load(open(path))["jobs"][0]
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
iops = j["read"]["iops"] + j["write"]["iops"]
lat = (j["read"]["clat_ns"]["mean"] if j["read"]["total_ios"] else j["write"]["clat_ns"]["mean"]) / 1000
bw = (j["read"]["bw_bytes"] + j["write"]["bw_bytes"]) / 1e6
# the daemon counters span the ramp too: scale the I/O count to the whole run
n = max(1, iops * (float(dur) + 1))
d = lambda b, a: [int(a.split()[k]) - int(b.split()[k]) for k in (0, 1)]
ci, si = d(bi, ai); ct, st = d(bt, at)
us = 1e6 / int(hz)
print(json.dumps({"build": label, "workload": wl, "iops": round(iops), "MBps": round(bw, 1), "lat_us": round(lat),
  "rbdi_cpu_us": round(ci * us / n, 1), "rbdi_cs": round(si / n, 2), "rbdt_cpu_us": round(ct * us / n, 1), "rbdt_cs": round(st / n, 2)}))
PY
  done
  $bin/rbdctl --socket $W/i.sock -r -d $d > /dev/null 2>&1
  kill $ip; wait $ip 2>/dev/null; kill $tp; wait $tp 2>/dev/null
  rm -f $W/i.sock $W/t.sock
}
labels="A B"
[ -n "${AB_ENV_C:-}${AB_ARGS_C:-}" ] && labels="$labels C"
[ -n "${AB_ENV_D:-}${AB_ARGS_D:-}" ] && labels="$labels D"
set -- $labels
for r in $(seq $REPS); do
  # every repetition starts one configuration later (A B C, B C A, ...)
  k=$(( (r - 1) % $# )) order=""
  for i in $(seq 0 $(($# - 1))); do
    eval "order=\"\$order \${$(( (k + i) % $# + 1 ))}\""
  done
  for x in $order; do
    [ $x = A ] && run_one A "$A" || run_one $x "$B"
  done
done
python3 - "$OUT" <<'PY'
import json, sys, statistics
if sys.argv[1] == "/dev/null": sys.exit()
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
keys = ["iops", "MBps", "lat_us", "rbdi_cpu_us", "rbdi_cs", "rbdt_cpu_us", "rbdt_cs"]
print("| workload | build | " + " | ".join(keys) + " |")
print("|---|---|" + "---:|" * len(keys))
for wl in dict.fromkeys(r["workload"] for r in rows):
    for b in "ABCD":
        sel = [r for r in rows if r["workload"] == wl and r["build"] == b]
        if sel:
            print(f"| {wl} | {b} | " + " | ".join(str(round(statistics.median(r[k] for r in sel), 2)) for k in keys) + " |")
PY
