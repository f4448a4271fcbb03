#!/usr/bin/env bash
# Prints the appliance figures: stripped binary size, RSS idle and with N
# simulated devices, cold start with N devices and with an empty store, and
# a backup taken under check-in load restored onto a fresh data directory.
# A benchmark, not a test: it prints, it does not judge.
#
#   image/measure.sh [DEVICES]   (default 10000; release builds of
#                                 patchpilot-relay and fleet-sim in
#                                 $CARGO_TARGET_DIR/release)
# Loopback only.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${1:-10000}
T=${CARGO_TARGET_DIR:-$REPO/target}/release
BIN=$T/patchpilot-relay
SIM=$T/fleet-sim
work=$(mktemp -d)
pid=""
cleanup() {
    [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
now_ms() { date +%s%3N; }
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/$pid/status"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

config() { # data_dir port
    cat >"$work/$2.toml" <<TOML
[server]
http_listen = "127.0.0.1:$2"
[store]
data_dir = "$1"
cache_capacity_mib = 24
[limits]
write_per_minute = 1000000
write_burst = 100000
TOML
    echo "$work/$2.toml"
}
start() { # config -> prints ms to ready
    local t0
    t0=$(now_ms)
    "$BIN" --config "$1" serve 2>>"$work/relay.log" &
    pid=$!
    until curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz"; do sleep 0.01; done
    echo $(($(now_ms) - t0))
}
stop() {
    kill -TERM "$pid"
    wait "$pid"
    pid=""
}

echo "== binary =="
echo "x86_64 stripped: $(stat -c %s "$BIN") bytes ($(awk -v b="$(stat -c %s "$BIN")" 'BEGIN {printf "%.2f MiB", b / 1048576}'))"

PORT=$(free_port)
cfg=$(config "$work/data" "$PORT")
echo "== empty store =="
echo "cold start, empty store: $(start "$cfg") ms to /readyz"
sleep 2
echo "RSS idle: $(rss)"
key=$("$BIN" --config "$cfg" init-admin --name bench | sed -n 's/^API key (shown once, store it now): //p')
token=$(cat "$work/data/enrollment-token")

echo "== $N simulated devices =="
t0=$(now_ms)
"$SIM" --relay-url "http://127.0.0.1:$PORT" --enrollment-token "$token" --agents "$N" \
    --checkins 1 --concurrency 64 --json >"$work/sim.json" 2>"$work/sim.err"
echo "enrolled and checked in $N agents in $(($(now_ms) - t0)) ms"
echo "RSS with $N devices: $(rss)"
echo "store on disk: $(du -sh "$work/data/store" | cut -f1)"
stop
echo "cold start, $N devices: $(start "$cfg") ms to /readyz"
echo "RSS right after start with $N devices: $(rss)"

echo "== backup under load, restore on a fresh data directory =="
"$SIM" --relay-url "http://127.0.0.1:$PORT" --enrollment-token "$token" --agents "$N" \
    --duration 20 --interval 5 --concurrency 32 >/dev/null 2>&1 &
load=$!
sleep 5
echo "\$ patchpilot-relay backup $work/relay.ppbackup   # while $N agents check in"
t0=$(now_ms)
"$BIN" --config "$cfg" backup "$work/relay.ppbackup"
echo "(took $(($(now_ms) - t0)) ms)"
wait "$load" || true
curl -s -H "Authorization: Bearer $key" "http://127.0.0.1:$PORT/api/devices?limit=1" |
    python3 -c 'import json, sys; print("total devices on the source relay:", json.load(sys.stdin)["total"])'
stop
fresh=$work/fresh
PORT=$(free_port)
cfg2=$(config "$fresh" "$PORT")
echo "\$ patchpilot-relay --config fresh.toml restore $work/relay.ppbackup"
t0=$(now_ms)
"$BIN" --config "$cfg2" restore "$work/relay.ppbackup"
echo "(took $(($(now_ms) - t0)) ms)"
echo "restored relay ready in $(start "$cfg2") ms"
echo "\$ curl -H 'Authorization: Bearer <the source relay's admin key>' http://127.0.0.1:$PORT/api/devices?limit=1"
curl -s -H "Authorization: Bearer $key" "http://127.0.0.1:$PORT/api/devices?limit=1" |
    python3 -c 'import json, sys; print("total devices on the restored relay:", json.load(sys.stdin)["total"])'
stop
