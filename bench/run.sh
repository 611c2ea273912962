#!/bin/bash
# bench/run.sh: `make bench`'s entry point (host side). BENCH selects the benchmark:
#
#   BENCH=full  (default) the block-device benchmark: one guest boot runs
#               bench/block.sh, which times brd, kernel NVMe-oF/RDMA, RNBD, NBD/TCP
#               (nbd-server), rbd over soft-RoCE and soft-iWARP, and rbd over
#               soft-RoCE on its NBD socket (fio's nbd engine) on one brd device,
#               8 fio workloads, 3 interleaved repetitions (~70 min under TCG
#               on a 2-core host: each run costs ~15 s of set-up beyond its 10 s).
#   BENCH=quick the same structure, 5 workloads, shorter runs, 1 repetition (~15 min).
#   BENCH=verbs the verbs benchmark: internal/verbs against perftest (bench/verbs.sh).
#
#   bench/run.sh                     BENCH=quick bench/run.sh       BENCH=verbs bench/run.sh
#   bench/run.sh report DIR          (re)make results.md/summary.json/plot.png of DIR
#
# Block: results in bench/results/<stamp>/ (stamp = block-MODE-DATE): results.md,
# summary.json, plot.png, fio/*.json (raw), runs.jsonl, systems.jsonl, meta.json,
# block.log, guest.log. The folder is given to the guest writable (vm.sh VM_RW).
# Block env: RBD_BENCH_REPS RBD_BENCH_RUNTIME RBD_BENCH_RAMP RBD_BENCH_RAM_MB
# RBD_BENCH_SYSTEMS RBD_BENCH_WORKLOADS (see bench/block.sh); VM_TIMEOUT (s, whole guest).
# Exit code: 0 when the harness ran, whatever the numbers (failed systems are
# reported in results.md); non-zero only when the guest or the report broke.
#
# Verbs: builds verbsbench, boots one guest (test/vm/vm.sh run) that runs
# bench/verbs.sh: internal/verbs against perftest, RDMA WRITE and READ, 4 KiB and
# 64 KiB, QD 32, over soft-RoCE (rxe0) and soft-iWARP (siw0). Leaves
# bench/results/verbs-<date>.md (table with the Go/perftest ratio), .json (summary
# and every run) and .log (the guest's output).
# Verbs env: RBD_BENCH_DURATION (s per run, 5) RBD_BENCH_REPS (2) RBD_BENCH_TRANSPORTS
# ("rxe siw") RBD_BENCH_OPS ("write read") RBD_BENCH_SIZES ("4096 65536")
# RBD_BENCH_ARGS (extra verbsbench client flags); vm.sh passes RBD_* into the guest.
# Verbs exit code: verbs.sh's (1 if a run moved no data), 125 if the guest failed.
set -u
cd "$(dirname "$0")/.."
GO=${GO:-go}
command -v "$GO" >/dev/null || GO=/usr/local/go/bin/go
mkdir -p bench/bin bench/results
BENCH=${BENCH:-full}

# report DIR: the host-side report of a block results folder
report() {
  "$GO" build -o bench/bin/blockreport ./bench/blockreport || return 1
  bench/bin/blockreport "$1" > /dev/null || return 1
  echo "bench: $1/results.md, summary.json, plot.png"
}

block() {
  local mode=$1 stamp dir rc
  stamp=block-$mode-$(date +%Y%m%d-%H%M%S)
  dir=$PWD/bench/results/$stamp
  mkdir -p "$dir" || exit 1
  "$GO" build -o bench/bin/blockreport ./bench/blockreport || exit 1
  [ -x bin/rbdt ] && [ -x bin/rbdi ] && [ -x bin/rbdctl ] || { echo "bench: build rbd first (make build)" >&2; exit 1; }
  echo "bench: block-device benchmark ($mode) in the guest ($([ "$mode" = quick ] && echo '~15' || echo '~70') min); output in $dir"
  VM_RW="$dir" VM_TIMEOUT=${VM_TIMEOUT:-$([ "$mode" = quick ] && echo 2400 || echo 7200)} \
    test/vm/vm.sh run "$PWD/bench/block.sh" "$dir" "$mode" 2>&1 | tee "$dir/guest.log"
  rc=${PIPESTATUS[0]}
  if [ ! -s "$dir/runs.jsonl" ]; then
    echo "bench: no runs from the guest (rc=$rc); see $dir/guest.log" >&2
    exit $(( rc == 0 ? 1 : rc ))
  fi
  [ "$rc" = 0 ] || echo "bench: the guest ended with rc=$rc; reporting what it measured" >&2
  bench/bin/blockreport "$dir" || { echo "bench: report failed" >&2; exit 1; }
  echo "bench: results in $dir/results.md (plot: plot.png, all figures: summary.json)"
  exit "$rc"
}

case ${1:-} in
  report) [ -d "${2:-}" ] || { echo "usage: bench/run.sh report DIR" >&2; exit 2; }; report "$2"; exit ;;
esac
case $BENCH in
  full|quick) block "$BENCH" ;;
  verbs) ;;
  *) echo "bench: BENCH is full, quick or verbs, not $BENCH" >&2; exit 2 ;;
esac

# ---- BENCH=verbs
CGO_ENABLED=1 "$GO" build -o bench/bin/verbsbench ./bench/verbsbench || exit 1
stem=verbs-$(date +%Y%m%d-%H%M%S)
log=bench/results/$stem.log
echo "bench: verbs benchmark in the guest (~6 min); output in $log"
# The guest sees the host's files read-only: verbs.sh writes its results into
# its own overlay and prints them between markers, which are cut out below.
test/vm/vm.sh run "$PWD/bench/verbs.sh" "$PWD/bench/results" "$stem" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
n=0
for f in "$stem.md" "$stem.json"; do
  [ -s "bench/results/$f" ] && { n=$((n + 1)); continue; } # written directly (a writable mount)
  awk -v want="@@VERBSBENCH-FILE $f" '$0 == "@@VERBSBENCH-END" { on = 0 } on { print } $0 == want { on = 1 }' "$log" > "bench/results/$f.tmp"
  if [ -s "bench/results/$f.tmp" ]; then mv "bench/results/$f.tmp" "bench/results/$f"; n=$((n + 1)); else rm -f "bench/results/$f.tmp"; fi
done
if [ $n = 2 ]; then
  echo "bench: results in bench/results/$stem.md and bench/results/$stem.json"
else
  echo "bench: no results from the guest (rc=$rc); see $log" >&2
  [ "$rc" = 0 ] && rc=1
fi
exit "$rc"
