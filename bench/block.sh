#!/bin/bash
# block.sh: the block-device benchmark, run INSIDE the guest (bench/run.sh boots it
# with test/vm/vm.sh run, after guest-setup.sh made rxe0 and siw0). One brd RAM
# device (/dev/ram0, RBD_BENCH_RAM_MB) is the backend of every system, and
# soft-RoCE rxe0 (10.77.0.1) the RDMA device of every RDMA system:
#   brd       the RAM device itself
#   nvmeof    kernel NVMe-oF RDMA: nvmet + nvmet-rdma port 10.77.0.1:4420, nvme connect -t rdma
#   rnbd      RNBD: rtrs/rnbd modules from test/vm/cache/modules-extra, sysfs map_device
#   nbd       kernel NBD to nbd-server over TCP loopback (127.0.0.1:10809)
#   rbd-rxe   rbdt exporting /dev/ram0 + rbdi + rbdctl -n -a 10.77.0.1, fio on /dev/rbdi0
#   rbd-siw   the same over soft-iWARP siw0 (10.79.0.1)
#   rbd-socket  rbd over rxe0 served on rbdi's NBD Unix socket (rbdctl -n --nbd-socket
#             --no-kernel-device), fio's nbd engine on it (--ioengine=nbd --uri=
#             nbd+unix:///?socket=...): no kernel NBD hop; the same workloads
# Systems are interleaved within each repetition (rep 1: every system, rep 2: every
# system, ...; the order rotates by one each repetition). One system is set up at a
# time on the same /dev/ram0, its data path verified (random pattern written through
# the device, read back from /dev/ram0 with O_DIRECT, cmp), all workloads run, torn
# down. A system that fails set-up or verification is recorded with the reason and
# not timed. Before every run: caches dropped, scheduler `none` on the device.
# fio uses clocksource=clock_gettime: its default TSC clock drifts from wall time
# under TCG, and the CPU samples below are taken in wall time.
# Per run, sampled every 0.2 s and taken over a window inside fio's timed phase:
# /proc/stat busy jiffies, and for rbd the utime+stime and context switches of every
# thread of rbdi and rbdt.
#
#   bench/block.sh OUT_DIR [full|quick]
#
# Writes into OUT_DIR (a VM_RW host folder): fio/<system>.<workload>.r<rep>.json (raw
# fio JSON), samples/<same>.txt (CPU/ctxsw samples), runs.jsonl (one line per run:
# files, fio's job start/end marks), systems.jsonl
# (one line per system per repetition: set-up/verify status and reason), meta.json,
# block.log (set-up details). bench/blockreport turns them into results.md etc.
# Exit code: 0 whenever the harness ran (failed systems are data, not errors); 2 when
# the harness itself cannot run (no fio, no ram device, OUT_DIR not writable).
# Env: RBD_BENCH_REPS (full 3, quick 1) RBD_BENCH_RUNTIME (s, full 8, quick 4)
#      RBD_BENCH_RAMP (s, full 2, quick 2) RBD_BENCH_RAM_MB (full 512, quick 256)
#      RBD_BENCH_SYSTEMS ("brd nvmeof rnbd nbd rbd-rxe rbd-siw rbd-socket")
#      RBD_BENCH_WORKLOADS (full: all 8; quick: rr4k1 rr4k32 rw4k32 sr1m8 sw1m8)
#      RBD_BENCH_BIN (rbdt/rbdi/rbdctl folder, default bin/)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT=${1:?usage: block.sh OUT_DIR [full|quick]}
MODE=${2:-full}
case $MODE in
  full)  d_reps=3 d_rt=8 d_ramp=2 d_mb=512 d_wl="rr4k1 rr4k32 rw4k32 rw4k1 sr128k8 sw128k8 sr1m8 sw1m8" ;;
  quick) d_reps=1 d_rt=4 d_ramp=2 d_mb=256 d_wl="rr4k1 rr4k32 rw4k32 sr1m8 sw1m8" ;;
  *) echo "block.sh: mode is full or quick, not $MODE" >&2; exit 2 ;;
