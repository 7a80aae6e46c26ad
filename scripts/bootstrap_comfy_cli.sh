#!/usr/bin/env bash
# Create (or reuse) comfy-cli's own environment and link it at .comfy-cli, for the registry check
# `comfy node validate` in the tests. Keyed like .venv: a second run on the same machine costs nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python="${PMG_PYTHON:-python3}"
cache="${PMG_CACHE_DIR:-$HOME/.cache/pmg}"
key=$( (cat requirements/comfy-cli.txt; "$python" --version) | sha256sum | cut -c1-16)
venv="$cache/tools/comfy-cli-$key"

if [ ! -f "$venv/.complete" ]; then
  echo "[bootstrap] installing comfy-cli into $venv" >&2
  rm -rf "$venv"
  mkdir -p "$cache/tools"
  "$python" -m venv "$venv"
  log="$cache/tools/comfy-cli-$key.install.log"
  if ! "$venv/bin/python" -m pip install -r requirements/comfy-cli.txt >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -n 30 >&2
    echo "[bootstrap] comfy-cli install failed; full log: $log" >&2
    exit 1
  fi
  touch "$venv/.complete"
fi
if [ "$(readlink .comfy-cli 2>/dev/null)" != "$venv" ]; then
  rm -rf .comfy-cli
  ln -s "$venv" .comfy-cli
fi
