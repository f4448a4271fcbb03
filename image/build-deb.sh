#!/usr/bin/env bash
# Packages a built relay as a Debian package, with dpkg-deb from a staged
# tree (no extra tools to install).
#
#   image/build-deb.sh BINARY DEB_ARCH [OUT_DIR]
#     BINARY    a release build of patchpilot-relay (stripped by the profile)
#     DEB_ARCH  amd64, arm64 or armhf
#     OUT_DIR   where the .deb goes (default: the binary's folder)
#
# Prints the path of the package it wrote.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
BINARY=${1:?binary}
ARCH=${2:?deb arch: amd64, arm64 or armhf}
OUT=${3:-$(dirname "$BINARY")}
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml")
NAME=patchpilot-relay
DEB=$OUT/${NAME}_${VERSION}_${ARCH}.deb

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -D -m 0755 "$BINARY" "$stage/usr/bin/$NAME"
install -D -m 0644 "$HERE/patchpilot-relay.service" "$stage/usr/lib/systemd/system/$NAME.service"
install -D -m 0644 "$HERE/patchpilot-relay-firstboot.service" "$stage/usr/lib/systemd/system/$NAME-firstboot.service"
install -D -m 0755 "$HERE/first-boot.sh" "$stage/usr/lib/$NAME/first-boot.sh"
install -D -m 0644 "$REPO/config/appliance.toml" "$stage/etc/$NAME/relay.toml"
install -D -m 0644 "$HERE/profile.sh" "$stage/etc/profile.d/$NAME.sh"
install -D -m 0644 "$REPO/docs/appliance.md" "$stage/usr/share/doc/$NAME/appliance.md"
install -d "$stage/DEBIAN"

cat >"$stage/DEBIAN/control" <<TEXT
Package: $NAME
Version: $VERSION
Architecture: $ARCH
Maintainer: PatchPilot <relay@patchpilot.invalid>
Section: admin
Priority: optional
Depends: libc6 (>= 2.34), adduser | passwd, util-linux
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Description: PatchPilot on-site relay
 Keeps the patch state of the fleet on the LAN and serves the PatchPilot
 API. Runs as the hardened systemd service patchpilot-relay.service; a
 first-boot unit creates the first admin key and the site enrollment token.
TEXT
echo "/etc/$NAME/relay.toml" >"$stage/DEBIAN/conffiles"

cat >"$stage/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd patchpilot-relay >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/patchpilot-relay \
            --no-create-home --shell /usr/sbin/nologin patchpilot-relay
    fi
    install -d -m 0700 -o patchpilot-relay -g patchpilot-relay /var/lib/patchpilot-relay
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
    systemctl enable patchpilot-relay.service patchpilot-relay-firstboot.service >/dev/null 2>&1 || true
    if [ -d /run/systemd/system ] && [ -n "$2" ]; then
        systemctl try-restart patchpilot-relay.service || true
    fi
fi
SH
cat >"$stage/DEBIAN/prerm" <<'SH'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop patchpilot-relay.service || true
fi
SH
cat >"$stage/DEBIAN/postrm" <<'SH'
#!/bin/sh
set -e
if [ "$1" = remove ] || [ "$1" = purge ]; then
    systemctl disable patchpilot-relay.service patchpilot-relay-firstboot.service >/dev/null 2>&1 || true
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
# The fleet's store stays on purge too: remove /var/lib/patchpilot-relay by hand.
SH
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

mkdir -p "$OUT"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$DEB" >/dev/null
echo "$DEB"