esac
REPS=${RBD_BENCH_REPS:-$d_reps}
RT=${RBD_BENCH_RUNTIME:-$d_rt}
RAMP=${RBD_BENCH_RAMP:-$d_ramp}
RAM_MB=${RBD_BENCH_RAM_MB:-$d_mb}
WORKLOADS=${RBD_BENCH_WORKLOADS:-$d_wl}
SYSTEMS=${RBD_BENCH_SYSTEMS:-brd nvmeof rnbd nbd rbd-rxe rbd-siw rbd-socket}
BIN=${RBD_BENCH_BIN:-$ROOT/bin}
EXTRA=${RBD_VM_CACHE:-$ROOT/test/vm/cache}/modules-extra
RAM=/dev/ram0
NQN=rbdbench
NBDDEV=/dev/nbd15 # the last of nbd's 16: rbdi takes free ones from the start
W=$(mktemp -d /tmp/rbdbench.XXXXXX)
LOG=$OUT/block.log

command -v fio >/dev/null || { echo "block.sh: fio is not installed" >&2; exit 2; }
mkdir -p "$OUT/fio" "$OUT/samples" && : > "$OUT/runs.jsonl" && : > "$OUT/systems.jsonl" && : > "$LOG" || { echo "block.sh: $OUT is not writable" >&2; exit 2; }
exec > >(tee -a "$LOG") 2>&1
log() { echo "$(date +%T) $*"; }

# ---- the backend: one brd device of RAM_MB (guest-setup.sh made 4 × 256 MiB; reload)
lsmod | grep -q '^brd ' && { rmmod brd || { echo "block.sh: cannot unload brd" >&2; exit 2; }; }
modprobe brd rd_nr=1 rd_size=$((RAM_MB * 1024)) max_part=0 || { echo "block.sh: no brd" >&2; exit 2; }
[ -b $RAM ] || { echo "block.sh: no $RAM" >&2; exit 2; }
# brd allocates pages on first write: fill it once so every read hits real pages
dd if=/dev/zero of=$RAM bs=1M count="$RAM_MB" oflag=direct status=none
for m in nvmet nvmet-rdma nvme-rdma nvme-fabrics; do modprobe $m 2>/dev/null; done
# The tools run between and during runs live on the host's 9p root, whose pages
# drop_caches throws away: fio and its ~60 libraries (80 MB) would be read over 9p
# again before every run. Copy them up into the overlay's tmpfs (an append-open
# does it), which drop_caches leaves alone.
pin() {
  local f l
  for f in "$@"; do
    f=$(command -v "$f") || continue
    for l in "$f" /lib64/ld-linux-x86-64.so.2 $(ldd "$f" 2> /dev/null | awk '$3 ~ /^\// {print $3}'); do
      l=$(realpath "$l") && { : >> "$l"; } 2> /dev/null # a running ld.so cannot be (ETXTBSY): left on 9p
    done
  done
}
pin fio touch dash sh stat sort head tail awk grep timeout sync tr qemu-io "$BIN/rbdt" "$BIN/rbdi" "$BIN/rbdctl"

# ---- workloads: name -> fio arguments (all libaio, direct, time_based with ramp)
wl_args() {
  case $1 in
    rr4k1)   echo "--rw=randread  --bs=4k   --numjobs=1 --iodepth=1" ;;
    rr4k32)  echo "--rw=randread  --bs=4k   --numjobs=2 --iodepth=16" ;;
    rw4k32)  echo "--rw=randwrite --bs=4k   --numjobs=2 --iodepth=16" ;;
    rw4k1)   echo "--rw=randwrite --bs=4k   --numjobs=1 --iodepth=1" ;;
    sr128k8) echo "--rw=read      --bs=128k --numjobs=1 --iodepth=8" ;;
    sw128k8) echo "--rw=write     --bs=128k --numjobs=1 --iodepth=8" ;;
    sr1m8)   echo "--rw=read      --bs=1m   --numjobs=1 --iodepth=8" ;;
    sw1m8)   echo "--rw=write     --bs=1m   --numjobs=1 --iodepth=8" ;;
    *) return 1 ;;
  esac
}

