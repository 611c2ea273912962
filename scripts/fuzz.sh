#!/bin/bash
# fuzz.sh (make fuzz): run every native fuzz target of the module for a
# bounded number of runs each, one after the other, so that CI fuzzes each
# decoder a little on every run (make unit: FUZZTIME=5000x). A plain go test
# already replays each target's seeds and its committed corpus
# (testdata/fuzz/FuzzX/ beside the test); this adds new inputs.
#
#   scripts/fuzz.sh [--save] [PACKAGE...]     (default: every package)
#
# Env: FUZZTIME (per target, as go test's -fuzztime: a count such as 5000x,
# the default 50000x, or a duration such as 30s), FUZZPARALLEL (workers,
# default 1:
# CI's two cores stay with the rest of the suite). A failing input is written
# to testdata/fuzz/ by go test itself, and the script exits 1. --save copies
# up to FUZZKEEP (default 40) of the inputs each target's fuzzing found
# interesting, from Go's fuzz cache into its testdata/fuzz/FuzzX/, so that
# they become part of the committed corpus.
#
# Counts, not durations, by default: with a duration, Go 1.26's fuzzing
# coordinator can report "context deadline exceeded" as a failure of the
# target when the time runs out under load, with no failing input
# (go.dev/issue/75804, fixed in Go 1.27). New interesting inputs are
# minimized for at most 200 runs each, not for the default 60 s, which stalls
# a short run.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}; command -v "$GO" >/dev/null || GO=/usr/local/go/bin/go
save=0
if [ "${1:-}" = --save ]; then save=1; shift; fi
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || mapfile -t pkgs < <("$GO" list ./...)
time=${FUZZTIME:-50000x}
par=${FUZZPARALLEL:-1}
keep=${FUZZKEEP:-40}
cache=$("$GO" env GOCACHE)/fuzz
n=0 fail=0
for pkg in "${pkgs[@]}"; do
	dir=$("$GO" list -f '{{.Dir}}' "$pkg")
	targets=$(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u) || true
	for f in $targets; do
		n=$((n + 1))
		if ! out=$("$GO" test -run '^$' -fuzz "^$f\$" -fuzztime "$time" -fuzzminimizetime 200x -parallel "$par" "$pkg" 2>&1); then
			echo "fuzz: $pkg $f FAILED:"; echo "$out" | tail -30
			fail=$((fail + 1))
			continue
		fi
		echo "fuzz: $pkg $f: $(echo "$out" | grep -o 'execs: [0-9]*' | tail -1 | sed 's/execs: //') execs, $(echo "$out" | grep -o '^ok.*' | awk '{print $NF}')"
		if [ $save = 1 ] && [ -d "$cache/$pkg/$f" ]; then
			mkdir -p "$dir/testdata/fuzz/$f"
			ls -t "$cache/$pkg/$f" | head -n "$keep" | while read -r c; do cp -n "$cache/$pkg/$f/$c" "$dir/testdata/fuzz/$f/"; done
		fi
	done
done
echo "fuzz: $n targets, -fuzztime $time each: $fail failed"
[ $fail = 0 ]
