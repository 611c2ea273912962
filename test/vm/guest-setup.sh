#!/bin/bash
# guest-setup.sh: runs inside the guest (vm.sh does it once per boot). Loads the
# kernel pieces rbd needs and makes the two RDMA transports the tests use:
#   rxe0  soft-RoCE   on dummy0  10.77.0.1/24   (modprobe rdma_rxe)
#   siw0  soft-iWARP  on dummy1  10.79.0.1/24   (insmod of our out-of-tree siw.ko)
#   rxe1 / rxe2  soft-RoCE on a veth wire: veth0 10.78.0.1 <-> veth1 10.78.0.2, so
#         that a link outage can be made (tc netem loss on both ends); traffic
#         between the two local addresses is routed out the veth by per-peer
#         tables for locally generated packets (the local rule moves to pref 20)
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
mkwire() { # the veth wire; a guest without it only skips the link-outage test
  modprobe veth && modprobe sch_netem || return 1
  if ! ip link show veth0 >/dev/null 2>&1; then
    ip link add veth0 type veth peer name veth1 || return 1
    ip addr add 10.78.0.1/24 dev veth0 && ip addr add 10.78.0.2/24 dev veth1 || return 1
    ip link set veth0 mtu 9000 up && ip link set veth1 mtu 9000 up || return 1
    for i in all veth0 veth1; do sysctl -qw net.ipv4.conf.$i.rp_filter=0 net.ipv4.conf.$i.accept_local=1; done
    ip route add 10.78.0.2/32 dev veth0 src 10.78.0.1 table 100 || return 1
    ip route add 10.78.0.1/32 dev veth1 src 10.78.0.2 table 101 || return 1
    ip rule add pref 10 iif lo to 10.78.0.2 lookup 100 && ip rule add pref 11 iif lo to 10.78.0.1 lookup 101 || return 1
    ip rule add pref 20 lookup local && ip rule del pref 0 lookup local || return 1
  fi
  [ -e /sys/class/infiniband/rxe1 ] || rdma link add rxe1 type rxe netdev veth0 || return 1
  [ -e /sys/class/infiniband/rxe2 ] || rdma link add rxe2 type rxe netdev veth1
}
mkwire || echo "guest-setup: no veth wire (rxe1/rxe2): the link-outage test will skip" >&2
[ -e /sys/class/infiniband/siw0 ] || rdma link add siw0 type siw netdev dummy1
for d in rxe0 siw0 rxe1 rxe2; do
  [ -e /sys/class/infiniband/$d ] || continue
  for i in $(seq 1 50); do grep -q ACTIVE /sys/class/infiniband/$d/ports/1/state 2>/dev/null && break; sleep 0.1; done
done
echo 3 > /proc/sys/vm/drop_caches
echo "guest-setup: $(uname -r); rxe0 on dummy0 10.77.0.1 ($(cat /sys/class/infiniband/rxe0/ports/1/state)), siw0 on dummy1 10.79.0.1 ($(cat /sys/class/infiniband/siw0/ports/1/state)); rxe1/rxe2 on veth0/veth1 10.78.0.1/.2 ($(cat /sys/class/infiniband/rxe1/ports/1/state 2>/dev/null || echo none)); brd $(ls /dev/ram* | tr '\n' ' ')"
