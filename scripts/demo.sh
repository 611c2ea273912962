#!/bin/bash
# make demo: the seed's scenario end to end. Where this host's kernel has soft-RoCE,
# nbd and brd it runs here; otherwise (as on the development and CI machines) in the
# project's qemu guest (test/vm), which boots Debian's stock kernel with them.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build
if [ "$(id -u)" = 0 ] && modprobe -n -q rdma_rxe 2>/dev/null && modprobe -n -q nbd 2>/dev/null && modprobe -n -q brd 2>/dev/null; then
  echo "demo: this kernel has rdma_rxe, nbd and brd: running natively"
  exec scripts/demo-scenario.sh --native
fi
echo "demo: this host's kernel has no soft-RoCE/NBD modules ($(uname -r)); running in the guest (Debian's kernel under qemu)"
make -s vm
exec test/vm/vm.sh run "$PWD/scripts/demo-scenario.sh"
