#!/usr/bin/env bash
# CI's ARM step, Docker-free: the cached Debian chroot, aarch64 and armv7
# release builds with --locked, the smoke path under qemu-aarch64 and
# qemu-arm, and the Rust 1.85 floor checked with the chroot's native rustc.
# Prints how long each took. The unit tests under qemu are not here (their
# release test build is too slow for CI's budget): image/arm-tests.sh.
#
# The chroot, the cargo registry and the ARM target dir are cached under
# PP_ARM_CACHE (default /var/cache/patchpilot-relay), outside the repo, so a
# second run on the same machine skips the downloads and most compiling.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
declare -a TIMES=()
step() {
    local name=$1 start rc=0
    shift
    start=$(date +%s)
    "$@" || rc=$?
    TIMES+=("$(printf '%-34s %4ss%s' "$name" "$(($(date +%s) - start))" "$([[ $rc == 0 ]] || echo "  FAILED ($rc)")")")
    return "$rc"
}
report() {
    echo "== ARM CI timings =="
    printf '%s\n' "${TIMES[@]}"
    echo "total                              $(($(date +%s) - T0))s"
}
T0=$(date +%s)
trap report EXIT

step "chroot (cached if present)" "$HERE/arm-build.sh" prepare
step "aarch64 release build --locked" "$HERE/arm-build.sh" build aarch64
step "smoke path under qemu-aarch64" "$HERE/arm-build.sh" smoke aarch64
step "armv7 release build --locked" "$HERE/arm-build.sh" build armv7
step "smoke path under qemu-arm" "$HERE/arm-build.sh" smoke armv7
step "msrv: native rustc 1.85 build" "$HERE/arm-build.sh" check-msrv
