#!/usr/bin/env bash
# Builds and tests the relay for the ARM boards without Docker: Debian's own
# Rust toolchain and ARM standard libraries in a debootstrap'd chroot, the
# ARM binaries run under qemu user-mode emulation.
#
#   image/arm-build.sh prepare              make (or reuse) the cached chroot
#   image/arm-build.sh build [aarch64|armv7|all]   release build, --locked
#   image/arm-build.sh test  [aarch64|armv7]       relay-core + appliance unit tests under qemu
#   image/arm-build.sh smoke [aarch64|armv7]       run the built relay under qemu, probe it, SIGTERM it
#   image/arm-build.sh check-msrv           native build with the chroot's rustc (1.85)
#   image/arm-build.sh shell                a shell in the chroot, tree mounted at /src
#
# Environment:
#   PP_ARM_CACHE    cache root (default /var/cache/patchpilot-relay)
#   PP_ARM_TARGET   cargo target dir for the chroot's builds (default $PP_ARM_CACHE/arm-target)
#   PP_DEBIAN_MIRROR  Debian mirror; default: the one the host's apt uses
#   PP_DEBIAN_SUITE   default trixie
#
# The chroot lives outside the repo, keyed on the suite and the package list,
# so CI on the same machine reuses it. Nothing here needs binfmt_misc: the
# runners call qemu explicitly.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PP_ARM_CACHE:-/var/cache/patchpilot-relay}
SUITE=${PP_DEBIAN_SUITE:-trixie}
ARM_TARGET=${PP_ARM_TARGET:-$CACHE/arm-target}
PACKAGES=(
    rustc cargo ca-certificates curl procps
    libstd-rust-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    libstd-rust-dev:armhf gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
    qemu-user
)
KEY=$(printf '%s\n' "$SUITE" "${PACKAGES[@]}" | sha256sum | cut -c1-12)
CHROOT=$CACHE/arm-chroot/$SUITE-$KEY
MOUNTS=()

log() { printf '[arm-build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The mirror the host's apt reads, from deb822 .sources or one-line lists.
# Missing files are normal (a host may have only one of the two forms).
host_mirror() {
    if [[ -n ${PP_DEBIAN_MIRROR:-} ]]; then
        echo "$PP_DEBIAN_MIRROR"
        return
    fi
    local files=() f uri=""
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] && files+=("$f")
    done
    for f in "${files[@]}"; do
        case $f in
        *.sources)
            uri=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' "$f" |
                grep -v -- '-security' | grep -m1 '/debian/\?$' || true) ;;
        *)
            uri=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' "$f" |
                grep -v -- '-security' | grep -m1 '/debian/\?$' || true) ;;
        esac
        [[ -n $uri ]] && break
    done
    [[ -n $uri ]] || die "no Debian mirror in the host's apt sources; set PP_DEBIAN_MIRROR"
    echo "${uri%/}"
}

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, chroot, mounts)"; }

