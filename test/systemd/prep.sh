#!/bin/bash
# prep.sh: runs in the guest before systemd boots (test/vm/vm.sh VM_INIT=systemd
# VM_PREP=...; see boot.sh): what an operator has in place before a reboot.
# The RDMA link and the RAM disks (test/vm/guest-setup.sh), `make install`
# of the host-built binaries, both daemons enabled, rbdt exporting /dev/ram1
# with an ext4 on it, rbdi mapping it as a persistent [[device]], and an
# fstab line mounting it at boot. check.sh then looks at what systemd made of
# it.
set -eux
cd "$(dirname "$0")/../.."
test/vm/guest-setup.sh
# the binaries were built on the host (make e2e builds them): GO=true keeps
# make install from building again under emulation
make install GO=true
mkfs.ext4 -q -F -U 5e1f3c2a-7d4b-4c1e-9a0f-2b3c4d5e6f70 /dev/ram1
mkfs.ext4 -q -F /dev/ram2
cat > /etc/rbd/rbdt.toml <<'TOML'
listen = ["10.77.0.1:65000"]
[[export]]
path = "/dev/ram1"
[[export]]
path = "/dev/ram2"
TOML
# mapped in this order: /dev/rbdi0, /dev/rbdi1
cat > /etc/rbd/rbdi.toml <<'TOML'
[[device]]
target = "10.77.0.1"
export = "/dev/ram1"
[[device]]
target = "10.77.0.1"
export = "/dev/ram2"
TOML
mkdir -p /mnt/rbd /mnt/rbd1
# the first by UUID, as rbdi(8) says; the second by its name, which systemd
# waits for only because udev knows the name (60-rbd.rules)
cat >> /etc/fstab <<'FSTAB'
UUID=5e1f3c2a-7d4b-4c1e-9a0f-2b3c4d5e6f70 /mnt/rbd ext4 _netdev,x-systemd.requires=rbdi.service,nofail 0 0
/dev/rbdi1 /mnt/rbd1 ext4 _netdev,x-systemd.requires=rbdi.service,nofail 0 0
FSTAB
systemctl enable rbdt.service rbdi.service
