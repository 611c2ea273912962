#!/bin/bash
# vm.sh: rbd's guest rig. Boots Debian's stock kernel (build.sh) under qemu with the
# host's root filesystem as the guest's root (9p read-only + tmpfs overlay), so
# binaries built on the host run inside unchanged, and runs commands in it as root.
#
#   vm.sh run CMD [ARG...]    boot, set up the guest (guest-setup.sh), run CMD,
#                             stream its output, power off; exit code = CMD's
#   vm.sh start               boot a guest that serves commands; prints its folder
#   vm.sh exec DIR CMD [ARG...]  run CMD in that guest (cwd and RBD_*/VM_ENV vars kept)
#   vm.sh stop DIR            power it off (kernel log kept under logs/ if anything failed)
#
# No network to the outside (-nic none): every address used lives inside the guest.
# Exit codes: CMD's own; 125 when the guest died or never answered.
# Env: VM_MEM (4G) VM_SMP (2) VM_TIMEOUT (3600 s, whole guest) VM_ACCEL (tcg|kvm)
#      VM_ENV="NAME..." extra variables to pass in   VM_KEEP=1 keep the session folder
#      VM_RW="DIR..." host folders the guest may write (mounted at the same path)
#      VM_CONSOLE=1 echo the kernel console to stderr   RBD_VM_SETUP=0 skip guest-setup.sh in `run`
#      VM_BOOT_TIMEOUT (600 s: TCG boots slowly when other guests share the cores)
#      VM_INIT=systemd boot systemd as PID 1 (multi-user.target), the agent as its unit;
#        VM_PREP=SCRIPT runs in the guest before systemd starts (what must be there at boot)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${RBD_VM_CACHE:-$HERE/cache}
LOGS=${RBD_VM_LOGS:-$HERE/logs}
die() { echo "vm: $*" >&2; exit 125; }

