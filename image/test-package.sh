#!/usr/bin/env bash
# Installs the relay's Debian package into a scratch Debian root and checks
# it: maintainer scripts, files and modes, `systemd-analyze verify` of both
# units, `systemd-analyze security` of the relay's unit (fails above
# PP_MAX_EXPOSURE), and a real run of the first-boot step.
#
#   image/test-package.sh [BINARY]   (default: the workspace's release or
#                                     debug build, built if missing)
#
# The scratch root is an overlay on a cached minimal trixie root with
# systemd (under PP_ARM_CACHE, default /var/cache/patchpilot-relay), so
# every run starts clean and only the first one downloads. Needs root.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
CACHE=${PP_ARM_CACHE:-/var/cache/patchpilot-relay}
SUITE=${PP_DEBIAN_SUITE:-trixie}
MAX_EXPOSURE=${PP_MAX_EXPOSURE:-3.0}
PACKAGES="systemd,passwd,util-linux,login,ca-certificates"
KEY=$(echo "$SUITE $PACKAGES" | sha256sum | cut -c1-12)
BASE=$CACHE/unit-root/$SUITE-$KEY
UNIT=patchpilot-relay.service

log() { printf '[test-package %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
[[ $(id -u) -eq 0 ]] || fail "must run as root"

binary() {
    local target=${CARGO_TARGET_DIR:-$REPO/target}
    if [[ -n ${1:-} ]]; then echo "$1"; return; fi
    for b in "$target/release/patchpilot-relay" "$target/debug/patchpilot-relay"; do
        [[ -x $b ]] && { echo "$b"; return; }
    done
    (cd "$REPO" && cargo build -p appliance --bin patchpilot-relay >&2)
    echo "$target/debug/patchpilot-relay"
}

base_root() {
    [[ -e $BASE/.ready ]] && return
    local mirror
    mirror=$("$HERE/arm-build.sh" mirror)
    log "making the $SUITE root with systemd from $mirror"
    rm -rf "$BASE.partial"
    mkdir -p "$(dirname "$BASE")"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$BASE.partial" "$mirror" \
        >"$CACHE/unit-root.log" 2>&1 || { tail -20 "$CACHE/unit-root.log" >&2; fail "debootstrap"; }
    chroot "$BASE.partial" apt-get clean
    touch "$BASE.partial/.ready"
    mv "$BASE.partial" "$BASE"
}

work=$(mktemp -d)
root=$work/root
mounts=()
cleanup() {
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

BIN=$(binary "${1:-}")
base_root
deb=$("$HERE/build-deb.sh" "$BIN" amd64 "$work")
log "package: $(basename "$deb") ($(stat -c %s "$deb") bytes)"

mkdir -p "$root" "$work/upper" "$work/ovl"
mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$work/upper,workdir=$work/ovl" "$root"
mounts+=("$root")
for m in proc sys dev; do
    mount --bind "/$m" "$root/$m"
    mounts+=("$root/$m")
done
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

cp "$deb" "$root/tmp/relay.deb"
in_root dpkg -i /tmp/relay.deb >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i"; }
log "installed with dpkg -i"

in_root getent passwd patchpilot-relay | grep -q ':/usr/sbin/nologin$' || fail "no system user"
dd=$(in_root stat -c '%a %U' /var/lib/patchpilot-relay)
[[ $dd == "700 patchpilot-relay" ]] || fail "data directory mode/owner: $dd"
[[ -L $root/etc/systemd/system/multi-user.target.wants/$UNIT ]] || fail "$UNIT not enabled"
[[ -L $root/etc/systemd/system/multi-user.target.wants/patchpilot-relay-firstboot.service ]] || fail "first-boot unit not enabled"
grep -qx /etc/patchpilot-relay/relay.toml "$root/var/lib/dpkg/info/patchpilot-relay.conffiles" || fail "config is not a conffile"
log "user, data directory, enabled units and conffile in place"

out=$(in_root systemd-analyze verify --man=no /usr/lib/systemd/system/$UNIT /usr/lib/systemd/system/patchpilot-relay-firstboot.service 2>&1) ||
    { echo "$out" >&2; fail "systemd-analyze verify"; }
# Ordering against units this minimal root lacks is not a fault of ours.
if echo "$out" | grep -v -e 'network-online.target' -e '^$' | grep -q .; then
    echo "$out" >&2
    fail "systemd-analyze verify reported problems"
fi
log "systemd-analyze verify: clean ($(in_root systemd-analyze --version | head -1))"

in_root systemd-analyze security --offline=true --no-pager /usr/lib/systemd/system/$UNIT >"$work/security.txt" 2>&1 || true
score=$(sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p' "$work/security.txt")
[[ -n $score ]] || { cat "$work/security.txt" >&2; fail "no exposure score"; }
log "systemd-analyze security: exposure $score ($(grep -o 'exposure level.*' "$work/security.txt" | sed 's/.*: //'))"
awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' || fail "exposure $score is above $MAX_EXPOSURE"
if [[ -n ${PP_SECURITY_REPORT:-} ]]; then cp "$work/security.txt" "$PP_SECURITY_REPORT"; fi

# The first-boot step, for real, as the unit would run it (no relay running).
in_root /usr/lib/patchpilot-relay/first-boot.sh >"$work/console.txt" 2>"$work/firstboot.err" ||
    { cat "$work/firstboot.err" >&2; fail "first-boot.sh"; }
secrets=$root/root/patchpilot-relay-first-boot.txt
[[ $(in_root stat -c '%a %U' /root/patchpilot-relay-first-boot.txt) == "600 root" ]] || fail "secrets file is not root-only"
grep -q '^admin API key:     ppk_' "$secrets" || fail "no admin key in the secrets file"
grep -q '^enrollment token:  ..' "$secrets" || fail "no enrollment token in the secrets file"
cmp -s "$secrets" "$work/console.txt" || fail "the console did not show the secrets file"
if grep -q -e ppk_ -e "$(sed -n 's/^enrollment token:  //p' "$secrets")" "$work/firstboot.err"; then
    fail "a secret reached the log"
fi
[[ $(in_root stat -c %U /var/lib/patchpilot-relay/store/db) == patchpilot-relay ]] || fail "store not owned by the service user"
[[ $(in_root stat -c '%a %U' /var/lib/patchpilot-relay/tls/relay-key.pem) == "600 patchpilot-relay" ]] || fail "TLS key missing or not private to the service user"
grep -q "sha256 fingerprint: " "$secrets" || fail "the TLS fingerprint is not shown with the secrets"
in_root /usr/lib/patchpilot-relay/first-boot.sh >/dev/null 2>&1 || fail "a second first-boot run failed"
[[ $(grep -c ppk_ "$secrets") == 1 ]] || fail "a second first-boot run changed the secrets"
log "first boot: store, TLS certificate, token and admin key created as the service user; secrets 0600 root, shown once"
log "package test passed"
