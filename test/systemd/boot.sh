#!/bin/bash
# boot.sh: the real-systemd check (make e2e runs it). Boots a guest with systemd
# as PID 1 after prep.sh has installed rbd and set up a persistent device and
# its fstab mount, then runs check.sh in it.
set -u
cd "$(dirname "$0")/../.."
VM_INIT=systemd VM_PREP=$PWD/test/systemd/prep.sh RBD_VM_SETUP=0 test/vm/vm.sh run "$PWD/test/systemd/check.sh"
