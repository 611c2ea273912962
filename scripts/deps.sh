#!/bin/bash
# deps.sh: install every Debian package that rbd's build, tests, demo and
# benchmarks need. Idempotent and quiet when everything is already there.
# prometheus is there for its promtool: packaging's tests check and unit-test
# the alert rules with it (they skip, saying so, without it).
set -euo pipefail
PKGS="gcc gcc-12 libc6-dev make pkg-config git ca-certificates xz-utils
libibverbs-dev librdmacm-dev rdma-core ibverbs-providers ibverbs-utils rdmacm-utils perftest
qemu-system-x86 busybox-static kmod cpio gzip iproute2 e2fsprogs util-linux
fio nbd-client nbd-server nvme-cli gnuplot-nox systemd procps curl groff-base man-db libnbd-bin qemu-utils
prometheus"
missing=
for p in $PKGS; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "deps: missing:$missing" >&2
  echo "deps: run as root to install them: sudo make deps" >&2
  exit 1
fi
echo "deps: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
timeout 600 apt-get update -q >/dev/null
timeout 1200 apt-get install -y -q --no-install-recommends $missing >/dev/null
echo "deps: done"
