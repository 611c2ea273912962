#!/bin/bash
# ab-run.sh: host side of ab.sh. Builds the binaries of git revision REV (default
# HEAD~1) into bench/bin/ab-a and of
# the work tree into bench/bin/ab-b, boots one guest and compares them.
#   bench/ab-run.sh [REV]        env: as ab.sh (AB_*), passed into the guest
set -eu
cd "$(dirname "$0")/.."
REV=${1:-HEAD~1}
GO=${GO:-go}; command -v "$GO" >/dev/null || GO=/usr/local/go/bin/go
A=$PWD/bench/bin/ab-a B=$PWD/bench/bin/ab-b
rm -rf "$A" "$B"; mkdir -p "$A" "$B" bench/results
tmp=$(mktemp -d); trap 'git worktree remove --force "$tmp/a" >/dev/null 2>&1; rm -rf "$tmp"' EXIT
git worktree add -q --detach "$tmp/a" "$REV"
(cd "$tmp/a" && CGO_ENABLED=1 "$GO" build -trimpath -o "$A/" ./cmd/...)
CGO_ENABLED=1 "$GO" build -trimpath -o "$B/" ./cmd/...
stem=ab-$(date +%Y%m%d-%H%M%S)
echo "ab: A = $REV ($(git rev-parse --short "$REV")), B = work tree; output in bench/results/$stem.log"
VM_ENV="AB_REPS AB_DUR AB_ADDR AB_DEV AB_WORKLOADS AB_ARGS_A AB_ARGS_B AB_ENV_A AB_ENV_B AB_ARGS_C AB_ARGS_D AB_ENV_C AB_ENV_D" \
  test/vm/vm.sh run "$PWD/bench/ab.sh" "$A" "$B" /tmp/ab.jsonl 2>&1 | tee "bench/results/$stem.log"
