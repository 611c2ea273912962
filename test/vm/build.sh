#!/bin/bash
# build.sh: everything the guest needs, cached under test/vm/cache (git-ignored).
#  1. Debian's stock kernel package (linux-image-amd64's dependency), fetched with
#     `apt-get download` and unpacked with dpkg -x (nothing is installed in /boot).
#  2. siw (soft-iWARP), rtrs and rnbd, built as out-of-tree modules from Debian's own
#     linux-source package against the matching linux-headers (Debian builds the
#     kernel without them).
#  3. A busybox initramfs that mounts the host root read-only over 9p with a tmpfs
#     overlay and hands over to stage2.sh.
# Idempotent: a second run only checks. --force rebuilds modules and initramfs.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${RBD_VM_CACHE:-$HERE/cache}
FORCE=0
for a in "$@"; do case $a in --force) FORCE=1;; *) echo "usage: $0 [--force]" >&2; exit 2;; esac; done
for t in qemu-system-x86_64 busybox cpio depmod modprobe modinfo gcc-12 make xz; do
  command -v $t >/dev/null || { echo "vm build: missing $t (run: make deps)" >&2; exit 1; }
done
mkdir -p "$CACHE/debs"
log() { echo "vm build: $*" >&2; }

# ---- 1. kernel
KPKG=${VM_KPKG:-}
if [ -z "$KPKG" ] && [ -f "$CACHE/kpkg" ] && [ $FORCE = 0 ]; then KPKG=$(cat "$CACHE/kpkg"); fi
if [ -z "$KPKG" ]; then
  KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
  if [ -z "$KPKG" ]; then
    timeout 600 apt-get update -q >/dev/null
    KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
  fi
