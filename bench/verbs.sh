#!/bin/bash
# verbs.sh: the verbs benchmark, run INSIDE the guest (bench/run.sh boots it with
# test/vm/vm.sh run, after guest-setup.sh made rxe0 and siw0). For each transport
# (rxe0 on 10.77.0.1, siw0 on 10.79.0.1), op (RDMA WRITE, RDMA READ) and size
# (4 KiB, 64 KiB) it runs perftest (ib_write_bw / ib_read_bw -R -q 1 -t 32 -D)
# and verbsbench (internal/verbs, QD 32) with the same parameters, each as a
# server and a client process on the same device, alternating which goes first,
# RBD_BENCH_REPS times, and reports Go MB/s / perftest MB/s. verbsbench's
# defaults: every work request signaled, chained posts, completions reaped with
# CQ.Wait (RBD_BENCH_ARGS="-poll busy -signal 32" gives perftest's strategy).
#
#   bench/verbs.sh RESULTS_DIR [STEM]
#
# Writes RESULTS_DIR/STEM.md (table), STEM.json (summary and every run) and
# STEM.runs.jsonl, prints the table, and then prints each file between
# "@@VERBSBENCH-FILE NAME" and "@@VERBSBENCH-END" lines: test/vm/vm.sh has no
# writable host folder, so bench/run.sh takes the files from the output.
# Exit code 1 when a run moved no data (perftest exits 0 even then).
# Env: RBD_BENCH_DURATION (s per run, 5) RBD_BENCH_REPS (2) RBD_BENCH_TRANSPORTS
# ("rxe siw") RBD_BENCH_OPS ("write read") RBD_BENCH_SIZES ("4096 65536")
# RBD_BENCH_QD (32) RBD_BENCH_ARGS (extra verbsbench client flags)
# RBD_BENCH_BIN (verbsbench binary, default bench/bin/verbsbench)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: verbs.sh RESULTS_DIR [STEM]}
STEM=${2:-verbs-$(date +%Y%m%d-%H%M%S)}
DUR=${RBD_BENCH_DURATION:-5}
REPS=${RBD_BENCH_REPS:-2}
QD=${RBD_BENCH_QD:-32}
BIN=${RBD_BENCH_BIN:-$HERE/bin/verbsbench}
TRANSPORTS=${RBD_BENCH_TRANSPORTS:-rxe siw}
OPS=${RBD_BENCH_OPS:-write read}
SIZES=${RBD_BENCH_SIZES:-4096 65536}
VBARGS=${RBD_BENCH_ARGS:-}
[ -x "$BIN" ] || { echo "verbs.sh: no $BIN (go build -o bench/bin/verbsbench ./bench/verbsbench)" >&2; exit 2; }
command -v ib_write_bw >/dev/null || { echo "verbs.sh: perftest is not installed" >&2; exit 2; }
mkdir -p "$OUT" || exit 2
cat "$BIN" "$(command -v ib_write_bw)" "$(command -v ib_read_bw)" > /dev/null # into the page cache (9p)
W=$(mktemp -d /tmp/verbsbench.XXXXXX)
RUNS=$OUT/$STEM.runs.jsonl
: > "$RUNS"
T0=$(date +%s)
PORT=$((19000 + RANDOM % 1000))
FAILED=0

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