# ---- per-system set-up / teardown; setup_X sets DEV (the device fio uses; for
# rbd-socket the NBD URI, and URI too) and DPIDS ("rbdi PID rbdt PID" for rbd); on
# failure it sets REASON and returns 1.
DEV= URI= DPIDS= REASON= RBDI= RBDT= NBDSRV=
wait_dev() { local i; for i in $(seq 1 100); do [ -b "$1" ] && return 0; sleep 0.1; done; return 1; }

setup_brd() { DEV=$RAM; }
teardown_brd() { :; }

NV=/sys/kernel/config/nvmet
setup_nvmeof() {
  [ -d $NV ] || { REASON="no nvmet configfs ($NV)"; return 1; }
  mkdir -p $NV/subsystems/$NQN/namespaces/1 &&
  echo 1 > $NV/subsystems/$NQN/attr_allow_any_host &&
  echo -n $RAM > $NV/subsystems/$NQN/namespaces/1/device_path &&
  echo 1 > $NV/subsystems/$NQN/namespaces/1/enable &&
  mkdir -p $NV/ports/1 &&
  echo rdma > $NV/ports/1/addr_trtype && echo ipv4 > $NV/ports/1/addr_adrfam &&
  echo 10.77.0.1 > $NV/ports/1/addr_traddr && echo 4420 > $NV/ports/1/addr_trsvcid &&
  ln -s $NV/subsystems/$NQN $NV/ports/1/subsystems/$NQN || { REASON="nvmet configfs set-up failed"; return 1; }
  timeout 60 nvme connect -t rdma -a 10.77.0.1 -s 4420 -n $NQN || { REASON="nvme connect -t rdma failed"; return 1; }
  local i b
  for i in $(seq 1 100); do # the namespace's block device (not the hidden path nvmeXcYnZ)
    for b in /sys/block/nvme*n*; do
      case ${b##*/} in *c*n*) continue ;; esac
      [ "$(cat "$b/device/subsysnqn" 2>/dev/null)" = $NQN ] || continue
      DEV=/dev/${b##*/}; wait_dev "$DEV" && return 0
    done
    sleep 0.1
  done
  REASON="no nvme namespace device after connect"; return 1
}
teardown_nvmeof() {
  timeout 60 nvme disconnect -n $NQN > /dev/null 2>&1
  rm -f $NV/ports/1/subsystems/$NQN; rmdir $NV/ports/1 2>/dev/null
  echo 0 > $NV/subsystems/$NQN/namespaces/1/enable 2>/dev/null
  rmdir $NV/subsystems/$NQN/namespaces/1 $NV/subsystems/$NQN 2>/dev/null
  return 0
}

RNBD_CTL=/sys/devices/virtual/rnbd-client/ctl
setup_rnbd() {
  local m
  for m in rtrs/rtrs-core rtrs/rtrs-server rtrs/rtrs-client rnbd/rnbd-server rnbd/rnbd-client; do
    lsmod | grep -q "^$(basename $m | tr - _) " && continue
    [ -e "$EXTRA/$m.ko" ] || { REASON="no $EXTRA/$m.ko (make vm builds it)"; return 1; }
    insmod "$EXTRA/$m.ko" 2> "$W/insmod.err" || { REASON="insmod $(basename $m).ko: $(tr '\n' ' ' < "$W/insmod.err")"; return 1; }
  done
  [ -e $RNBD_CTL/map_device ] || { REASON="no $RNBD_CTL/map_device"; return 1; }
  local before; before=$(ls -d /sys/block/rnbd* 2>/dev/null)
  echo "sessname=$NQN path=ip:10.77.0.1 device_path=$RAM" > $RNBD_CTL/map_device 2> "$W/map.err" ||
    { REASON="map_device: $(tr '\n' ' ' < "$W/map.err") $(dmesg | grep -i -E 'rnbd|rtrs' | tail -2 | tr '\n' ' ')"; return 1; }
  local i b
  for i in $(seq 1 100); do
    for b in /sys/block/rnbd*; do
      [ -e "$b" ] || continue
      echo "$before" | grep -qx "$b" && continue
      DEV=/dev/${b##*/}; wait_dev "$DEV" && return 0
    done
    sleep 0.1
  done
  REASON="no /dev/rnbdN after map_device"; return 1
}
teardown_rnbd() {
  local b
  for b in /sys/block/rnbd*; do [ -e "$b/rnbd/unmap_device" ] && echo normal > "$b/rnbd/unmap_device" 2>/dev/null; done
  sleep 1 # the server closes the device asynchronously
  return 0
}

setup_nbd() {
  command -v nbd-server >/dev/null || { REASON="nbd-server is not installed (scripts/deps.sh)"; return 1; }
  printf '[generic]\nuser = root\ngroup = root\nlistenaddr = 127.0.0.1\nport = 10809\n[bench]\nexportname = %s\n' $RAM > "$W/nbd.conf"
  nbd-server -C "$W/nbd.conf" -p "$W/nbd.pid" > "$W/nbd-server.log" 2>&1 || { REASON="nbd-server failed: $(tail -1 "$W/nbd-server.log")"; return 1; }
  local i; for i in $(seq 1 50); do [ -s "$W/nbd.pid" ] && break; sleep 0.1; done
  NBDSRV=$(cat "$W/nbd.pid" 2>/dev/null)
  sleep 0.5
  timeout 60 nbd-client -N bench 127.0.0.1 10809 $NBDDEV -b 4096 > "$W/nbd-client.log" 2>&1 ||
    { REASON="nbd-client failed: $(tail -1 "$W/nbd-client.log")"; return 1; }
  for i in $(seq 1 100); do [ "$(blockdev --getsize64 $NBDDEV 2>/dev/null || echo 0)" -gt 0 ] && break; sleep 0.1; done
  DEV=$NBDDEV
}
teardown_nbd() {
  timeout 30 nbd-client -d $NBDDEV > /dev/null 2>&1
  [ -n "$NBDSRV" ] && kill "$NBDSRV" 2>/dev/null # its per-connection child ended with the disconnect
  NBDSRV=; sleep 0.5; return 0
}

setup_rbd() { # setup_rbd ADDR [rbdctl -n options: the NBD socket]
  local addr=$1 i
  shift
  "$BIN/rbdt" --listen "$addr" --export $RAM --control "$W/rbdt.sock" > "$W/rbdt.log" 2>&1 & RBDT=$!
  for i in $(seq 1 100); do [ -S "$W/rbdt.sock" ] && grep -q listening "$W/rbdt.log" && break; sleep 0.1; done
  kill -0 $RBDT 2>/dev/null || { REASON="rbdt exited: $(tail -1 "$W/rbdt.log")"; return 1; }
  "$BIN/rbdi" --control "$W/rbdi.sock" > "$W/rbdi.log" 2>&1 & RBDI=$!
  for i in $(seq 1 100); do [ -S "$W/rbdi.sock" ] && break; sleep 0.1; done
  kill -0 $RBDI 2>/dev/null || { REASON="rbdi exited: $(tail -1 "$W/rbdi.log")"; return 1; }
  DEV=$(timeout 90 "$BIN/rbdctl" --socket "$W/rbdi.sock" -n -a "$addr" -d $RAM "$@" 2> "$W/rbdctl.err") ||
    { REASON="rbdctl -n failed: $(tail -1 "$W/rbdctl.err")"; return 1; }
  if [ $# = 0 ]; then
    wait_dev "$DEV" || { REASON="no $DEV after rbdctl -n"; return 1; }
  else # on the NBD socket only: rbdctl printed rbdiN
    RBDNAME=$DEV DEV="nbd+unix:///?socket=$W/nbd.sock" URI="nbd+unix:///?socket=$W/nbd.sock"
    [ -S "$W/nbd.sock" ] || { REASON="no NBD socket $W/nbd.sock after rbdctl -n"; return 1; }
  fi
  DPIDS="$RBDI $RBDT"
}
teardown_rbd() {
  [ -n "$DEV" ] && [ -e "$DEV" ] && timeout 60 "$BIN/rbdctl" --socket "$W/rbdi.sock" -r -d "$DEV" > /dev/null 2>&1
  [ -n "$RBDNAME" ] && timeout 60 "$BIN/rbdctl" --socket "$W/rbdi.sock" -r -d "$RBDNAME" > /dev/null 2>&1
  local p
  for p in $RBDI $RBDT; do kill "$p" 2>/dev/null; done
  for p in $RBDI $RBDT; do timeout 20 tail --pid="$p" -f /dev/null; kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for p in rbdt rbdi; do [ -s "$W/$p.log" ] && { echo "  $p log tail:"; tail -3 "$W/$p.log" | sed 's/^/    /'; }; done
  RBDI= RBDT= DPIDS= RBDNAME= URI=; rm -f "$W"/rbd?.sock "$W"/nbd.sock; return 0
}
RBDNAME=
setup_rbd-rxe() { setup_rbd 10.77.0.1; }
setup_rbd-siw() { setup_rbd 10.79.0.1; }
setup_rbd-socket() {
  fio --enghelp 2>/dev/null | grep -qw nbd || { REASON="this fio has no nbd engine (fio --enghelp)"; return 1; }
  setup_rbd 10.77.0.1 --nbd-socket "$W/nbd.sock" --no-kernel-device
}
teardown_rbd-rxe() { teardown_rbd; }
teardown_rbd-siw() { teardown_rbd; }
teardown_rbd-socket() { teardown_rbd; }

# ---- data-path check: random pattern through DEV, read back from RAM (O_DIRECT)
verify() {
  local mb=8 off
  off=$(( (RANDOM % (RAM_MB / mb - 1)) * mb ))
  head -c $((mb << 20)) /dev/urandom > "$W/pat"
  if [ -n "$URI" ]; then # an NBD socket: qemu-io writes the pattern file, then flushes
    timeout 120 qemu-io -f raw -c "write -s $W/pat $((off << 20)) ${mb}M" -c flush "nbd:unix:$W/nbd.sock" > "$W/dd.err" 2>&1 &&
      ! grep -q -i fail "$W/dd.err" ||
      { REASON="verify: write through $DEV failed: $(tail -1 "$W/dd.err")"; return 1; }
  else
    timeout 120 dd if="$W/pat" of="$DEV" bs=1M seek=$off oflag=direct conv=fsync status=none 2> "$W/dd.err" ||
      { REASON="verify: write through $DEV failed: $(tail -1 "$W/dd.err")"; return 1; }
  fi
  dd if=$RAM of="$W/back" bs=1M skip=$off count=$mb iflag=direct status=none 2> "$W/dd.err" ||
    { REASON="verify: read of $RAM failed: $(tail -1 "$W/dd.err")"; return 1; }
  cmp -s "$W/pat" "$W/back" || { REASON="verify: data read back from $RAM differs from what was written through $DEV ($(cmp "$W/pat" "$W/back" 2>&1 | head -1))"; return 1; }
  rm -f "$W/pat" "$W/back"
}

set_sched() { # scheduler none on DEV (and the backend)
  local d b
  for d in $([ -z "$URI" ] && echo "$DEV") $RAM; do
    b=$(basename "$(realpath "$d")")
    [ -w /sys/block/$b/queue/scheduler ] && echo none > /sys/block/$b/queue/scheduler 2>/dev/null
  done
}

# ---- measurement: a sampler records every 0.2 s the time and /proc/stat busy and
# total jiffies ("C" lines; one read, no fork). For rbd it adds two "D" lines with
# each daemon's utime+stime ticks and voluntary and involuntary context switches
# summed over its threads, at ramp + 0.4 s after fio's jobs start and 0.5 s before
# the timed phase ends (reading every thread's status costs CPU, so only twice).
# fio marks each job's start and end (exec_prerun/exec_postrun touch start.PID and
# end.PID); blockreport takes the samples inside [last start + ramp + 0.3 s,
# first end - 0.3 s], fio's timed phase, and drops D figures outside it.
snap() { # snap C|D: prints C|D time busy_jiffies total_jiffies [ticks vol nonvol per daemon, D only]
  local cpu u n s i io irq sirq st rest p out
  read -r cpu u n s i io irq sirq st rest < /proc/stat
  out="$1 $EPOCHREALTIME $((u + n + s + irq + sirq + st)) $((u + n + s + i + io + irq + sirq + st))"
  # D: one awk per daemon (bash's read goes byte by byte through /proc: far too slow)
  [ "$1" = D ] && for p in $DPIDS; do
    out+=$(awk 'FNR == 1 && FILENAME ~ /\/stat$/ { sub(/^.*\) /, ""); split($0, f, " "); tk += f[12] + f[13] }
      /^voluntary_ctxt_switches/ { v += $2 } /^nonvoluntary_ctxt_switches/ { nv += $2 }
      END { printf " %d %d %d", tk, v, nv }' /proc/"$p"/task/*/stat /proc/"$p"/task/*/status 2> /dev/null)
  done
  echo "$out"
}
sampler() { # sampler FILE: a C line every 0.2 s (and the two D lines for rbd) until killed
  exec 9<> "$W/tick" # a fifo nobody writes: read -t on it is a sleep without a fork
  local phase=0 d1=0 d2=0 now
  while :; do
    now=${EPOCHREALTIME/./} # µs
    if [ -n "$DPIDS" ]; then
      if [ $phase = 0 ] && compgen -G "$W/start.*" > /dev/null; then
        phase=1 d1=$((now + RAMP * 1000000 + 400000)) d2=$((now + (RAMP + RT) * 1000000 - 500000))
      fi
      if [ $phase = 1 ] && [ "$now" -ge $d1 ]; then snap D >> "$1"; phase=2
      elif [ $phase = 2 ] && [ "$now" -ge $d2 ]; then snap D >> "$1"; phase=3
      fi
    fi
    snap C >> "$1"
    read -r -t 0.2 -u 9 _
  done
}
mkfifo "$W/tick"
mtimes() { local f; for f in "$@"; do [ -e "$f" ] && stat -c %.6Y "$f"; done; }

# run_wl SYSTEM WORKLOAD REP: one fio run and its samples
run_wl() {
  local sys=$1 wl=$2 rep=$3 args json smp t0 t1 target
  args=$(wl_args "$wl") || { log "unknown workload $wl"; return; }
  # the device with libaio and O_DIRECT, or an NBD socket with fio's nbd engine (libnbd)
  target="--filename=$DEV --ioengine=libaio --direct=1"
  [ -n "$URI" ] && target="--ioengine=nbd --uri=$URI"
  json=$OUT/fio/$sys.$wl.r$rep.json
  smp=samples/$sys.$wl.r$rep.txt
  sync; echo 3 > /proc/sys/vm/drop_caches; set_sched
  rm -f "$W"/start.* "$W"/end.*
  sampler "$OUT/$smp" & local sp=$!
  # shellcheck disable=SC2086
  timeout $((RT + RAMP + 120)) fio --name="$wl" $target --time_based \
    --runtime="$RT" --ramp_time="$RAMP" --clocksource=clock_gettime --group_reporting --randrepeat=0 --norandommap $args \
    --exec_prerun="touch $W/start.\$\$" --exec_postrun="touch $W/end.\$\$" \
    --output-format=json --output="$json" > "$W/fio.err" 2>&1
  local rc=$?
  kill $sp; wait $sp 2> /dev/null
  [ $rc = 0 ] || log "  fio rc=$rc: $(tail -2 "$W/fio.err" | tr '\n' ' ')"
  t0=$(mtimes "$W"/start.* | sort -n | tail -1) # the last job to start
  t1=$(mtimes "$W"/end.* | sort -n | head -1)   # the first job to end
  printf '{"system":"%s","workload":"%s","rep":%d,"fio_rc":%d,"device":"%s","fio_json":"fio/%s","fio_args":"%s","samples":"%s","job_start":%s,"job_end":%s,"daemons":"%s"}\n' \
    "$sys" "$wl" "$rep" $rc "$DEV" "${json##*/}" "$(echo $args)" "$smp" "${t0:-0}" "${t1:-0}" "${DPIDS:+rbdi rbdt}" >> "$OUT/runs.jsonl"
  log "  $sys $wl rep $rep: $(grep -o '"iops" : [0-9.]*' "$json" 2>/dev/null | awk '{s+=$3} END {printf "%.0f IOPS", s}')"
}

T0=$(date +%s)
printf '{"mode":"%s","kernel":"%s","cpus":%d,"mem_kb":%d,"reps":%d,"runtime_s":%d,"ramp_s":%d,"ram_mb":%d,"systems":"%s","workloads":"%s","clk_tck":%d,"fio":"%s","nbd_server":"%s","rbd_commit":"%s","rbd_version":"%s","date":"%s"}\n' \
  "$MODE" "$(uname -r)" "$(nproc)" "$(awk '/MemTotal/{print $2}' /proc/meminfo)" "$REPS" "$RT" "$RAMP" "$RAM_MB" "$SYSTEMS" "$WORKLOADS" \
  "$(getconf CLK_TCK)" "$(fio --version)" "$(nbd-server -V 2>&1 | head -1 | grep -o '[0-9.]*$')" \
  "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)" "$("$BIN/rbdi" --version 2>/dev/null | head -1)" "$(date -u +%FT%TZ)" > "$OUT/meta.json"
log "block benchmark ($MODE): $(uname -r), $(nproc) cpus; $RAM_MB MiB brd; ${RT} s runs (+${RAMP} s ramp), $REPS rep(s)"
log "systems: $SYSTEMS; workloads: $WORKLOADS"
set -- $SYSTEMS; NSYS=$#
for rep in $(seq 1 "$REPS"); do
  # rotate the order by one each repetition
  order=$(echo $SYSTEMS | tr ' ' '\n' | awk -v k=$(( (rep - 1) % NSYS )) '{a[NR-1]=$0} END {for (i=0;i<NR;i++) print a[(i+k)%NR]}')
  for sys in $order; do
    DEV= URI= DPIDS= REASON=
    log "== rep $rep: $sys"
    status=ok
    if ! "setup_$sys"; then status=setup-failed
    elif ! verify; then status=verify-failed
    fi
    [ $status = ok ] && log "  $DEV verified ($([ -n "$URI" ] && echo "NBD socket" || basename "$(realpath "$DEV")"))" || log "  $status: $REASON"
    printf '{"system":"%s","rep":%d,"status":"%s","reason":"%s","device":"%s"}\n' "$sys" "$rep" $status \
      "$(echo "$REASON" | tr -d '"\\' | tr '\n\t' '  ')" "$DEV" >> "$OUT/systems.jsonl"
    if [ $status = ok ]; then
      for wl in $WORKLOADS; do run_wl "$sys" "$wl" "$rep"; done
    fi
    "teardown_$sys"
  done
done
log "block benchmark done in $(( $(date +%s) - T0 )) s"
rm -rf "$W"
exit 0
