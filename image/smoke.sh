#!/usr/bin/env bash
# The relay's smoke path: start it on a loopback port, create the first
# admin through the control socket, probe /readyz and an authenticated
# /api/devices, take a backup over the control socket, then stop it with
# SIGTERM and require a clean exit.
#
#   BIN=path/to/patchpilot-relay [QEMU="qemu-aarch64 -L /usr/aarch64-linux-gnu"] image/smoke.sh
#
# QEMU empty runs the binary natively. Only 127.0.0.1 is used.
set -euo pipefail

BIN=${BIN:?set BIN to the relay binary}
read -r -a RUN <<<"${QEMU:-}"
RUN+=("$BIN")
work=$(mktemp -d)
pid=""
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
say() { printf '[smoke %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
fail() { say "FAIL: $*"; tail -20 "$work/relay.log" >&2 || true; exit 1; }
now_ms() { date +%s%3N; }

cat >"$work/relay.toml" <<TOML
[server]
http_listen = "127.0.0.1:0"
shutdown_grace_s = 5
[store]
data_dir = "$work/data"
TOML
relay() { "${RUN[@]}" --config "$work/relay.toml" "$@"; }

t0=$(now_ms)
"${RUN[@]}" --config "$work/relay.toml" --log-format json serve 2>"$work/relay.log" &
pid=$!
addr=""
for _ in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || fail "the relay exited while starting"
    addr=$(grep -o '"address":"127\.0\.0\.1:[0-9]*' "$work/relay.log" | head -1 | cut -d'"' -f4 || true)
    [[ -n $addr ]] && [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$addr/readyz") == 200 ]] && break
    sleep 0.1
done
[[ -n $addr ]] || fail "the relay did not start listening within 60 s"
say "ready on $addr after $(($(now_ms) - t0)) ms"

key=$(relay init-admin --name smoke | sed -n 's/^API key (shown once, store it now): //p')
[[ $key == ppk_* ]] || fail "init-admin printed no key"
code=$(curl -s -o "$work/devices.json" -w '%{http_code}' -H "Authorization: Bearer $key" "http://$addr/api/devices")
[[ $code == 200 ]] || fail "GET /api/devices answered $code"
grep -q '"devices"' "$work/devices.json" || fail "GET /api/devices has no device list"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/api/devices")
[[ $code == 401 ]] || fail "GET /api/devices without a key answered $code"
say "authenticated /api/devices: 200, without a key: 401"

relay backup "$work/smoke.ppbackup" >"$work/backup.txt" || fail "backup over the control socket failed"
grep -q 'backup written' "$work/backup.txt" || fail "backup printed no summary"
say "backup over the control socket: $(stat -c %s "$work/smoke.ppbackup") bytes"

t1=$(now_ms)
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=""
[[ $rc == 0 ]] || fail "the relay exited $rc after SIGTERM"
grep -q 'relay stopped' "$work/relay.log" || fail "no 'relay stopped' in the log"
say "SIGTERM: clean exit 0 in $(($(now_ms) - t1)) ms"
say "smoke path passed"