start() {
  "$HERE/build.sh" || die "build failed"
  local out; out=$(mktemp -d "${TMPDIR:-/tmp}/rbd-vm.XXXXXXXX") || die mktemp
  mkdir -p "$out/q"
  cat > "$out/agent.sh" <<'AGENT'
# runs inside the guest as stage 2's job: serve /vmout/q/*.job until /vmout/q/stop
Q=/vmout/q
echo "guest up: $(uname -r), $(nproc) cpus"
: > /vmout/ready
while [ ! -e $Q/stop ]; do
  for j in $Q/*.job; do
    [ -e "$j" ] || continue
    n=${j%.job}; mv "$j" "$n.sh"
    setsid bash "$n.sh" > "$n.out" 2>&1 < /dev/null &
    pid=$!
    while kill -0 $pid 2>/dev/null; do
      if [ -e "$n.kill" ]; then kill -TERM -- -$pid 2>/dev/null; sleep 3; kill -KILL -- -$pid 2>/dev/null; rm -f "$n.kill"; fi
      sleep 0.1
    done
    wait $pid; echo $? > "$n.rc.tmp"; mv "$n.rc.tmp" "$n.rc"
  done
  sleep 0.1
done
exit 0
AGENT
  local acc mem=${VM_MEM:-4G} smp=${VM_SMP:-2} tmo=${VM_TIMEOUT:-3600}
  case ${VM_ACCEL:-tcg} in
    kvm) acc=(-accel kvm -cpu host) ;;
    *)   acc=(-accel tcg,thread=multi,tb-size=512 -cpu max) ;;
  esac
  local rw=() i=0 d
  for d in ${VM_RW:-}; do # host folders mounted read-write at the same path
    d=$(realpath "$d") || die "VM_RW: no folder $d"
    echo "$d" > "$out/rw$i"
    rw+=(-fsdev local,id=rw$i,path="$d",security_model=none,multidevs=remap -device virtio-9p-pci,fsdev=rw$i,mount_tag=rw$i)
    i=$((i+1))
  done
  : > "$out/console.log"
  if [ "${VM_INIT:-}" = systemd ]; then
    printf '%s' "${VM_PREP:+$(realpath "$VM_PREP")}" > "$out/systemd" || die "VM_PREP: no file $VM_PREP"
  fi
  ( exec setsid timeout -k 5 "$tmo" qemu-system-x86_64 -nodefaults -no-user-config -machine q35 "${acc[@]}" \
      -smp "$smp" -m "$mem" -bios /usr/share/qemu/qboot.rom \
      -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initramfs.cpio.gz" \
      -append "console=ttyS0 loglevel=4 panic=-1 oops=panic mitigations=off tsc=reliable ${VM_APPEND:-}" \
      -display none -vga none -nic none -no-reboot \
      -chardev file,id=con,path="$out/console.log" -serial chardev:con \
      -chardev file,id=job,path="$out/agent.log" -serial chardev:job \
      -fsdev local,id=fs0,path=/,security_model=none,readonly=on,multidevs=remap \
      -device virtio-9p-pci,fsdev=fs0,mount_tag=hostroot \
      -fsdev local,id=fs1,path="$out",security_model=none \
      -device virtio-9p-pci,fsdev=fs1,mount_tag=vmout \
      -fsdev local,id=fs2,path="$CACHE/kernel/lib/modules",security_model=none,readonly=on \
      -device virtio-9p-pci,fsdev=fs2,mount_tag=modules "${rw[@]}" \
      < /dev/null > "$out/qemu.log" 2>&1; echo $? > "$out/qemu.rc" ) &
  echo $! > "$out/qemu.pid"
  [ "${VM_CONSOLE:-0}" = 1 ] && { tail -n +1 -f --pid="$(cat "$out/qemu.pid")" "$out/console.log" >&2 & }
  local i
  for i in $(seq 1 $(( ${VM_BOOT_TIMEOUT:-600} * 10 ))); do
    [ -e "$out/ready" ] && { echo "$out"; return 0; }
    alive "$out" || break
    sleep 0.1
  done
  echo "vm: guest did not come up" >&2
  keep_log "$out"; echo "$out"; return 125
}

alive() { [ ! -e "$1/qemu.rc" ] && kill -0 "$(cat "$1/qemu.pid" 2>/dev/null)" 2>/dev/null; }

# exec DIR CMD...: queue a job, stream its output, return its exit code
execjob() {
  local out=$1; shift
  [ -d "$out/q" ] || die "no guest session in $out"
  alive "$out" || die "guest in $out is not running"
  local n; n=$(date +%s%N)-$$-$RANDOM
  {
    echo "cd $(printf %q "$PWD") 2>/dev/null || cd /"
    echo "export VM_GUEST=1 PATH=$(printf %q "$PATH"):/usr/local/go/bin HOME=/root"
    local v
    for v in $(compgen -e | grep -E '^(RBD_|GO)') ${VM_ENV:-}; do [ -n "${!v+x}" ] && echo "export $v=$(printf %q "${!v}")"; done
    printf 'exec'; printf ' %q' "$@"; echo
  } > "$out/q/$n.tmp"
  mv "$out/q/$n.tmp" "$out/q/$n.job"
  trap 'touch "$out/q/$n.kill"' INT TERM
  ( while [ ! -e "$out/q/$n.rc" ] && alive "$out"; do sleep 0.1; done ) &
  local w=$!
  tail -c +1 -F --pid=$w "$out/q/$n.out" 2>/dev/null
  wait $w
  trap - INT TERM
  local rc=125
  [ -e "$out/q/$n.rc" ] && rc=$(cat "$out/q/$n.rc")
  if [ "$rc" = 125 ] && ! alive "$out"; then echo "vm: guest died during the job" >&2; fi
  [ "$rc" = 0 ] || : > "$out/failed"
  return "$rc"
}

keep_log() {
  local out=$1 f
  mkdir -p "$LOGS"
  f=$LOGS/kernel-$(date +%Y%m%d-%H%M%S)-$$.log
  if [ -s "$out/kernel.log" ]; then cp "$out/kernel.log" "$f"; else cp "$out/console.log" "$f" 2>/dev/null; fi
  { cat "$out/agent.log" 2>/dev/null | sed 's/^/agent: /' | tail -5; } >&2
  echo "vm: guest kernel log kept in $f; its tail:" >&2
  tail -n 40 "$f" >&2
}

stop() {
  local out=$1 i
  [ -d "$out/q" ] || die "no guest session in $out"
  : > "$out/q/stop"
  for i in $(seq 1 600); do alive "$out" || break; sleep 0.1; done
  alive "$out" && { echo "vm: guest did not power off; killing qemu" >&2; kill "$(cat "$out/qemu.pid")"; : > "$out/failed"; }
  wait 2>/dev/null
  [ -e "$out/rc" ] || : > "$out/failed"
  [ -e "$out/failed" ] && keep_log "$out"
  local rc=0; [ -e "$out/failed" ] && rc=1
  if [ "${VM_KEEP:-0}" = 1 ]; then echo "vm: kept $out" >&2; else rm -rf "$out"; fi
  return $rc
}

cmd=${1:-}; shift || true
case $cmd in
  start) start ;;
  exec)  [ $# -ge 2 ] || die "usage: vm.sh exec DIR CMD [ARG...]"; execjob "$@" ;;
  stop)  [ $# -eq 1 ] || die "usage: vm.sh stop DIR"; stop "$1" ;;
  run)
    [ $# -ge 1 ] || die "usage: vm.sh run CMD [ARG...]"
    T0=$(date +%s.%N)
    out=$(start) || { [ -n "$out" ] && stop "$out"; exit 125; }
    rc=0
    if [ "${RBD_VM_SETUP:-1}" = 1 ]; then execjob "$out" "$HERE/guest-setup.sh" >&2 || rc=$?; fi
    [ $rc = 0 ] && { execjob "$out" "$@"; rc=$?; }
    stop "$out" || true
    printf 'vm: rc=%s wall=%.1fs\n' "$rc" "$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')" >&2
    exit "$rc" ;;
  *) sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
