#!/bin/bash
# check.sh: runs in the guest that prep.sh prepared, once systemd (PID 1) has
# reached multi-user.target (boot.sh). It checks what a storage engineer
# expects of the units after a boot: both daemons active (READY=1 received,
# watchdog armed and pinged), the persistent device mapped and its fstab
# mount mounted at boot, I/O through it; then that `systemctl stop` and
# `start` of rbdi and rbdt behave as rbdi(8) and rbdt(8) say.
set -u
fail=0
bad() { echo "FAIL: $*"; fail=1; }
ok() { echo "ok: $*"; }
prop() { systemctl show -P "$2" "$1"; }
journal() { journalctl -b --no-pager -o short-monotonic -u rbdt -u rbdi -u mnt-rbd.mount -u mnt-rbd1.mount | tail -n "${1:-40}"; }
trap 'if [ $fail != 0 ]; then echo "-- journal of the units:"; journal 80; echo "-- failed units:"; systemctl --failed --no-pager; fi' EXIT

[ "$(cat /proc/1/comm)" = systemd ] && ok "PID 1 is systemd ($(systemctl --version | head -1))" || { bad "PID 1 is $(cat /proc/1/comm)"; exit 1; }
echo "system state: $(systemctl is-system-running)"
for u in rbdt rbdi; do
  st="$(prop $u ActiveState)/$(prop $u SubState)"
  [ "$st" = active/running ] && ok "$u.service $st (Type=$(prop $u Type): READY=1 arrived)" || bad "$u.service is $st"
  w=$(prop $u WatchdogUSec)
  [ "$w" = 30s ] && ok "$u watchdog $w" || bad "$u WatchdogUSec=$w, want 30s"
done
# STATUS= lines: rbdi's devices, rbdt's sessions
st=$(prop rbdi StatusText)
[ "$st" = "2 devices: 2 connected" ] && ok "rbdi status: $st" || bad "rbdi StatusText '$st', want '2 devices: 2 connected'"
st=$(prop rbdt StatusText)
[ "$st" = "2 sessions on 2 exports" ] && ok "rbdt status: $st" || bad "rbdt StatusText '$st', want '2 sessions on 2 exports'"
# the watchdog is pinged: its timestamp moves (rbdi pings every 15 s)
w0=$(prop rbdi WatchdogTimestampMonotonic)
sleep 17
w1=$(prop rbdi WatchdogTimestampMonotonic)
[ -n "$w0" ] && [ "$w1" != "$w0" ] && [ "$w1" != 0 ] && ok "rbdi pings the watchdog ($w0 -> $w1)" || bad "rbdi watchdog timestamp did not move: $w0 -> $w1"

rbdctl -l
for n in 0 1; do
  [ -b /dev/rbdi$n ] && ok "/dev/rbdi$n mapped at boot -> $(readlink /dev/rbdi$n)" || bad "no /dev/rbdi$n after boot"
done
src=$(findmnt -n -o SOURCE /mnt/rbd)
if [ -n "$src" ] && [ "$(realpath "$src")" = "$(realpath /dev/rbdi0)" ]; then ok "/mnt/rbd mounted at boot from $src"; else bad "/mnt/rbd not mounted from /dev/rbdi0 (source '$src')"; fi
st=$(prop mnt-rbd.mount ActiveState)
[ "$st" = active ] && ok "mnt-rbd.mount active" || bad "mnt-rbd.mount is $st"
# the fstab line naming /dev/rbdi1: systemd waits for dev-rbdi1.device, which
# exists because udev claims the name (60-rbd.rules)
st=$(prop dev-rbdi1.device ActiveState)
[ "$st" = active ] && ok "dev-rbdi1.device $st (udev knows /dev/rbdi1)" || bad "dev-rbdi1.device is $st: udev does not know /dev/rbdi1"
src=$(findmnt -n -o SOURCE /mnt/rbd1)
if [ -n "$src" ] && [ "$(realpath "$src")" = "$(realpath /dev/rbdi1)" ]; then ok "/mnt/rbd1 (fstab: /dev/rbdi1) mounted at boot"; else bad "/mnt/rbd1 not mounted from /dev/rbdi1 (source '$src', mnt-rbd1.mount $(prop mnt-rbd1.mount ActiveState))"; fi

