#!/bin/bash
# bench/run.sh: `make bench`'s entry point (host side). Builds verbsbench, boots
# one guest (test/vm/vm.sh run) that runs bench/verbs.sh: internal/verbs against
# perftest, RDMA WRITE and READ, 4 KiB and 64 KiB, QD 32, over soft-RoCE (rxe0)
# and soft-iWARP (siw0). Leaves bench/results/verbs-<date>.md (table with the
# Go/perftest ratio), .json (summary and every run) and .log (the guest's output).
#   bench/run.sh
# Env: RBD_BENCH_DURATION (s per run, 5) RBD_BENCH_REPS (2) RBD_BENCH_TRANSPORTS
# ("rxe siw") RBD_BENCH_OPS ("write read") RBD_BENCH_SIZES ("4096 65536")
# RBD_BENCH_ARGS (extra verbsbench client flags); vm.sh passes RBD_* into the guest.
# Exit code: verbs.sh's (1 if a run moved no data), 125 if the guest failed.
set -u
cd "$(dirname "$0")/.."
GO=${GO:-go}
command -v "$GO" >/dev/null || GO=/usr/local/go/bin/go
mkdir -p bench/bin bench/results
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
