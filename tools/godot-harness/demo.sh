#!/usr/bin/env bash
# tools/godot-harness/demo.sh — runs the Godot demo of issue 6 (clients/godot/demo) headless and checks it:
# starts a local 3-server cluster (cluster.sh), runs three real Godot instances (A, B, C, each connected to a
# different server first; each owns two characters) for $DEMO_DURATION_MS (12000); A renders into its canvas (WebGL2
# on SwiftShader; B and C run --headless: software GL is costly on 2 cores) and its page is saved to
# $DEMO_SCREENSHOT (docs/godot-demo.png) when the walk has stopped and the last moves landed; then it checks
# what the instances report (demo-check.mjs): every crossing seen exactly once by every instance as a leave + enter
# at the owner's tree_move timestamp, never in both regions or neither, every character seen everywhere, coins
# conserved in every audit. Exit 0 = all checks passed. Env: DEMO_DURATION_MS, DEMO_SCREENSHOT ("" = none),
# DEMO_RENDER (1; 0 = A headless too, no screenshot), CANOPY_HTTP_BASE / CANOPY_LISTEN_BASE (cluster.sh),
# DEMO_KEEP=1 keeps the work directory (logs, run.jsonl).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
"$here/setup.sh" >&2
dir=$(mktemp -d "${TMPDIR:-/tmp}/canopy-godot-demo.XXXXXX")
cleanup() {
  "$here/cluster.sh" stop "$dir" || true
  if [ "${DEMO_KEEP:-0}" = 1 ]; then echo "demo.sh: kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT
echo "demo.sh: starting the cluster" >&2
mapfile -t urls < <("$here/cluster.sh" start "$dir")
listen_base=${CANOPY_LISTEN_BASE:-26410}
"$repo/canopy" range list --host "127.0.0.1:$((listen_base + 1)),127.0.0.1:$((listen_base + 2)),127.0.0.1:$((listen_base + 3))" \
  --format json >"$dir/ranges.json" 2>"$dir/ranges.err" || echo "[]" >"$dir/ranges.json"
duration=${DEMO_DURATION_MS:-12000}
render=${DEMO_RENDER:-1}
shot=${DEMO_SCREENSHOT-docs/godot-demo.png}
[ "$render" = 1 ] || shot=""
tree="demo-$(date +%s)-$$"
u() { local IFS=,; echo "$*"; }
cat >"$dir/spec.json" <<JSON
{ "project": "clients/godot/demo", "render": false,
  "viewport": {"width": 960, "height": 540},
  "instances": [
    {"name": "A", "deadline_ms": $((duration + 40000)), "screenshot": "$shot", "render": $([ "$render" = 1 ] && echo true || echo false),
     "args": ["--name=A", "--chars=Ada,Bo", "--tree=$tree", "--duration_ms=$duration", "--total_chars=6",
              "--urls=$(u "${urls[0]}" "${urls[1]}" "${urls[2]}")" $([ -n "$shot" ] && echo ', "--screenshot_at_end"')]},
    {"name": "B", "deadline_ms": $((duration + 40000)),
     "args": ["--name=B", "--chars=Cy,Dee", "--tree=$tree", "--duration_ms=$duration", "--total_chars=6",
              "--urls=$(u "${urls[1]}" "${urls[2]}" "${urls[0]}")"]},
    {"name": "C", "deadline_ms": $((duration + 40000)),
     "args": ["--name=C", "--chars=Eve,Fay", "--tree=$tree", "--duration_ms=$duration", "--total_chars=6",
              "--urls=$(u "${urls[2]}" "${urls[0]}" "${urls[1]}")"]}
  ] }
JSON
echo "demo.sh: running 3 instances for ${duration} ms (tree $tree)" >&2
rc=0
(cd "$here" && node harness.mjs --spec "$dir/spec.json") </dev/null >"$dir/run.jsonl" || rc=$?
echo "demo.sh: harness exit $rc" >&2
node "$here/demo-check.mjs" "$dir/run.jsonl" "$dir/ranges.json" "$shot"
