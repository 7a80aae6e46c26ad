#!/usr/bin/env bash
# The README's main command: PMG in a real ComfyUI, end to end, on this machine.
#
#   bash scripts/demo.sh [--users N] [--url URL] [--checkpoint NAME] [more: --help]
#
# Creates (or reuses) the pinned environment, starts the embedded ComfyUI with this pack
# and the offline default models (or uses the server at --url), queues the example
# workflows (workflows/api/) for a few MovieLens and Twemoji sticker users through the
# batch client, and writes results/<timestamp>/ (images, keywords.jsonl, scores.jsonl,
# contact_sheet.png, summary.md). Only real images: the sticker users' come from the sticker
# generator this project trained; the movie users get keywords and prompts, and posters
# only with --checkpoint NAME (a Stable Diffusion checkpoint in models/checkpoints).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
began=$(date +%s)
bash scripts/bootstrap_env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" .venv/bin/python -m pmg_tools.demo "$@"
echo "[demo] total wall time including the environment check: $(( $(date +%s) - began )) s" >&2
