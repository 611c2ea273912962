#!/bin/bash
# go-exec.sh: `go test -exec` wrapper that runs a test binary inside the guest that
# e2e.sh started (RBD_VM_DIR), so go test prints its own summary lines.
[ -n "${RBD_VM_DIR:-}" ] || { echo "go-exec.sh: RBD_VM_DIR is not set (start a guest with test/vm/vm.sh start)" >&2; exit 125; }
exec "$(dirname "$0")/vm.sh" exec "$RBD_VM_DIR" "$@"
