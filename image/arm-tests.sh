#!/usr/bin/env bash
# The relay's unit tests built for the boards and run under qemu user-mode
# emulation, in the cached chroot of image/arm-build.sh: relay-core's tests
# and the appliance's unit tests, release profile (so the dependencies of
# the release build are reused). Prints pass/fail counts and times per
# board. Not part of CI: the first test build of a board takes longer than
# CI's budget allows (figures in docs/appliance.md).
#
#   image/arm-tests.sh [aarch64|armv7|all]   (default all)
#
# Needs root, as image/arm-build.sh does.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
boards=("${1:-all}")
[[ ${1:-all} == all ]] && boards=(aarch64 armv7)
summary=()
rc=0
for b in "${boards[@]}"; do
    log=$(mktemp)
    start=$(date +%s)
    brc=0
    "$HERE/arm-build.sh" test "$b" 2>&1 | tee "$log" || brc=$?
    took=$(($(date +%s) - start))
    passed=$(awk '/^test result:/ {s += $4} END {print s + 0}' "$log")
    failed=$(awk '/^test result:/ {s += $6} END {print s + 0}' "$log")
    summary+=("$(printf '%-8s %4s passed %3s failed  %5ss (build and run)%s' "$b" "$passed" "$failed" "$took" "$([[ $brc == 0 ]] || echo "  FAILED ($brc)")")")
    [[ $brc == 0 ]] || rc=$brc
    rm -f "$log"
done
echo "== ARM unit tests under qemu =="
printf '%s\n' "${summary[@]}"
exit "$rc"
