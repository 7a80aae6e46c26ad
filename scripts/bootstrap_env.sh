#!/usr/bin/env bash
# Create (or reuse) the pinned Python environment and link it at .venv.
# The environment lives in a cache keyed by the requirement files, so a second
# run on the same machine costs a second. Also extracts ComfyUI (scripts/fetch_comfyui.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python="${PMG_PYTHON:-python3}"
cache="${PMG_CACHE_DIR:-$HOME/.cache/pmg}"
key=$( (cat requirements/test.in requirements/nodeps.txt; "$python" --version) | sha256sum | cut -c1-16)
venv="$cache/venvs/$key"

if [ ! -f "$venv/.complete" ]; then
  echo "[bootstrap] creating environment $venv (first run: a few minutes)" >&2
  rm -rf "$venv"
  mkdir -p "$cache/venvs"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -r requirements/test.in >&2
  "$venv/bin/python" -m pip install -q --no-deps -r requirements/nodeps.txt >&2
  touch "$venv/.complete"
fi
if [ "$(readlink .venv 2>/dev/null)" != "$venv" ]; then
  rm -rf .venv
  ln -s "$venv" .venv
fi
bash scripts/fetch_comfyui.sh >&2
