#!/usr/bin/env bash
# Builds the arm64 root filesystem image that gets flashed: Debian trixie
# (minbase + systemd) with the relay's package installed and both of its
# units enabled, checked by running the first-boot step on a copy, and
# written as an ext4 image without mounting anything (mkfs.ext4 -d).
#
#   image/build-rootfs.sh RELAY_ARM64_DEB OUT_DIR
#
# Writes to OUT_DIR:
#   patchpilot-relay-arm64-rootfs.ext4(.zst)   the root filesystem, label pprelay-root
#   patchpilot-relay-arm64.img(.zst)           with PP_IMAGE_BOOT=1: an SD card
#                                              image, MBR, FAT boot partition with
#                                              Debian's raspi-firmware and
#                                              linux-image-arm64, then the root
#   first-boot-check.txt                       what the first-boot check saw
#
# Environment:
#   PP_ARM_CACHE     cache root (default /var/cache/patchpilot-relay)
#   PP_DEBIAN_SUITE  default trixie
#   PP_IMAGE_BOOT    1: add the Pi boot partition (kernel, firmware); default 0
#   PP_ZSTD_LEVEL    compression level of the .zst copies (default 10; 19 saves
#                    a further 12% for a release, at 15 times the time)
#   PP_IMAGE_MIRROR  the mirror the image's apt uses (default deb.debian.org);
#                    the build itself uses the host's (image/arm-build.sh mirror)
#
# Speed: the base root (debootstrap --foreign natively, then the host's dpkg
# installing it with only the maintainer scripts under qemu) is cached under
# $PP_ARM_CACHE/rootfs-base, keyed on the suite and the package list; a warm
# build only copies it, installs the relay's package under qemu, checks
# first boot and writes the image.
#
# binfmt_misc is not mounted on these machines and the host's must not be
# changed, so every step that runs arm64 code does it in a user namespace
# with its own binfmt_misc instance (Linux 6.7+) where qemu-aarch64 is
# registered; the host never sees it. Nothing is booted, nothing listens.
# Needs root.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEB=$(realpath "${1:?relay arm64 .deb}")
OUT=$(realpath -m "${2:?output folder}")
CACHE=${PP_ARM_CACHE:-/var/cache/patchpilot-relay}
SUITE=${PP_DEBIAN_SUITE:-trixie}
BOOT=${PP_IMAGE_BOOT:-0}
ZLEVEL=${PP_ZSTD_LEVEL:-10}
INCLUDE=systemd-sysv,udev,kmod,iproute2,passwd,util-linux,login,ca-certificates,systemd-timesyncd
BOOT_PACKAGES="linux-image-arm64 raspi-firmware"
KEY=$(echo "$SUITE $INCLUDE" | sha256sum | cut -c1-12)
BASE=$CACHE/rootfs-base/$SUITE-arm64-$KEY
NAME=patchpilot-relay-arm64
IMAGE_MIRROR=${PP_IMAGE_MIRROR:-http://deb.debian.org/debian}

log() { printf '[rootfs %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root"
# The emulator: the ARM build chroot's qemu 10 (static) when it is there,
# else the host's qemu-user-static.
QEMU=${PP_QEMU_AARCH64:-$("$HERE/arm-build.sh" chroot-path)/usr/bin/qemu-aarch64}
[[ -x $QEMU ]] || QEMU=$(command -v qemu-aarch64-static) || die "install qemu-user-static"
[[ -x $QEMU ]] || die "no qemu-aarch64 at $QEMU"
# arm64 ELF executables, as binfmt_misc matches them (qemu's own pattern).
ELF_MAGIC='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
ELF_MASK='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
for tool in debootstrap mkfs.ext4 zstd; do
    command -v "$tool" >/dev/null || die "install $tool"
done
if [[ $BOOT == 1 ]]; then
    for tool in mkfs.vfat mcopy sfdisk; do
        command -v "$tool" >/dev/null || die "install dosfstools, mtools and fdisk for PP_IMAGE_BOOT=1"
    done
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/pp-rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT"
t0=$(date +%s)

# Runs SCRIPT (bash, on the host's side of the chroot) in a new user, mount
# and pid namespace whose root is the host's root, with a binfmt_misc
# instance of its own where arm64 ELF files go to $QEMU (the
# F flag opens the interpreter now, so it works inside any chroot).
emulated() {
    local script=$1 logf=$2 fifo=$work/go.$RANDOM ns rc=0
    mkfifo "$fifo"
    {
        echo 'set -euo pipefail'
        echo 'mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc'
        echo "printf '%s' ':qemu-aarch64:M::$ELF_MAGIC:$ELF_MASK:$QEMU:F' >/proc/sys/fs/binfmt_misc/register"
        cat "$script"
    } >"$script.run"
    unshare --user --mount --pid --fork --kill-child bash -c "read -r _ <'$fifo'; exec bash '$script.run'" >"$logf" 2>&1 &
    ns=$!
    # Root inside is root outside (uids 0-65535 map to themselves), so files
    # keep their real owners; the capabilities stay inside the namespace.
    for _ in $(seq 1 50); do
        [[ -e /proc/$ns/uid_map ]] && [[ $(readlink "/proc/$ns/ns/user") != $(readlink /proc/self/ns/user) ]] && break
        sleep 0.1
    done
    echo "0 0 65536" >"/proc/$ns/uid_map"
    echo "0 0 65536" >"/proc/$ns/gid_map"
    echo go >"$fifo"
    wait "$ns" || rc=$?
    rm -f "$fifo"
    return "$rc"
}

# The base root: minbase + systemd, configured. Cached.
#
# debootstrap's own second stage runs dpkg itself under qemu, one package
# at a time, and that takes half an hour here (unpacking the 78 required
# packages alone took seven minutes). Instead the host's dpkg, native, does
# the unpacking with --root, and only the maintainer scripts, which dpkg
# runs chrooted into the new root, are emulated.
make_base() {
    if [[ -e $BASE/.ready ]]; then
        log "base root cached: $BASE"
        return
    fi
    local mirror tmp=$BASE.partial tb
    mirror=$("$HERE/arm-build.sh" mirror)
    mkdir -p "$(dirname "$BASE")"
    rm -rf "$tmp"
    tb=$(date +%s)
    log "base root: download and extract (debootstrap --foreign, native) from $mirror"
    debootstrap --arch=arm64 --foreign --variant=minbase --include="$INCLUDE" \
        "$SUITE" "$tmp" "$mirror" >"$work/stage1.log" 2>&1 ||
        { tail -20 "$work/stage1.log" >&2; die "debootstrap first stage failed"; }
    # Where debootstrap thinks it runs in a container it leaves /proc as a
    # symlink to /proc, a loop once chrooted; the second stage would have
    # replaced it.
    if [[ -L $tmp/proc ]]; then
        rm "$tmp/proc"
        mkdir -m 0555 "$tmp/proc"
    fi
    log "base root: install $(wc -w <"$tmp/debootstrap/required") required and $(wc -w <"$tmp/debootstrap/base") more packages (native dpkg, scripts under qemu)"
    cat >"$work/stage2.sh" <<STAGE2
R='$tmp'
debs() {
    local p
    for p in \$(cat "\$R/debootstrap/\$1"); do
        echo "\$R\$(awk -v p="\$p" '\$1 == p {print \$2}' "\$R/debootstrap/debpaths")"
    done
}
export DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
D=(dpkg --root="\$R" --force-architecture --force-depends --force-unsafe-io)
mount -t proc proc "\$R/proc"
"\${D[@]}" --unpack \$(debs required)
"\${D[@]}" --configure -a
"\${D[@]}" --install \$(debs base)
"\${D[@]}" --configure -a
umount "\$R/proc"
# The root's own dpkg judges (the host's would call every arm64 package foreign).
audit=\$(chroot "\$R" /usr/bin/dpkg --audit)
[[ -z \$audit ]] || { echo "\$audit"; exit 1; }
STAGE2
    emulated "$work/stage2.sh" "$work/stage2.log" ||
        { tail -30 "$work/stage2.log" >&2; die "installing the base packages failed"; }
    rm -rf "$tmp/debootstrap" "$tmp"/var/cache/apt/archives/*.deb
    touch "$tmp/.ready"
    mv "$tmp" "$BASE"
    log "base root ready in $(($(date +%s) - tb)) s ($(du -sxm "$BASE" | cut -f1) MiB)"
}

make_base
root=$work/root
log "copying the base root"
cp -a --reflink=auto "$BASE" "$root"
rm -f "$root/.ready"
cp "$DEB" "$root/tmp/relay.deb"
printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://security.debian.org/debian-security %s-security main\n' \
    "$IMAGE_MIRROR" "$SUITE" "$IMAGE_MIRROR" "$SUITE" "$SUITE" >"$root/etc/apt/sources.list"

# The package, the boot packages if asked for, and the appliance's settings.
cat >"$work/install.sh" <<INSTALL
in_root() { chroot '$root' /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "\$@"; }
mount -t proc proc '$root/proc'
in_root dpkg -i /tmp/relay.deb
if [[ $BOOT == 1 ]]; then
    cp /etc/resolv.conf '$root/etc/resolv.conf'
    mkdir -p '$root/boot/firmware'
    mv '$root/etc/apt/sources.list' '$root/etc/apt/sources.list.image'
    # raspi-firmware is in non-free-firmware; the image keeps it for updates.
    sed -i 's/ main\$/ main non-free-firmware/' '$root/etc/apt/sources.list.image'
    echo 'deb $(${HERE}/arm-build.sh mirror) $SUITE main non-free-firmware' >'$root/etc/apt/sources.list'
    in_root apt-get update -qq
    in_root apt-get install -y -qq --no-install-recommends $BOOT_PACKAGES
    in_root apt-get clean
    # In a chroot the firmware's kernel hook would take the build host's
    # root device for cmdline.txt: name the image's root, and run it again.
    echo 'ROOTPART="LABEL=pprelay-root"' >>'$root/etc/default/raspi-firmware'
    in_root env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware
    mv '$root/etc/apt/sources.list.image' '$root/etc/apt/sources.list'
    rm -rf '$root'/var/lib/apt/lists/*
fi
umount '$root/proc'
INSTALL
ti=$(date +%s)
log "installing $(basename "$DEB")$([[ $BOOT == 1 ]] && echo " and $BOOT_PACKAGES") under qemu-aarch64"
emulated "$work/install.sh" "$work/install.log" || { tail -30 "$work/install.log" >&2; die "package install failed"; }
log "installed in $(($(date +%s) - ti)) s"

echo pprelay >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tpprelay\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
{
    echo "LABEL=pprelay-root / ext4 defaults,noatime,commit=60 0 1"
    if [[ $BOOT == 1 ]]; then
        echo "LABEL=RASPIFIRM /boot/firmware vfat defaults,noatime,umask=0077 0 2"
    fi
} >"$root/etc/fstab"
mkdir -p "$root/etc/systemd/network"
cat >"$root/etc/systemd/network/50-lan.network" <<'NET'
[Match]
Name=eth0 end0
[Network]
DHCP=yes
NET
ln -sf /usr/lib/systemd/system/systemd-networkd.service \
    "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
# Every appliance gets its own machine id on first boot.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root/tmp/relay.deb" "$root/etc/resolv.conf"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log "$root"/var/log/apt/*
[[ -x $root/usr/bin/patchpilot-relay ]] || die "the relay is not installed"
for unit in patchpilot-relay patchpilot-relay-firstboot; do
    [[ -L $root/etc/systemd/system/multi-user.target.wants/$unit.service ]] || die "$unit.service is not enabled"
done

# First boot, for real, on a copy of the image's root: the unit's own
# script, as root, with the image's relay under qemu.
check=$work/check
log "checking first boot on a copy of the root"
cp -a --reflink=auto "$root" "$check"
cat >"$check/tmp/check.sh" <<'CHECK'
set -u
fail() { echo "FAIL: $*"; exit 1; }
S=/root/patchpilot-relay-first-boot.txt
D=/var/lib/patchpilot-relay
rc=0
/usr/lib/patchpilot-relay/first-boot.sh >/tmp/console.txt 2>/tmp/firstboot.err || rc=$?
[ $rc = 0 ] || { cat /tmp/firstboot.err; fail "first-boot.sh exited $rc"; }
sed 's/^/  stderr: /' /tmp/firstboot.err
echo "data directory: $(stat -c '%a %U:%G' $D)"
[ "$(stat -c '%a %U' $D)" = "700 patchpilot-relay" ] || fail "data directory is not 0700 patchpilot-relay"
[ "$(stat -c %U $D/store/db)" = patchpilot-relay ] || fail "store not owned by the service user"
echo "secrets file: $(stat -c '%a %U:%G' $S)"
[ "$(stat -c '%a %U' $S)" = "600 root" ] || fail "secrets file is not root-only"
grep -q '^admin API key:     ppk_' $S || fail "no admin key in the secrets file"
grep -q '^enrollment token:  ..' $S || fail "no enrollment token in the secrets file"
cmp -s $S /tmp/console.txt || fail "the console was not shown the secrets file"
t=$(sed -n 's/^enrollment token:  //p' $S)
if grep -q -e ppk_ -e "$t" /tmp/firstboot.err; then fail "a secret reached the log"; fi
echo "enrollment token file: $(stat -c '%a %U:%G' $D/enrollment-token)"
[ "$(stat -c '%a %U' $D/enrollment-token)" = "600 patchpilot-relay" ] || fail "enrollment token file is not 0600 patchpilot-relay"
[ "$(tr -d '\n' <$D/enrollment-token)" = "$t" ] || fail "the token shown is not the one in force"
/usr/bin/patchpilot-relay --config /etc/patchpilot-relay/relay.toml users list 2>/dev/null | sed 's/^/  users list: /'
/usr/lib/patchpilot-relay/first-boot.sh >/tmp/console2.txt 2>/tmp/firstboot2.err || fail "second run failed"
[ ! -s /tmp/console2.txt ] || fail "a second run showed something on the console"
[ "$(grep -c ppk_ $S)" = 1 ] || fail "a second run changed the secrets file"
echo "second run: $(cat /tmp/firstboot2.err)"
sed -e 's/ppk_.*/ppk_<redacted>/' -e 's/^\(enrollment token:  \).*/\1<redacted>/' /tmp/console.txt | sed 's/^/  console: /'
echo "first boot check passed"
CHECK
cat >"$work/check.sh" <<RUN
mount -t proc proc '$check/proc'
rc=0
chroot '$check' /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root /bin/bash /tmp/check.sh || rc=\$?
umount '$check/proc'
exit \$rc
RUN
emulated "$work/check.sh" "$OUT/first-boot-check.txt" || { cat "$OUT/first-boot-check.txt" >&2; die "first-boot check failed"; }
grep -q '^first boot check passed' "$OUT/first-boot-check.txt" || { cat "$OUT/first-boot-check.txt" >&2; die "first-boot check failed"; }
rm -rf "$check"
log "first boot: data directory 0700, enrollment token, admin key in a root-only file shown once (see $OUT/first-boot-check.txt)"

# The filesystems, written from the directory tree: no loop device, no mount.
ext4=$OUT/$NAME-rootfs.ext4
bootdir=$work/bootfs
if [[ $BOOT == 1 ]]; then
    mv "$root/boot/firmware" "$bootdir"
    mkdir -m 0755 "$root/boot/firmware"
fi
used=$(du -sxm "$root" | cut -f1)
size=$((used + used / 4 + 64))
rm -f "$ext4"
mkfs.ext4 -q -L pprelay-root -d "$root" "$ext4" "${size}M" >/dev/null
log "root filesystem: $ext4 (${size} MiB, ${used} MiB used)"
artifacts=("$ext4")

if [[ $BOOT == 1 ]]; then
    [[ -n $(ls -A "$bootdir") ]] || die "raspi-firmware left /boot/firmware empty"
    grep -q 'root=LABEL=pprelay-root' "$bootdir/cmdline.txt" || die "cmdline.txt does not name the image's root: $(cat "$bootdir/cmdline.txt")"
    bsize=256
    vfat=$work/boot.vfat
    mkfs.vfat -n RASPIFIRM -C "$vfat" $((bsize * 1024)) >/dev/null
    mcopy -s -p -i "$vfat" "$bootdir"/* ::/
    img=$OUT/$NAME.img
    rm -f "$img"
    truncate -s $((4 + bsize + size))M "$img"
    sfdisk -q "$img" <<PARTS
label: dos
start=4MiB, size=${bsize}MiB, type=c, bootable
start=$((4 + bsize))MiB, type=83
PARTS
    dd if="$vfat" of="$img" bs=1M seek=4 conv=notrunc,sparse status=none
    dd if="$ext4" of="$img" bs=1M seek=$((4 + bsize)) conv=notrunc,sparse status=none
    log "SD card image: $img ($(du -m --apparent-size "$img" | cut -f1) MiB; boot files: $(ls "$bootdir" | wc -l))"
    artifacts+=("$img")
fi

for a in "${artifacts[@]}"; do
    zstd -q "-$ZLEVEL" -T0 -f "$a" -o "$a.zst"
    log "$(basename "$a"): $(du -m --apparent-size "$a" | cut -f1) MiB raw, $(du -m "$a" | cut -f1) MiB allocated, $(du -m --apparent-size "$a.zst" | cut -f1) MiB zstd -$ZLEVEL"
done
log "image built in $(($(date +%s) - t0)) s"
