#!/usr/bin/env bash
# Builds the arm64 root filesystem image that gets flashed: Debian trixie
# with systemd and the relay's package installed and enabled, as an ext4
# image file. Slow (every maintainer script runs under emulation), so CI
# does not run it.
#
#   image/build-rootfs.sh RELAY_ARM64_DEB OUT_DIR
#
# binfmt_misc is not mounted on these machines and the host's must not be
# changed, so the second stage runs in a user namespace with its own
# binfmt_misc instance (Linux 6.7+) where qemu-aarch64-static is
# registered; the host never sees it. The boot partition (raspi-firmware,
# linux-image-arm64) is not built here. Needs root.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEB=$(realpath "${1:?relay arm64 .deb}")
OUT=$(realpath -m "${2:?output folder}")
SUITE=${PP_DEBIAN_SUITE:-trixie}
INCLUDE=systemd-sysv,udev,kmod,iproute2,passwd,util-linux,login,ca-certificates
QEMU=$(command -v qemu-aarch64-static) || { echo "install qemu-user-static" >&2; exit 1; }

log() { printf '[rootfs %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
work=$(mktemp -d)
root=$work/root
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT"

t0=$(date +%s)
mirror=$("$HERE/arm-build.sh" mirror)
log "first stage (download and unpack, arm64) from $mirror"
debootstrap --arch=arm64 --foreign --variant=minbase --include="$INCLUDE" \
    "$SUITE" "$root" "$mirror" >"$work/stage1.log" 2>&1 || { tail -20 "$work/stage1.log" >&2; exit 1; }
install -m 0755 "$QEMU" "$root/usr/bin/qemu-aarch64-static"
cp "$DEB" "$root/tmp/relay.deb"
cp /etc/resolv.conf "$root/etc/resolv.conf"

# Runs inside the user namespace: its own binfmt_misc, then the second
# stage and the package install, all under emulation.
cat >"$work/inner.sh" <<INNER
set -euo pipefail
mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F' \
    >/proc/sys/fs/binfmt_misc/register
chroot "$root" /debootstrap/debootstrap --second-stage
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg -i /tmp/relay.deb
chroot "$root" apt-get clean
INNER
log "second stage and package install under qemu-aarch64 (private binfmt_misc)"
fifo=$work/go
mkfifo "$fifo"
unshare --user --mount --pid --fork bash -c "read -r _ <'$fifo'; exec bash '$work/inner.sh'" >"$work/stage2.log" 2>&1 &
ns=$!
sleep 0.5
echo "0 0 65536" >"/proc/$ns/uid_map"
echo "0 0 65536" >"/proc/$ns/gid_map"
echo go >"$fifo"
wait "$ns" || { tail -30 "$work/stage2.log" >&2; log "second stage failed"; exit 1; }

# The appliance's own settings, inside the image only.
echo pprelay >"$root/etc/hostname"
echo "LABEL=pprelay-root / ext4 defaults,noatime,commit=60 0 1" >"$root/etc/fstab"
mkdir -p "$root/etc/systemd/network"
cat >"$root/etc/systemd/network/50-lan.network" <<'NET'
[Match]
Name=eth0 end0
[Network]
DHCP=yes
NET
ln -sf /usr/lib/systemd/system/systemd-networkd.service \
    "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
rm -f "$root/usr/bin/qemu-aarch64-static" "$root/tmp/relay.deb" "$root/etc/resolv.conf"
[[ -e $root/usr/bin/patchpilot-relay ]] || { log "the relay is not installed"; exit 1; }
[[ -L $root/etc/systemd/system/multi-user.target.wants/patchpilot-relay.service ]] || { log "the relay is not enabled"; exit 1; }

used=$(du -sxm "$root" | cut -f1)
size=$((used + used / 4 + 64))
img=$OUT/patchpilot-relay-arm64-rootfs.ext4
rm -f "$img"
mkfs.ext4 -q -L pprelay-root -d "$root" "$img" "${size}M"
zstd -q -19 -T0 -f "$img" -o "$img.zst" 2>/dev/null || xz -T0 -k -f "$img"
log "image: $img (${size} MiB, $(du -m "$img" | cut -f1) MiB allocated), compressed $(ls -s --block-size=M "$img".* | head -1 | awk '{print $1}')"
log "rootfs built in $(($(date +%s) - t0)) s"
