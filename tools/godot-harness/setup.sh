#!/usr/bin/env bash
# tools/godot-harness/setup.sh — makes the harness runnable; idempotent, cheap when everything is in place.
#
#  1. Chromium: uses $CHROMIUM or /usr/bin/chromium; when missing, installs Debian's `chromium` with apt-get
#     (as root, or through passwordless sudo). Never downloads Playwright's own browser builds.
#  2. playwright-core (pinned in package-lock.json): `npm ci` when node_modules is missing or older than the lock.
#  3. The Godot 4.6 web export template: `npm pack` into .cache/ and sha256 check (harness.mjs --setup-only).
#
# Exit status: 0 ready; 3 Chromium is missing and cannot be installed (callers skip engine tests on 3, with the
# message printed here); 1 anything else (npm, the engine download or its checksum failed).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
cd "$here"

chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  if [ -n "${CHROMIUM:-}" ]; then
    echo "godot-harness: CHROMIUM=$CHROMIUM is not an executable" >&2
    exit 3
  fi
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo_cmd=(sudo -n)
    else
      echo "godot-harness: $chromium is missing and this user cannot install it (not root, no passwordless sudo); run: apt-get install -y chromium" >&2
      exit 3
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "godot-harness: $chromium is missing and apt-get is not available; install Chromium and set CHROMIUM=/path/to/chromium" >&2
    exit 3
  fi
  # One installer at a time (several test processes may call this at once).
  exec 8>"${TMPDIR:-/tmp}/canopy-godot-harness-apt.lock"
  command -v flock >/dev/null 2>&1 && flock -w 600 8
  if [ ! -x "$chromium" ]; then
    echo "godot-harness: installing chromium with apt-get (once)..." >&2
    log=$(mktemp)
    if ! { DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y --no-install-recommends chromium >"$log" 2>&1 \
           || { "${sudo_cmd[@]}" apt-get update >>"$log" 2>&1 && DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y --no-install-recommends chromium >>"$log" 2>&1; }; }; then
      echo "godot-harness: cannot install chromium with apt-get (no network?); last lines:" >&2
      tail -n 5 "$log" >&2
      rm -f "$log"
      exit 3
    fi
    rm -f "$log"
  fi
  exec 8>&-
  [ -x "$chromium" ] || { echo "godot-harness: apt-get installed chromium but $chromium is still missing" >&2; exit 3; }
fi

command -v node >/dev/null 2>&1 || { echo "godot-harness: node (Node.js 20+) was not found on PATH" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "godot-harness: npm was not found on PATH" >&2; exit 1; }

if [ ! -f node_modules/playwright-core/package.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  exec 7>"$here/.npm.lock"
  command -v flock >/dev/null 2>&1 && flock -w 300 7
  if [ ! -f node_modules/playwright-core/package.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --silent >&2 || { echo "godot-harness: npm ci failed" >&2; exit 1; }
  fi
  exec 7>&-
fi

node harness.mjs --setup-only || exit 1
