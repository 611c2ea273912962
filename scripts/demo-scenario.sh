#!/bin/bash
# demo-scenario.sh: the seed README's scenario, narrated. Runs as root where rdma_rxe,
# nbd and brd exist (the guest, or a native host with --native).
#   target: /dev/ram0 (brd), soft-RoCE on a dummy interface, rbdt
#   initiator: rbdi, rbdctl -n -> /dev/rbdi0, mkfs.ext4, mount, files, rbdctl -l, stats, rbdctl -r
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
B=$HERE/bin
ADDR=10.77.0.1
W=$(mktemp -d /tmp/rbd-demo.XXXXXX)
RUN=$W/run; mkdir -p $RUN
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }
cleanup() {
  set +e
  mountpoint -q $W/mnt && umount $W/mnt
  [ -n "${RBDI:-}" ] && kill $RBDI 2>/dev/null && wait $RBDI 2>/dev/null
  [ -n "${RBDT:-}" ] && kill $RBDT 2>/dev/null && wait $RBDT 2>/dev/null
  rm -rf $W
}
trap cleanup EXIT

if [ "${1:-}" = --native ]; then
  step "0. Native set-up: soft-RoCE on a dummy interface ($ADDR), brd, nbd"
  for m in rdma_ucm rdma_rxe dummy nbd; do modprobe $m; done
  lsmod | grep -q '^brd ' || modprobe brd rd_nr=4 rd_size=262144
  ip link show rbddemo0 >/dev/null 2>&1 || ip link add rbddemo0 type dummy
  ip addr add $ADDR/24 dev rbddemo0 2>/dev/null || true
  ip link set rbddemo0 mtu 9000 up
  rdma link show | grep -q 'netdev rbddemo0' || rdma link add rxedemo0 type rxe netdev rbddemo0
fi

step "1. The RDMA device (soft-RoCE, as the seed says: make sure rping works)"
show rdma link show
timeout 20 rping -s -a $ADDR -p 7999 -C 3 >/dev/null 2>&1 & sleep 0.5
show timeout 20 rping -c -a $ADDR -p 7999 -C 3 -v
wait

step "2. On the target: the RAM disk /dev/ram0 and rbdt exporting it"
show blockdev --getsize64 /dev/ram0
echo "\$ rbdt --listen $ADDR --export /dev/ram0 &"
$B/rbdt --listen $ADDR --export /dev/ram0 --control $RUN/rbdt.sock --metrics-addr 127.0.0.1:9465 > $W/rbdt.log 2>&1 & RBDT=$!
for i in $(seq 50); do [ -S $RUN/rbdt.sock ] && grep -q listening $W/rbdt.log && break; sleep 0.1; done
cat $W/rbdt.log

step "3. On the initiator: rbdi (the kernel NBD driver underneath)"
echo "\$ rbdi &"
$B/rbdi --control $RUN/rbdi.sock --metrics-addr 127.0.0.1:9466 > $W/rbdi.log 2>&1 & RBDI=$!
for i in $(seq 50); do [ -S $RUN/rbdi.sock ] && break; sleep 0.1; done
CTL="$B/rbdctl --socket $RUN/rbdi.sock --target-socket $RUN/rbdt.sock"

step "4. rbdctl -n -a <target-addr> -p 65000 -d /dev/ram0"
echo "\$ rbdctl -n -a $ADDR -p 65000 -d /dev/ram0"
DEV=$($CTL -n -a $ADDR -p 65000 -d /dev/ram0)
echo "$DEV"
show ls -l "$DEV"

step "5. Use it as a local disk: mkfs.ext4, mount, write and read back files"
show mkfs.ext4 -q "$DEV"
mkdir -p $W/mnt
show mount "$DEV" $W/mnt
show dd if=/dev/urandom of=$W/mnt/data.bin bs=1M count=16 status=none
echo "hello from the initiator over RDMA" > $W/mnt/hello.txt
show sync
(cd $W/mnt && sha256sum data.bin hello.txt | tee $W/sums)
show df -h $W/mnt
echo "\$ umount; mount again (cold read back through RDMA)"
umount $W/mnt; echo 3 > /proc/sys/vm/drop_caches; mount "$DEV" $W/mnt
(cd $W/mnt && show sha256sum -c $W/sums)
show cat $W/mnt/hello.txt

step "6. rbdctl -l (the devices; on the target host also its sessions)"
echo "\$ rbdctl -l"; $CTL -l

step "7. Stats: the device's (rbdctl -s) and Prometheus (curl :9466/metrics, :9465/metrics)"
echo "\$ rbdctl -s -d $DEV"; $CTL -s -d "$DEV"
echo "\$ curl -s 127.0.0.1:9466/metrics | grep rbd_ops_total"
curl -s 127.0.0.1:9466/metrics | grep '^rbd_ops_total' || true
echo "\$ curl -s 127.0.0.1:9465/metrics | grep 'rbd_bytes_total.*session=\"\"'"
curl -s 127.0.0.1:9465/metrics | grep '^rbd_bytes_total' | grep 'session=""' || true

step "8. rbdctl -r -d $DEV (refused while mounted; then for real)"
echo "\$ rbdctl -r -d $DEV"; $CTL -r -d "$DEV" || echo "(refused, as it should be)"
show umount $W/mnt
echo "\$ rbdctl -r -d $DEV"; $CTL -r -d "$DEV"
echo "\$ rbdctl -l"; $CTL -l
test ! -e "$DEV" && echo "$DEV is gone; the data stays on the target's /dev/ram0"

step "9. Done: the target's /dev/ram0 holds the filesystem"
kill $RBDT; wait $RBDT 2>/dev/null || true; RBDT=
show blkid /dev/ram0
echo; echo "demo: OK"
