#!/bin/bash
# e2e.sh: the guest suite (make e2e). Boots one guest, sets it up (guest-setup.sh),
# then runs the guest test packages with `go test -exec go-exec.sh` twice: once over
# soft-RoCE (rxe0, 10.77.0.1) and once over soft-iWARP (siw0, 10.79.0.1).
# Test binaries are built on the host and run in the guest unchanged.
#   test/vm/e2e.sh [go test flags...]     e.g. -run TestName -v
# Then a second guest boots systemd as PID 1 (test/systemd/boot.sh).
# Env: E2E_PKGS (packages), E2E_TRANSPORTS ("rxe siw"), E2E_TIMEOUT (go test -timeout per package, 30m),
#      E2E_SYSTEMD=0|1 (the systemd boot; by default only without flags and E2E_PKGS)
set -u
cd "$(dirname "$0")/../.."
VM=test/vm/vm.sh
PKGS=${E2E_PKGS:-./internal/verbs ./internal/nbd ./test/e2e/...}
T0=$(date +%s)
dir=$($VM start) || { [ -n "$dir" ] && $VM stop "$dir"; exit 125; }
trap '$VM stop "$dir" >/dev/null 2>&1' INT TERM
rc=0
$VM exec "$dir" "$PWD/test/vm/guest-setup.sh" || rc=$?
if [ $rc = 0 ]; then
  for t in ${E2E_TRANSPORTS:-rxe siw}; do
    case $t in
      rxe) desc="soft-RoCE: rxe0 on dummy0, 10.77.0.1"; addr=10.77.0.1; dev=rxe0 ;;
      siw) desc="soft-iWARP: siw0 on dummy1, 10.79.0.1"; addr=10.79.0.1; dev=siw0 ;;
      *) echo "e2e: unknown transport $t" >&2; rc=2; continue ;;
    esac
    echo "== e2e over $t ($desc)"
    # -v for each test's time (the slowest are listed after the run, to keep
    # the suite inside its budget); what passed is shown by name only
    log=$(mktemp)
    RBD_VM_DIR=$dir RBD_TEST_TRANSPORT=$t RBD_TEST_ADDR=$addr RBD_TEST_RDMA_DEV=$dev RBD_TEST_BIN=$PWD/bin \
      go test -v -count=1 -p 1 -timeout "${E2E_TIMEOUT:-30m}" -exec "$PWD/test/vm/go-exec.sh" "$@" $PKGS > "$log" 2>&1 || rc=1
    if [[ " $* " == *" -v "* ]] || grep -qE '^(--- FAIL|FAIL|panic:)' "$log"; then
      cat "$log" # all of it: the failing tests' logs are among the rest
    else
      grep -E '^(ok|FAIL|---|PASS)|^\s+--- (FAIL|SKIP)' "$log" | grep -vE '^\s*--- PASS' || true
    fi
    echo "-- slowest over $t:"
    sed -nE 's/^--- (PASS|FAIL): ([^ ]+) \(([0-9.]+)s\)$/\3 \2/p' "$log" | sort -rn | head -12 | awk '{printf "   %7.1fs %s\n", $1, $2}'
    rm -f "$log"
  done
fi
$VM stop "$dir" || rc=${rc/#0/1}
# a guest of its own with systemd as PID 1: the units, a persistent device and
# its fstab mount at boot, systemctl stop/start (test/systemd/)
# (by default only for the whole suite: not with go test flags or E2E_PKGS)
sd=1; { [ $# -gt 0 ] || [ -n "${E2E_PKGS:-}" ]; } && sd=0
if [ "${E2E_SYSTEMD:-$sd}" = 1 ]; then
  echo "== systemd boot (test/systemd/boot.sh)"
  test/systemd/boot.sh || rc=1
fi
echo "e2e: $([ $rc = 0 ] && echo PASS || echo FAIL) on ${E2E_TRANSPORTS:-rxe siw} in $(( $(date +%s) - T0 ))s"
exit $rc
