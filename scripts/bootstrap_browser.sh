#!/usr/bin/env bash
# What tests/test_browser.py drives the ComfyUI front end with: Debian's Chromium and the
# playwright-core pinned in tests/browser/package-lock.json (into tests/browser/node_modules,
# git-ignored). Never `npx playwright install`: it downloads a browser, which fails offline.
#
# Quiet when everything is there; installs what it can (Chromium only as root on Debian),
# logs to $PMG_CACHE_DIR/browser-install.log, and never fails the bootstrap: when something
# cannot be installed it says what to install, and the browser tests fail with the same advice.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${PMG_CACHE_DIR:-$HOME/.cache/pmg}"
mkdir -p "$cache"
log="$cache/browser-install.log"
browser_dir="$root/tests/browser"
chromium="${CHROMIUM:-/usr/bin/chromium}"

if [ ! -x "$chromium" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[bootstrap] installing Debian's chromium for the browser tests (log: $log)" >&2
    # apt-get update only when Chromium is missing: a second bootstrap costs nothing.
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >>"$log" 2>&1; then
      echo "[bootstrap] apt-get install chromium failed (see $log); the browser tests will fail until it is installed" >&2
    fi
  else
    echo "[bootstrap] no Chromium at $chromium: the browser tests need it (as root: apt-get install chromium," \
         "or set CHROMIUM=/path/to/chromium)" >&2
  fi
fi

wanted=$(sed -n 's/.*"playwright-core": "\(.*\)".*/\1/p' "$browser_dir/package.json" | head -n 1)
have=$(sed -n 's/.*"version": "\(.*\)".*/\1/p' "$browser_dir/node_modules/playwright-core/package.json" 2>/dev/null | head -n 1)
if [ "$have" != "$wanted" ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "[bootstrap] installing playwright-core $wanted into tests/browser/node_modules (log: $log)" >&2
    if ! (cd "$browser_dir" && npm ci --no-audit --no-fund) >>"$log" 2>&1; then
      echo "[bootstrap] npm ci in tests/browser failed (see $log); the browser tests will fail until it succeeds" >&2
    fi
  else
    echo "[bootstrap] no npm: the browser tests need Node.js 20+ and npm (apt-get install nodejs npm)," \
         "then: cd tests/browser && npm ci" >&2
  fi
fi
exit 0