mountpoint -q /mnt/rbd || { bad "no filesystem on /mnt/rbd: the rest cannot run"; exit 1; }
# I/O through the mount, read back after dropping the page cache
head -c 4M /dev/urandom > /tmp/pattern
cp /tmp/pattern /mnt/rbd/pattern && sync
echo 3 > /proc/sys/vm/drop_caches
cmp /tmp/pattern /mnt/rbd/pattern && ok "4 MiB written and read back through /mnt/rbd" || bad "data read back through /mnt/rbd differs"

# systemctl stop rbdi: the mount requires rbdi (x-systemd.requires), so
# systemd unmounts it first; rbdi leaves the device for the next start
# (rbdi(8): "systemctl stop rbdi leaves them waiting for the next start")
systemctl stop rbdi
findmnt /mnt/rbd > /dev/null && bad "/mnt/rbd still mounted after systemctl stop rbdi" || ok "systemctl stop rbdi unmounted /mnt/rbd first"
findmnt /mnt/rbd1 > /dev/null && bad "/mnt/rbd1 still mounted after systemctl stop rbdi" || ok "and /mnt/rbd1"
st=$(prop rbdi ActiveState); r=$(prop rbdi Result); code=$(prop rbdi ExecMainStatus)
[ "$st" = inactive ] && [ "$r" = success ] && ok "rbdi stopped cleanly (exit $code)" || bad "rbdi after stop: $st, result $r, exit $code"
[ -e /dev/rbdi0 ] && [ -e /dev/rbdi1 ] && ok "/dev/rbdi0 and /dev/rbdi1 left for the next rbdi" || bad "a device is gone after systemctl stop rbdi"
systemctl start rbdi
[ "$(prop rbdi ActiveState)" = active ] && ok "rbdi started again" || bad "rbdi did not start again: $(prop rbdi ActiveState)"
rbdctl -l
journalctl -b --no-pager -u rbdi | grep -qi adopt && ok "the new rbdi adopted the device" || bad "no adoption in rbdi's journal"
systemctl start mnt-rbd.mount
mountpoint -q /mnt/rbd || { bad "mnt-rbd.mount did not mount again after the rbdi restart"; exit 1; }
cmp /tmp/pattern /mnt/rbd/pattern && ok "the data is there after the restart" || bad "data differs after the rbdi restart"

# systemctl stop rbdt with the device mounted: rbdt drains and closes its
# sessions; the device waits (reconnecting) and carries on once rbdt is back
systemctl stop rbdt
st=$(prop rbdt ActiveState); r=$(prop rbdt Result)
[ "$st" = inactive ] && [ "$r" = success ] && ok "rbdt stopped cleanly" || bad "rbdt after stop: $st, result $r"
( if dd if=/mnt/rbd/pattern of=/tmp/pattern.back bs=1M iflag=direct status=none; then echo ok; else echo failed; fi > /tmp/dd.tmp; mv /tmp/dd.tmp /tmp/dd.done ) &
sleep 3
systemctl start rbdt
[ "$(prop rbdt ActiveState)" = active ] && ok "rbdt started again" || bad "rbdt did not start again"
for i in $(seq 120); do [ -e /tmp/dd.done ] && break; sleep 1; done
case $(cat /tmp/dd.done 2>/dev/null) in
  ok) cmp -s /tmp/pattern /tmp/pattern.back && ok "a read issued while rbdt was down completed, with the right data, once it was back" || bad "the read issued while rbdt was down returned other data" ;;
  failed) bad "the read issued while rbdt was down failed" ;;
  *) bad "the read issued while rbdt was down did not complete in 120 s" ;;
esac
echo 3 > /proc/sys/vm/drop_caches
cmp /tmp/pattern /mnt/rbd/pattern && ok "the data is intact after the rbdt restart" || bad "data differs after the rbdt restart"

journal 30
[ $fail = 0 ] && echo "systemd boot: PASS" || echo "systemd boot: FAIL"
exit $fail
