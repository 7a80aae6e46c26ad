"""Real-shaped LLMs per precision, and converting a GGUF: load time, peak RSS, bytes per parameter, tokens/s.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.bench_llm_shapes \
        [--shapes llama-3.2-1b,qwen2.5-3b,llama-3.1-8b] [--dtypes fp32,bf16] [--new-tokens 8] [--gguf]
        [--device cpu|cuda] [--json out.json] [--md out.md]

Shapes: the published configs of Llama-3.2-1B, Qwen2.5-3B and Llama-3.1-8B with random bf16
weights (:mod:`pmg_tools.realsize_llm`, built once under ``~/.cache/pmg/realsize-llm/``) and
SmolLM2's tokenizer and chat template. Each (shape, dtype) is loaded through
:func:`pmg_core.llm.load_llm` in its own process, so its peak RSS is its own; tokens/s is greedy
decoding of ``--new-tokens`` tokens after one chat prompt, batch 1, on one thread.

``--gguf``: the shipped SmolLM2-135M Q4_1 GGUF converted three ways, each in its own process:
transformers' whole-model load + ``save_pretrained`` (the fp32 path PMG used before precisions)
and :func:`pmg_core.gguf_convert.convert_gguf` at fp32 and bf16: seconds, peak RSS, folder size.

A job that needs more than ~4 GB runs under ``flock /tmp/pmg-bigmem.lock`` (one big job per
machine) and only when ``/proc/meminfo`` shows enough memory available; otherwise its row says why
it was skipped. Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pmg_tools.report import emit

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("bench_llm_shapes")

GB = 1e9
BIG_JOB_BYTES = 4 * GB
LOCK_FILE = "/tmp/pmg-bigmem.lock"
# Loading reads the weights straight into their dtype; the rest (torch, tokenizer, KV cache) is ~1 GB.
EXTRA_BYTES = 1 * GB
# The 8B shape at bf16 only with this much available (the weights alone are 16 GB).
MIN_AVAILABLE_8B = 18 * GB


def available_bytes() -> float:
    """MemAvailable of /proc/meminfo (what can be used without swapping others out)."""
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0.0


def memory_verdict(need: float, available: float, shape: str) -> str | None:
    """Why a job of ``need`` bytes must be skipped with ``available`` bytes free, or None to run it."""
    floor = MIN_AVAILABLE_8B if shape == "llama-3.1-8b" else need
    if available < max(need, floor):
        return (f"skipped: needs ~{max(need, floor) / GB:.1f} GB available, /proc/meminfo shows "
                f"{available / GB:.1f} GB (other jobs share this machine)")
    return None


@contextlib.contextmanager
def big_memory_lock(need: float):
    """Hold ``/tmp/pmg-bigmem.lock`` for a job over ~4 GB (one big job per machine at a time)."""
    if need <= BIG_JOB_BYTES:
        yield
        return
    with open(LOCK_FILE, "a") as handle:
        log.info("waiting for %s (a %.1f GB job)", LOCK_FILE, need / GB)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _child(args: list[str], need: float, shape: str = "") -> dict:
    """Run this script's ``--child ...`` in a fresh process (its own peak RSS); its JSON result."""
    with big_memory_lock(need):
        verdict = memory_verdict(need, available_bytes(), shape)  # measured once the lock is ours
        if verdict:
            return {"skipped": verdict}
        command = [sys.executable, "-m", "benchmarks.bench_llm_shapes", "--child", *args]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"failed": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- children ----------------------------------------------------------------------------------


def child_build(shape: str) -> dict:
    from pmg_tools.realsize_llm import build_realsize_llm

    began = time.perf_counter()
    folder = build_realsize_llm(shape, "bf16")
    return {"folder": str(folder), "seconds": round(time.perf_counter() - began, 1), "peak_rss_mb": round(_peak_rss_mb())}


