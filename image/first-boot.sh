#!/bin/sh
# First-boot setup of the PatchPilot relay; run once, as root, before the
# relay starts (patchpilot-relay-firstboot.service). Every step runs as the
# service user so the store and files it creates belong to it.
#
# Creates the data directory, the TLS certificate (only if this relay build
# has a `tls` command), the site enrollment token and the first admin key,
# writes the secrets to $SECRETS (root, 0600) and prints them once on
# stdout (the console); nothing secret is logged.
set -eu

USER_NAME=${PP_USER:-patchpilot-relay}
CONFIG=${PATCHPILOT_CONFIG:-/etc/patchpilot-relay/relay.toml}
DATA_DIR=${PATCHPILOT_DATA_DIR:-/var/lib/patchpilot-relay}
SECRETS=${PP_SECRETS_FILE:-/root/patchpilot-relay-first-boot.txt}
BIN=${PP_BIN:-/usr/bin/patchpilot-relay}
DONE=$DATA_DIR/.first-boot-done

log() { echo "patchpilot-relay first boot: $*" >&2; }
relay() { runuser -u "$USER_NAME" -- "$BIN" --config "$CONFIG" --data-dir "$DATA_DIR" "$@"; }
has_command() { relay "$1" --help >/dev/null 2>&1; }

if [ -e "$DONE" ]; then
    log "already done"
    exit 0
fi

install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$DATA_DIR"
log "data directory $DATA_DIR ready"

# TLS belongs to the relay itself (it makes its self-signed certificate on
# first start); where this build has a `tls` command, first boot runs it so
# the certificate exists and its fingerprint is shown with the secrets. A
# failure here is not fatal: the relay still makes the certificate itself.
tls=""
if has_command tls; then
    if tls=$(relay tls 2>/dev/null); then
        log "TLS certificate ready"
    else
        tls=""
        log "warning: 'patchpilot-relay tls' failed; the relay makes its certificate on start"
    fi
fi

umask 077
token=$(relay rotate-enrollment-token | sed -n 's/.*(0600): //p')
[ -n "$token" ] || { log "no enrollment token was minted"; exit 1; }
admin=$(relay init-admin --name admin --expires-in-days 90)
key=$(echo "$admin" | sed -n 's/^API key (shown once, store it now): //p')
user=$(echo "$admin" | sed -n 's/^admin user: //p')
[ -n "$key" ] || { log "no admin key was created"; exit 1; }

tmp=$(mktemp "$SECRETS.XXXXXX")
cat >"$tmp" <<TEXT
PatchPilot relay — first boot, $(date -u +%Y-%m-%dT%H:%M:%SZ)
host:              $(uname -n)
admin user:        $user
admin API key:     $key
enrollment token:  $token
${tls:+
TLS certificate:
$tls
}
Keep this file safe and delete it once the key and token are stored
elsewhere. The key is shown only here; a lost key is replaced with
  patchpilot-relay keys create --user $user --name <name>
TEXT
chmod 0600 "$tmp"
mv "$tmp" "$SECRETS"
touch "$DONE"
chown "$USER_NAME:$USER_NAME" "$DONE"
log "secrets written to $SECRETS (root only)"

cat "$SECRETS"
