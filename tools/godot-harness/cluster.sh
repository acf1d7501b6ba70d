#!/usr/bin/env bash
# tools/godot-harness/cluster.sh — a local 3-server cluster of `./canopy start` processes for the harness, the demo
# and the benchmark.
#
#   cluster.sh start DIR    starts s1..s3 (listen 127.0.0.1:2641{1,2,3}, HTTP/WebSocket 127.0.0.1:808{1,2,3}; override
#                           the bases with CANOPY_LISTEN_BASE / CANOPY_HTTP_BASE), runs `canopy init`, waits until every
#                           range takes a write, writes DIR/pids and prints the gateway URLs (one per line)
#   cluster.sh stop DIR     stops the servers started in DIR (their own pids only)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
canopy="$repo/canopy"
listen_base=${CANOPY_LISTEN_BASE:-26410}
http_base=${CANOPY_HTTP_BASE:-8080}
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: cluster.sh start|stop DIR" >&2; exit 2; }

case "$cmd" in
  start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd -P)
    "$canopy" --version >/dev/null  # builds once, before three processes race for it
    join="127.0.0.1:$((listen_base + 1)),127.0.0.1:$((listen_base + 2)),127.0.0.1:$((listen_base + 3))"
    : >"$dir/pids"
    for i in 1 2 3; do
      "$canopy" start --store "$dir/s$i" --listen-addr "127.0.0.1:$((listen_base + i))" \
        --http-addr "127.0.0.1:$((http_base + i))" --join "$join" >"$dir/s$i.log" 2>&1 &
      echo $! >>"$dir/pids"
    done
    deadline=$((SECONDS + 60))
    for i in 1 2 3; do
      until curl -fs "http://127.0.0.1:$((http_base + i))/health" >/dev/null 2>&1 || [ $SECONDS -ge $deadline ]; do sleep 0.2; done
    done
    "$canopy" init --host "$join" >"$dir/init.log" 2>&1 || { cat "$dir/init.log" >&2; exit 1; }
    # Ready when each of the six user ranges (split at e, i, n, r, v) takes a write.
    for p in a f j o s w; do
      until "$canopy" kv put --host "$join" "$p/godot-ready" 1 >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { echo "cluster.sh: range of '$p' refuses writes" >&2; exit 1; }
        sleep 0.3
      done
    done
    for i in 1 2 3; do echo "ws://127.0.0.1:$((http_base + i))/ws"; done
    ;;
  stop)
    [ -f "$dir/pids" ] || exit 0
    while read -r pid; do
      [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done <"$dir/pids"
    while read -r pid; do
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done <"$dir/pids"
    rm -f "$dir/pids"
    ;;
  *) echo "usage: cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