def child_run(shape: str, dtype: str, device: str, new_tokens: int) -> dict:
    import torch

    from pmg_core.llm import load_llm
    from pmg_tools.realsize_llm import build_realsize_llm

    torch.set_num_threads(1)
    folder = build_realsize_llm(shape, "bf16")
    rss_before = _peak_rss_mb()
    began = time.perf_counter()
    llm = load_llm(folder, device=device, dtype=dtype)
    load_s = time.perf_counter() - began
    params = list(llm.model.parameters())
    numel = sum(p.numel() for p in params)
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    prompt = llm.chat_prompt("Give five keywords about jazz films.", system="You list keywords.")
    encoded = llm.tokenizer([prompt], return_tensors="pt", add_special_tokens=False).to(llm.device)
    with torch.no_grad():
        llm.model.generate(**encoded, max_new_tokens=1, do_sample=False)  # warm-up: first-call costs
        began = time.perf_counter()
        out = llm.model.generate(**encoded, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=llm.tokenizer.pad_token_id)
        if device == "cuda":
            torch.cuda.synchronize()
        decode_s = time.perf_counter() - began
    generated = out.shape[1] - encoded["input_ids"].shape[1]
    result = {
        "parameters_b": round(numel / 1e9, 3),
        "load_s": round(load_s, 1),
        "peak_rss_mb": round(_peak_rss_mb()),
        "rss_before_load_mb": round(rss_before),
        "bytes_per_parameter": round(weight_bytes / numel, 3),
        "prompt_tokens": int(encoded["input_ids"].shape[1]),
        "tokens_per_s": round(generated / decode_s, 2),
    }
    if device == "cuda":
        result["peak_vram_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return result


def child_gguf(method: str, dtype: str) -> dict:
    import torch

    from pmg_core.assets import smollm2_gguf

    torch.set_num_threads(1)
    gguf = smollm2_gguf()
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "converted"
        began = time.perf_counter()
        if method == "transformers":
            _convert_whole_model(gguf, out)
        else:
            from pmg_core.gguf_convert import convert_gguf

            convert_gguf(gguf, out, dtype)
        seconds = time.perf_counter() - began
        size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        params = _parameters_in(out)
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(_peak_rss_mb()), "disk_mb": round(size / 2**20),
            "disk_bytes_per_parameter": round(size / params, 3), "gguf_mb": round(gguf.stat().st_size / 2**20)}


def _convert_whole_model(gguf: Path, out: Path) -> None:
    """What PMG did before precisions: transformers de-quantises the whole model to fp32, then saves it."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _parameters_in(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                total += _numel(handle.get_slice(name).get_shape())
    return total


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count


# -- the run ------------------------------------------------------------------------------------


def run(shapes: list[str], dtypes: list[str], device: str, new_tokens: int, gguf: bool) -> dict:
    from pmg_tools.realsize_llm import parameter_bytes, realsize_folder

    rows = []
    for shape in shapes:
        built = {}
        if not (realsize_folder(shape, "bf16") / "config.json").is_file():
            # Saving holds the model and one 1 GB shard being written.
            built = _child(["build", shape], parameter_bytes(shape, "bf16") + 2 * EXTRA_BYTES, shape)
            log.info("%s: built %s", shape, built)
        for dtype in dtypes:
            need = parameter_bytes(shape, dtype) + EXTRA_BYTES if device == "cpu" else 2 * EXTRA_BYTES
            result = built if "skipped" in built or "failed" in built else _child(
                ["run", shape, dtype, device, str(new_tokens)], need, shape)
            row = {"shape": shape, "dtype": dtype, "device": device, **result}
            log.info("%s", row)
            rows.append(row)
    conversions = []
    if gguf:
        for method, dtype in (("transformers", "fp32"), ("tensor-by-tensor", "fp32"), ("tensor-by-tensor", "bf16")):
            row = {"method": method, "dtype": dtype, **_child(["gguf", method, dtype], 2 * GB)}
            log.info("%s", row)
            conversions.append(row)
    return {"threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0), "new_tokens": new_tokens,
            "shapes": rows, "gguf": conversions}


def markdown(report: dict) -> str:
    lines = ["| shape | dtype | device | params (B) | load s | peak RSS MB | bytes/param | tokens/s | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in report["shapes"]:
        note = row.get("skipped") or row.get("failed") or ""
        lines.append(f"| {row['shape']} | {row['dtype']} | {row['device']} | {row.get('parameters_b', '')} | "
                     f"{row.get('load_s', '')} | {row.get('peak_rss_mb', '')} | {row.get('bytes_per_parameter', '')} | "
                     f"{row.get('tokens_per_s', '')} | {note} |")
    if report["gguf"]:
        lines += ["", "| GGUF conversion | dtype | seconds | peak RSS MB | disk MB | disk bytes/param |",
                  "|---|---|---|---|---|---|"]
        for row in report["gguf"]:
            lines.append(f"| {row['method']} | {row['dtype']} | {row.get('seconds', '')} | {row.get('peak_rss_mb', '')} | "
                         f"{row.get('disk_mb', '')} | {row.get('disk_bytes_per_parameter', '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from pmg_tools.realsize_llm import SHAPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--gguf", action="store_true", help="also measure converting the shipped SmolLM2 GGUF")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--md", type=Path, default=None)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.child:
        kind, *rest = args.child
        job = {"build": child_build, "gguf": child_gguf}.get(kind)
        result = child_run(rest[0], rest[1], rest[2], int(rest[3])) if kind == "run" else job(*rest)
        emit(json.dumps(result))
        return 0
    unknown = set(args.shapes.split(",")) - set(SHAPES)
    if unknown:
        parser.error(f"unknown shapes {sorted(unknown)}; choose from {', '.join(SHAPES)}")
    report = run(args.shapes.split(","), args.dtypes.split(","), args.device, args.new_tokens, args.gguf)
    text = markdown(report)
    emit(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.md:
        args.md.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
