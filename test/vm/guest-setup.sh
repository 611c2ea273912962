#!/bin/bash
# guest-setup.sh: runs inside the guest (vm.sh does it once per boot). Loads the
# kernel pieces rbd needs and makes the two RDMA transports the tests use:
#   rxe0  soft-RoCE   on dummy0  10.77.0.1/24   (modprobe rdma_rxe)
#   siw0  soft-iWARP  on dummy1  10.79.0.1/24   (insmod of our out-of-tree siw.ko)
# plus brd (/dev/ram0../dev/ram3, 256 MiB each) and nbd. rdma_cm does not work over
# 127.0.0.1 with either transport, hence the dummy interfaces (MTU 9000 -> 4096 IB MTU).
set -eu
[ "${VM_GUEST:-0}" = 1 ] || { echo "guest-setup.sh: run inside the guest (test/vm/vm.sh)" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
EXTRA=${RBD_VM_CACHE:-$HERE/cache}/modules-extra
for m in ib_core ib_uverbs rdma_ucm rdma_cm iw_cm libcrc32c rdma_rxe dummy nbd; do modprobe $m; done
lsmod | grep -q '^brd ' || modprobe brd rd_nr=4 rd_size=262144 max_part=0
lsmod | grep -q '^siw ' || insmod "$EXTRA/siw/siw.ko" 2>/dev/null
lsmod | grep -q '^siw ' || { echo "guest-setup: siw.ko did not load" >&2; exit 1; }
mkif() { # mkif NAME ADDR
  ip link show "$1" >/dev/null 2>&1 || ip link add "$1" type dummy
  ip addr show dev "$1" | grep -q " $2/" || ip addr add "$2/24" dev "$1"
  ip link set "$1" mtu 9000 up
}
mkif dummy0 10.77.0.1
mkif dummy1 10.79.0.1
[ -e /sys/class/infiniband/rxe0 ] || rdma link add rxe0 type rxe netdev dummy0
[ -e /sys/class/infiniband/siw0 ] || rdma link add siw0 type siw netdev dummy1
for d in rxe0 siw0; do
  for i in $(seq 1 50); do grep -q ACTIVE /sys/class/infiniband/$d/ports/1/state 2>/dev/null && break; sleep 0.1; done
done
echo 3 > /proc/sys/vm/drop_caches
echo "guest-setup: $(uname -r); rxe0 on dummy0 10.77.0.1 ($(cat /sys/class/infiniband/rxe0/ports/1/state)), siw0 on dummy1 10.79.0.1 ($(cat /sys/class/infiniband/siw0/ports/1/state)); brd $(ls /dev/ram* | tr '\n' ' ')"