host_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [[ ${#missing[@]} -eq 0 ]] && return
    log "installing host tools: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
}

in_chroot() { chroot "$CHROOT" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

prepare() {
    need_root
    if [[ -e $CHROOT/.ready ]]; then
        log "chroot cached: $CHROOT"
        return
    fi
    host_tools
    local mirror tmp=$CHROOT.partial
    mirror=$(host_mirror)
    log "making the $SUITE chroot from $mirror (key $KEY)"
    rm -rf "$tmp"
    mkdir -p "$(dirname "$CHROOT")"
    debootstrap --variant=minbase "$SUITE" "$tmp" "$mirror" >"$CACHE/debootstrap.log" 2>&1 ||
        { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
    CHROOT=$tmp
    cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
    mount_basics
    log "installing the toolchain for both boards"
    in_chroot dpkg --add-architecture arm64
    in_chroot dpkg --add-architecture armhf
    in_chroot apt-get update -qq
    in_chroot sh -c "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${PACKAGES[*]} >/dev/null"
    in_chroot apt-get clean
    unmount_all
    touch "$CHROOT/.ready"
    mv "$tmp" "${tmp%.partial}"
    CHROOT=${tmp%.partial}
    log "chroot ready: $CHROOT ($(du -shx "$CHROOT" | cut -f1))"
}

bind() {
    local src=$1 dst=$CHROOT$2
    mkdir -p "$dst"
    mountpoint -q "$dst" && umount -l "$dst"
    mount --bind "$src" "$dst"
    MOUNTS+=("$dst")
}

mount_basics() {
    trap unmount_all EXIT
    bind /proc /proc
    bind /sys /sys
    bind /dev /dev
    bind /dev/pts /dev/pts
}

unmount_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" 2>/dev/null || true
    done
    MOUNTS=()
}

# Mounts the source tree and the caches, and takes the chroot's lock so that
# two runs never share one chroot at the same time.
enter() {
    need_root
    [[ -e $CHROOT/.ready ]] || prepare
    exec 9>"$CHROOT.lock"
    flock 9
    mount_basics
    mkdir -p "$ARM_TARGET" "$CACHE/arm-cargo-home"
    bind "$REPO" /src
    bind "$ARM_TARGET" /target
    bind "$CACHE/arm-cargo-home" /cargo-home
    # The shared real data beside the clone (../shared), which some tests
    # read through ../../shared from their crate: /src/../shared = /shared.
    if [[ -d $REPO/../shared ]]; then
        bind "$(realpath "$REPO/../shared")" /shared
        mount -o remount,bind,ro "$CHROOT/shared"
    fi
    cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
    if [[ -r /etc/ssl/certs/ca-certificates.crt ]]; then
        cp /etc/ssl/certs/ca-certificates.crt "$CHROOT/etc/ssl/host-ca.crt"
    fi
}

cargo_in_chroot() {
    local cainfo=/etc/ssl/certs/ca-certificates.crt
    [[ -e $CHROOT/etc/ssl/host-ca.crt ]] && cainfo=/etc/ssl/host-ca.crt
    in_chroot sh -c 'cd /src && exec "$@"' sh env \
        CARGO_HOME=/cargo-home CARGO_TARGET_DIR=/target CARGO_HTTP_CAINFO=$cainfo \
        CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" CARGO_TERM_COLOR=never \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
        CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc \
        CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm -L /usr/arm-linux-gnueabihf" \
        "$@"
}

triple() {
    case ${1:-aarch64} in
    aarch64 | arm64) echo aarch64-unknown-linux-gnu ;;
    armv7 | armhf) echo armv7-unknown-linux-gnueabihf ;;
    *) die "unknown board target '$1' (aarch64 or armv7)" ;;
    esac
}

qemu_for() {
    case $1 in
    aarch64-*) echo "qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
    armv7-*) echo "qemu-arm -L /usr/arm-linux-gnueabihf" ;;
    esac
}

build() {
    local boards=("${1:-aarch64}") t
    [[ ${1:-} == all ]] && boards=(aarch64 armv7)
    enter
    for b in "${boards[@]}"; do
        t=$(triple "$b")
        log "release build for $t"
        cargo_in_chroot cargo build --locked --release --target "$t" -p appliance --bin patchpilot-relay
        log "built $ARM_TARGET/$t/release/patchpilot-relay ($(stat -c %s "$ARM_TARGET/$t/release/patchpilot-relay") bytes)"
    done
}

unit_tests() {
    local t
    t=$(triple "${1:-aarch64}")
    enter
    # The black-box suites (tests/, appliance/tests/) start the relay binary
    # themselves, which an ARM test cannot do without binfmt_misc; the smoke
    # path covers the binary instead.
    log "relay-core tests and appliance unit tests for $t under qemu"
    # One invocation for both packages, so that dependencies are built with
    # the same features as the release build and reused from it.
    cargo_in_chroot cargo test --locked --release --no-fail-fast --target "$t" -p relay-core -p appliance --lib --bins
}

smoke() {
    local t
    t=$(triple "${1:-aarch64}")
    enter
    [[ -x $ARM_TARGET/$t/release/patchpilot-relay ]] || die "build $t first"
    log "smoke test of the $t relay under $(qemu_for "$t" | cut -d' ' -f1)"
    in_chroot env QEMU="$(qemu_for "$t")" BIN="/target/$t/release/patchpilot-relay" \
        bash /src/image/smoke.sh
}

check_msrv() {
    enter
    log "native build with $(in_chroot rustc --version)"
    cargo_in_chroot cargo build --locked --workspace --all-targets
}

main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
    prepare) prepare ;;
    build) build "$@" ;;
    test) unit_tests "$@" ;;
    smoke) smoke "$@" ;;
    check-msrv) check_msrv ;;
    shell) enter && in_chroot env TERM="${TERM:-xterm}" CARGO_HOME=/cargo-home CARGO_TARGET_DIR=/target bash -c 'cd /src && exec bash' ;;
    chroot-path) echo "$CHROOT" ;;
    mirror) host_mirror ;;
    *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 64 ;;
    esac
}

main "$@"
