#!/usr/bin/env bash
# The GPU check of the LLM path (issue 14), one command, at most ~8 minutes (step limits sum to 465 s;
# a machine without the venv first pays for scripts/bootstrap_env.sh):
#
#   OUT=/some/folder bash scripts/gpu_check.sh
#
# Writes under $OUT: llm_comfy/ (1B/3B/8B-shaped LLMs at bf16 through ComfyUI's model management
# beside an SD-sized model: placement, VRAM, eviction, tokens/s, batched extraction),
# llm_shapes.{json,md} (load_llm on CUDA, 1B shape, bf16), the real-size SD benchmark where
# pmg_tools/realsize.py and benchmarks/bench_realsize.py exist, nvidia-smi.txt, and a summary in
# gpu_check.json + gpu_check.md. Each step has its own time limit, so one slow step cannot use up the
# others' time; a failed step is recorded and the next one runs. Needs the venv
# (scripts/bootstrap_env.sh) and a CUDA GPU; nothing is downloaded.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
: "${OUT:?set OUT to the folder that receives the figures}"
mkdir -p "$OUT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
py=.venv/bin/python
status="$OUT/steps.tsv"
: >"$status"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record the exit code
  local name="$1" limit="$2"
  shift 2
  local began=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - began))" >>"$status"
  echo "[gpu_check] $name: exit $rc after $((SECONDS - began)) s (log: $OUT/$name.log)"
}

if [ ! -x "$py" ]; then
  step bootstrap 240 bash scripts/bootstrap_env.sh
fi
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not found" >"$OUT/nvidia-smi.txt"

step llm_comfy 240 "$py" -m benchmarks.bench_llm_comfy --device cuda --out "$OUT/llm_comfy"
step llm_shapes 75 "$py" -m benchmarks.bench_llm_shapes --device cuda --shapes llama-3.2-1b --dtypes bf16 \
  --new-tokens 32 --json "$OUT/llm_shapes.json" --md "$OUT/llm_shapes.md"

# The real-size SD checkpoint tools come from another branch; run them only where they exist. The
# checkpoint itself is written outside $OUT (only figures come back).
if [ -f pmg_tools/realsize.py ] && [ -f benchmarks/bench_realsize.py ]; then
  work="$(mktemp -d)"
  step realsize_build 75 "$py" -m pmg_tools.realsize --family sdxl --out "$work/sdxl"
  step bench_realsize 75 "$py" -m benchmarks.bench_realsize --device cuda
  rm -rf "$work"
else
  printf 'bench_realsize\tabsent\t0\n' >>"$status"
fi

"$py" - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines() if line]
summary = {"steps": [{"name": n, "exit": rc, "seconds": s} for n, rc, s in steps]}
for name, path in (("llm_comfy", out / "llm_comfy" / "llm_comfy.json"), ("llm_shapes", out / "llm_shapes.json")):
    if path.is_file():
        summary[name] = json.loads(path.read_text())
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
parts = ["# PMG GPU check", "", "| step | exit | seconds |", "|---|---|---|"]
parts += [f"| {n} | {rc} | {s} |" for n, rc, s in steps]
for title, path in (("LLMs under ComfyUI beside an SD-sized model", out / "llm_comfy" / "llm_comfy.md"),
                    ("load_llm on CUDA", out / "llm_shapes.md"), ("nvidia-smi", out / "nvidia-smi.txt")):
    if path.is_file():
        parts += ["", f"## {title}", "", path.read_text()]
(out / "gpu_check.md").write_text("\n".join(parts) + "\n")
print("\n".join(parts))
PY