# wait_listen PORT PID: until an rdma_cm identifier listens on PORT (or PID died)
wait_listen() {
  local i
  for i in $(seq 1 300); do
    rdma res show cm_id 2>/dev/null | grep -q "state LISTEN .*:$1 " && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# perftest TRANSPORT DEV ADDR OP SIZE REP ORDER
perftest() {
  local t=$1 dev=$2 addr=$3 op=$4 size=$5 rep=$6 order=$7 tool=ib_${4}_bw try
  for try in 1 2; do
    PORT=$((PORT + 1))
    local t0; t0=$(now)
    local args=(-R -d "$dev" -s "$size" -q 1 -t "$QD" -D "$DUR" -F -p "$PORT")
    timeout $((DUR + 60)) $tool "${args[@]}" > "$W/pt-srv.log" 2>&1 & local s=$!
    wait_listen "$PORT" $s || sleep 2
    timeout $((DUR + 60)) $tool "${args[@]}" "$addr" > "$W/pt-cli.log" 2>&1; local rc=$?
    wait $s; local rs=$?
    # the line after the header: #bytes #iterations BW-peak BW-average MsgRate[Mpps]
    local line; line=$(grep -A1 '#bytes' "$W/pt-cli.log" | tail -1)
    local mbs mpps
    mbs=$(echo "$line" | awk '{print $4+0}')
    mpps=$(echo "$line" | awk '{print $5+0}')
    local ok=false
    [ $rc = 0 ] && [ $rs = 0 ] && awk -v b="${mbs:-0}" 'BEGIN{exit !(b>0)}' && ok=true
    printf '{"transport":"%s","device":"%s","op":"%s","size":%d,"tool":"perftest","rep":%d,"order":%d,"try":%d,"ok":%s,"mb_s":%s,"ops_s":%s,"wall_s":%s,"cmd":"%s"}\n' \
      "$t" "$dev" "$op" "$size" "$rep" "$order" "$try" $ok "${mbs:-0}" "$(awk -v m="${mpps:-0}" 'BEGIN{printf "%.1f", m*1e6}')" "$(since "$t0")" \
      "$tool ${args[*]} [$addr]" >> "$RUNS"
    printf '  %-9s %s %-5s %6d  rep %d  %8.2f MB/s%s\n' perftest "$t" "$op" "$size" "$rep" "${mbs:-0}" "$($ok || echo "  FAILED (client rc=$rc, server rc=$rs)")"
    $ok && return 0
    tail -5 "$W/pt-cli.log" "$W/pt-srv.log" | sed 's/^/    /'
  done
  FAILED=1
  return 1
}

# gobench TRANSPORT DEV ADDR OP SIZE REP ORDER
gobench() {
  local t=$1 dev=$2 addr=$3 op=$4 size=$5 rep=$6 order=$7 try
  for try in 1 2; do
    PORT=$((PORT + 1))
    local t0; t0=$(now)
    timeout $((DUR + 60)) "$BIN" -role server -addr "$addr:$PORT" -size "$size" -timeout 60s > "$W/vb-srv.log" 2>&1 & local s=$!
    wait_listen "$PORT" $s || sleep 2
    # shellcheck disable=SC2086
    timeout $((DUR + 60)) "$BIN" -role client -addr "$addr:$PORT" -op "$op" -size "$size" -qd "$QD" -duration "${DUR}s" $VBARGS > "$W/vb-cli.log" 2> "$W/vb-cli.err"; local rc=$?
    wait $s; local rs=$?
    local js; js=$(grep '^{' "$W/vb-cli.log" | tail -1)
    local mbs ops
    mbs=$(echo "$js" | sed -n 's/.*"mb_s":\([0-9.eE+-]*\).*/\1/p')
    ops=$(echo "$js" | sed -n 's/.*"ops_s":\([0-9.eE+-]*\).*/\1/p')
    local ok=false
    [ $rc = 0 ] && [ $rs = 0 ] && awk -v b="${mbs:-0}" 'BEGIN{exit !(b>0)}' && ok=true
    printf '{"transport":"%s","device":"%s","op":"%s","size":%d,"tool":"verbsbench","rep":%d,"order":%d,"try":%d,"ok":%s,"mb_s":%s,"ops_s":%s,"wall_s":%s,"detail":%s}\n' \
      "$t" "$dev" "$op" "$size" "$rep" "$order" "$try" $ok "${mbs:-0}" "${ops:-0}" "$(since "$t0")" "${js:-null}" >> "$RUNS"
    printf '  %-9s %s %-5s %6d  rep %d  %8.2f MB/s%s\n' verbsbench "$t" "$op" "$size" "$rep" "${mbs:-0}" "$($ok || echo "  FAILED (client rc=$rc, server rc=$rs)")"
    $ok && return 0
    tail -5 "$W/vb-cli.err" "$W/vb-srv.log" | sed 's/^/    /'
  done
  FAILED=1
  return 1
}

echo "verbs benchmark: $(uname -r), $(nproc) cpus; ${DUR} s per run, QD $QD, $REPS repetitions; transports: $TRANSPORTS"
i=0
for t in $TRANSPORTS; do
  case $t in
    rxe) dev=rxe0 addr=10.77.0.1 ;;
    siw) dev=siw0 addr=10.79.0.1 ;;
    *) echo "verbs.sh: unknown transport $t" >&2; exit 2 ;;
  esac
  [ -e /sys/class/infiniband/$dev ] || { echo "verbs.sh: no $dev (run test/vm/guest-setup.sh first)" >&2; exit 2; }
  for op in $OPS; do
    for size in $SIZES; do
      for rep in $(seq 1 "$REPS"); do
        # alternate which tool goes first, across cases and repetitions
        if [ $(( (i + rep) % 2 )) = 0 ]; then
          perftest $t $dev $addr $op $size $rep 1; gobench $t $dev $addr $op $size $rep 2
        else
          gobench $t $dev $addr $op $size $rep 1; perftest $t $dev $addr $op $size $rep 2
        fi
      done
      i=$((i + 1))
    done
  done
done

"$BIN" report -in "$RUNS" -md "$OUT/$STEM.md" -json "$OUT/$STEM.json" \
  -meta "kernel=$(uname -r)" -meta "cpus=$(nproc)" -meta "duration_s=$DUR" -meta "reps=$REPS" -meta "qd=$QD" \
  -meta "verbsbench_args=$VBARGS" -meta "guest_seconds=$(( $(date +%s) - T0 ))" || FAILED=1
echo
cat "$OUT/$STEM.md"
for f in "$STEM.md" "$STEM.json"; do
  echo "@@VERBSBENCH-FILE $f"
  cat "$OUT/$f"
  echo "@@VERBSBENCH-END"
done
rm -rf "$W"
exit $FAILED
