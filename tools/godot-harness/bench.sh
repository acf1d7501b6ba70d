#!/usr/bin/env bash
# tools/godot-harness/bench.sh — Godot sync benchmark (`./canopy bench godot` can call it): starts a local 3-server
# cluster (cluster.sh) and the bare WebSocket relay (relay.mjs), then for N in $BENCH_N (default 10,50,100,200,400)
# runs bench_sync.gd in two real Godot instances in one browser: a (connected to server 1) moves N entities at 20 Hz
# through its ClusterSynchronizers (one tree_set_many per tick), b (server 2) applies them through its ClusterSpawner's
# subscription; then the same payload through the relay (the floor). Prints one JSON document on stdout (progress on
# stderr). Env: BENCH_N, BENCH_DURATION_MS (10000), BENCH_HZ (20), CANOPY_HTTP_BASE / CANOPY_LISTEN_BASE (cluster.sh),
# RELAY_PORT (8090).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
"$here/setup.sh" >&2
dir=$(mktemp -d "${TMPDIR:-/tmp}/canopy-godot-bench.XXXXXX")
relay_pid=""
cleanup() {
  [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null || true
  "$here/cluster.sh" stop "$dir" || true
  rm -rf "$dir"
}
trap cleanup EXIT
mapfile -t urls < <("$here/cluster.sh" start "$dir")
port=${RELAY_PORT:-8090}
node "$here/relay.mjs" "$port" >"$dir/relay.log" 2>&1 &
relay_pid=$!
node "$here/bench.mjs" --n "${BENCH_N:-10,50,100,200,400}" --duration-ms "${BENCH_DURATION_MS:-10000}" --hz "${BENCH_HZ:-20}" \
  --relay "ws://127.0.0.1:$port" --urls-a "${urls[0]},${urls[1]}" --urls-b "${urls[1]},${urls[2]}"