fi
[ -n "$KPKG" ] || { log "cannot resolve linux-image-amd64 (apt-get update?)"; exit 1; }
echo "$KPKG" > "$CACHE/kpkg"
KVER=${KPKG#linux-image-}
dl() { # dl PKG[=VER]...: apt-get download into cache/debs unless present
  local need= p n
  for p in "$@"; do n=${p%%=*}; ls "$CACHE/debs/${n}_"*.deb >/dev/null 2>&1 || need="$need $p"; done
  [ -z "$need" ] && return 0
  log "downloading$need"
  (cd "$CACHE/debs" && timeout 900 apt-get download -q $need 2>&1 | grep -v "couldn't be accessed by user '_apt'" >&2) || true
  for p in "$@"; do n=${p%%=*}; ls "$CACHE/debs/${n}_"*.deb >/dev/null 2>&1 || { log "download of $n failed"; exit 1; }; done
}
dl "$KPKG"
KDEB=$(ls "$CACHE/debs/${KPKG}_"*.deb | head -1)
PV=$(basename "$KDEB" | cut -d_ -f2)           # e.g. 6.1.192-2
KDIR=$CACHE/kernel
if [ $FORCE = 1 ] || [ ! -f "$KDIR/boot/vmlinuz-$KVER" ]; then
  log "unpacking $KPKG $PV"
  rm -rf "$KDIR"; mkdir -p "$KDIR"
  dpkg -x "$KDEB" "$KDIR"
  depmod -b "$KDIR" "$KVER"
fi
ln -sfn "kernel/boot/vmlinuz-$KVER" "$CACHE/vmlinuz"
echo "$KVER" > "$CACHE/kver"

# ---- 2. out-of-tree modules: siw, rtrs, rnbd
FLAVOUR=${KVER##*-}; ABI=${KVER%-"$FLAVOUR"}; SER=$(echo "$KVER" | cut -d. -f1-2)
KM=$CACHE/kmod
B=$KM/build
KOS="$B/siw/siw.ko $B/rtrs/rtrs-core.ko $B/rtrs/rtrs-client.ko $B/rtrs/rtrs-server.ko $B/rnbd/rnbd-client.ko $B/rnbd/rnbd-server.ko"
built=1; for k in $KOS; do [ -f "$k" ] || built=0; done
[ $FORCE = 1 ] && built=0
if [ $built = 0 ]; then
  dl "linux-source-$SER=$PV" "linux-headers-$KVER=$PV" "linux-headers-$ABI-common=$PV" "linux-kbuild-$SER=$PV"
  ROOT=$KM/root; HDR=$ROOT/usr/src/linux-headers-$KVER; COMMON=$ROOT/usr/src/linux-headers-$ABI-common
  if [ ! -f "$HDR/.rbd-ok" ]; then
    rm -rf "$ROOT"; mkdir -p "$ROOT"
    for n in linux-headers-$KVER linux-headers-$ABI-common linux-kbuild-$SER; do dpkg -x "$CACHE/debs/${n}_${PV}_"*.deb "$ROOT"; done
    # the flavour Makefile includes the common one by absolute path: point it at our copy
    sed -i "s|^include /usr/src/linux-headers-$ABI-common/Makefile|include $COMMON/Makefile|" "$HDR/Makefile"
    grep -q "^include $COMMON/Makefile" "$HDR/Makefile"
    touch "$HDR/.rbd-ok"
  fi
  SRC=$KM/src/linux-source-$SER
  if [ ! -f "$SRC/.rbd-ok" ]; then
    log "extracting siw/rtrs/rnbd sources from linux-source-$SER"
    rm -rf "$KM/src" "$KM/srcdeb"; mkdir -p "$KM/src"
    dpkg -x "$CACHE/debs/linux-source-${SER}_${PV}_all.deb" "$KM/srcdeb"
    timeout 600 tar -xJf "$KM/srcdeb/usr/src/linux-source-$SER.tar.xz" -C "$KM/src" --wildcards \
      "linux-source-$SER/Makefile" "linux-source-$SER/drivers/infiniband/sw/siw" \
      "linux-source-$SER/drivers/infiniband/ulp/rtrs" "linux-source-$SER/drivers/block/rnbd"
    rm -rf "$KM/srcdeb"
    touch "$SRC/.rbd-ok"
  fi
  rm -rf "$B"; mkdir -p "$B"
  cp -a "$SRC/drivers/infiniband/sw/siw" "$B/siw"
  cp -a "$SRC/drivers/infiniband/ulp/rtrs" "$B/rtrs"
  cp -a "$SRC/drivers/block/rnbd" "$B/rnbd"
  log "building siw, rtrs, rnbd for $KVER"
  kmake() { timeout 900 make -s -C "$HDR" -j"$(nproc)" "$@" >"$B/build.log" 2>&1 || { tail -30 "$B/build.log" >&2; exit 1; }; }
  kmake M="$B/siw" CONFIG_RDMA_SIW=m modules
  kmake M="$B/rtrs" CONFIG_INFINIBAND_RTRS=m CONFIG_INFINIBAND_RTRS_CLIENT=m CONFIG_INFINIBAND_RTRS_SERVER=m modules
  kmake M="$B/rnbd" CONFIG_BLK_DEV_RNBD=y CONFIG_BLK_DEV_RNBD_CLIENT=m CONFIG_BLK_DEV_RNBD_SERVER=m \
    KCFLAGS="-I$B/rtrs" KBUILD_EXTRA_SYMBOLS="$B/rtrs/Module.symvers" modules
  want=$(modinfo -F vermagic "$KDIR/lib/modules/$KVER/kernel/drivers/infiniband/sw/rxe/rdma_rxe.ko")
  for k in $KOS; do
    [ "$(modinfo -F vermagic "$k")" = "$want" ] || { log "vermagic mismatch: $k"; exit 1; }
  done
  rm -rf "$KM/root/usr/src/linux-source-$SER"
fi
ln -sfn kmod/build "$CACHE/modules-extra"

# ---- 3. initramfs (rebuilt when init.sh or stage2.sh change)
IRF=$CACHE/initramfs.cpio.gz
if [ $FORCE = 1 ] || [ ! -f "$IRF" ] || [ "$HERE/init.sh" -nt "$IRF" ] || [ "$HERE/stage2.sh" -nt "$IRF" ] || [ "$KDEB" -nt "$IRF" ]; then
  IR=$CACHE/initramfs.d
  rm -rf "$IR"; mkdir -p "$IR"/{bin,dev,proc,sys,mnt,lib/modules,newroot,host,rw}
  cp "$(command -v busybox)" "$IR/bin/busybox"
  : > "$IR/modules.list"
  for m in virtio_pci 9pnet_virtio 9p overlay; do
    modprobe -d "$KDIR" -S "$KVER" --show-depends $m | awk '$1=="insmod"{print $2}' | while read -r p; do
      b=$(basename "$p"); grep -qx "$b" "$IR/modules.list" && continue
      cp "$p" "$IR/lib/modules/$b"; echo "$b" >> "$IR/modules.list"
    done
  done
  install -m 755 "$HERE/init.sh" "$IR/init"
  install -m 755 "$HERE/stage2.sh" "$IR/stage2.sh"
  (cd "$IR" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > "$IRF.tmp" && mv "$IRF.tmp" "$IRF"
  rm -rf "$IR"
  log "kernel $KVER, initramfs $(du -h "$IRF" | cut -f1), siw/rtrs/rnbd built"
fi
