"""Real-shaped LLMs at bf16 under ComfyUI's model management, beside an SD-sized model (the GPU check).

    .venv/bin/python -m benchmarks.bench_llm_comfy --device cuda --out "$OUT/llm_comfy"
        [--shapes llama-3.2-1b,qwen2.5-3b,llama-3.1-8b] [--sd-gb 5.1] [--new-tokens 32] [--batch 8]
    .venv/bin/python -m benchmarks.bench_llm_comfy --device cpu --dry-run --out /tmp/x   # the CPU smoke run

ComfyUI 0.3.75 (``.cache/comfyui``) and this pack are imported in-process, as ComfyUI imports a
custom node folder. For each shape, an LLM with random bf16 weights (:mod:`pmg_tools.realsize_llm`,
built in memory, not saved) goes through the pack's own runtime (``nodes/comfy_runtime.py``:
ModelPatcher + ``load_models_gpu``), then an SD-sized model (``--sd-gb`` of fp16 weights in
ComfyUI's castable layers, the size of an SDXL UNet) is loaded beside it. Recorded per shape:
the placement (full/partial), VRAM after each load, whether ComfyUI evicted the LLM for the SD
model, the reload cost, greedy tokens/s (batch 1) and a batched extraction (``--batch`` chat
prompts in one batch vs one prompt alone). ``--dry-run`` swaps in the tiny Llama and a tiny SD
stand-in so the whole path runs on a CPU in seconds (the tests do that). Writes
``<out>/llm_comfy.json`` and ``<out>/llm_comfy.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

from pmg_tools.comfy_source import DEFAULT_COMFY_DIR, ensure_comfy_source_first, import_comfy_package
from pmg_tools.report import emit

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui_pmg"

log = logging.getLogger("bench_llm_comfy")

MB = 2**20


def import_comfy(device: str):
    """ComfyUI's modules and this pack's runtime module, imported as ComfyUI would."""
    import_comfy_package(DEFAULT_COMFY_DIR, cpu=device == "cpu")
    import comfy.model_management as mm

    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    runtime = importlib.import_module(f"{PACK_NAME}.nodes.comfy_runtime")
    core_llm = importlib.import_module(f"{PACK_NAME}.pmg_core.llm")
    return mm, runtime, core_llm


def sd_stand_in(size_bytes: int, dtype):
    """A ModelPatcher of ``size_bytes`` of weights in ComfyUI's castable layers (an SD-sized model)."""
    import comfy.model_patcher
    import comfy.ops
    import torch

    width = 4096 if size_bytes > 256 * MB else 256
    per_layer = width * width * torch.tensor([], dtype=dtype).element_size()
    layers = max(1, int(size_bytes // per_layer))

    class Weights(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(
                comfy.ops.disable_weight_init.Linear(width, width, bias=False, dtype=dtype) for _ in range(layers)
            )
            for block in self.blocks:
                torch.nn.init.normal_(block.weight, std=0.02)
            self.device = torch.device("cpu")

    import comfy.model_management as mm

    weights = Weights()
    return comfy.model_patcher.ModelPatcher(weights, load_device=mm.get_torch_device(),
                                            offload_device=torch.device("cpu"))


def build_llm(core_llm, shape: str, dry_run: bool):
    """A LocalLLM with random bf16 weights of ``shape`` (the tiny Llama in a dry run)."""
    import torch
    import transformers

    from pmg_tools.tiny_models.llm import smollm2_tokenizer_dir, tiny_llama

    if dry_run:
        tiny = tiny_llama(seed=0)
        return core_llm.LocalLLM(model=tiny.model.to(torch.bfloat16), tokenizer=tiny.tokenizer,
                                 identity="tiny-llama-dry-run", source=tiny.source)
    from pmg_tools.realsize_llm import realsize_config, require_chat_template

    folder = smollm2_tokenizer_dir()
    require_chat_template(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(realsize_config(shape), dtype=torch.bfloat16)
    model.eval().requires_grad_(False)
    return core_llm.LocalLLM(model=model, tokenizer=tokenizer, identity=f"{shape}-random-bf16", source=folder)


def _vram_mb(torch, device) -> float:
    if device.type != "cuda":
        return 0.0
    torch.cuda.synchronize()
    return round(torch.cuda.memory_allocated(device) / MB)


def measure_shape(mm, runtime, core_llm, shape: str, args) -> dict:
    import torch

    device = torch.device(args.device if args.device == "cpu" else "cuda")
    began = time.perf_counter()
    llm = build_llm(core_llm, shape, args.dry_run)
    row = {"shape": shape, "build_s": round(time.perf_counter() - began, 1),
           "parameters_b": round(sum(p.numel() for p in llm.model.parameters()) / 1e9, 3)}
    runtime.remember_compute_device(llm, device)
    prompt = llm.chat_prompt("Give five keywords about jazz films.", system="You list keywords.")

    began = time.perf_counter()
    with runtime.llm_on_compute_device(llm, keep_loaded=True):
        row["load_s"] = round(time.perf_counter() - began, 2)
        row["placement"] = runtime.runtime_state(llm).placement
        row["vram_after_llm_mb"] = _vram_mb(torch, device)
        llm.generate([prompt], max_new_tokens=1)  # warm-up
        began = time.perf_counter()
        llm.generate([prompt], max_new_tokens=args.new_tokens)
        single = time.perf_counter() - began
        row["tokens_per_s"] = round(args.new_tokens / single, 2)
        prompts = [llm.chat_prompt(f"Give five keywords about film number {i}.") for i in range(args.batch)]
        began = time.perf_counter()
        llm.generate(prompts, max_new_tokens=args.new_tokens, batch_size=args.batch)
        batched = time.perf_counter() - began
        row["batched_prompts_per_s"] = round(args.batch / batched, 2)
        row["batch_speedup_vs_one_prompt"] = round(args.batch * single / batched, 2)
    row["llm_registered_after_use"] = runtime.is_registered(llm)

    sd = sd_stand_in(int(args.sd_gb * 1e9) if not args.dry_run else 4 * MB, torch.float16)
    began = time.perf_counter()
    mm.load_models_gpu([sd])
    row["sd_load_s"] = round(time.perf_counter() - began, 2)
    row["vram_after_sd_mb"] = _vram_mb(torch, device)
    row["llm_evicted_by_sd"] = not runtime.is_registered(llm)
    loads_before = runtime.runtime_state(llm).device_loads
    began = time.perf_counter()
    with runtime.llm_on_compute_device(llm, keep_loaded=False):
        row["llm_reload_s"] = round(time.perf_counter() - began, 2)
        row["vram_with_both_mb"] = _vram_mb(torch, device)
        row["sd_still_loaded"] = any(entry.model is sd for entry in mm.current_loaded_models)
    row["llm_reloaded"] = runtime.runtime_state(llm).device_loads > loads_before
    row["llm_registered_after_unload"] = runtime.is_registered(llm)
    mm.unload_all_models()
    mm.soft_empty_cache(True)
    del llm, sd
    return row


def markdown(rows: list[dict]) -> str:
    keys = ["shape", "parameters_b", "placement", "load_s", "vram_after_llm_mb", "tokens_per_s",
            "batched_prompts_per_s", "batch_speedup_vs_one_prompt", "vram_after_sd_mb", "llm_evicted_by_sd",
            "llm_reload_s", "vram_with_both_mb", "sd_still_loaded"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(key, row.get("failed", ""))) for key in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--shapes", default="llama-3.2-1b,qwen2.5-3b,llama-3.1-8b")
    parser.add_argument("--sd-gb", type=float, default=5.1, help="GB of fp16 weights of the SD stand-in (SDXL UNet)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dry-run", action="store_true", help="tiny models: the whole path on a CPU in seconds")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    ensure_comfy_source_first("benchmarks.bench_llm_comfy", sys.argv[1:] if argv is None else argv)
    import torch

    torch.set_num_threads(1) if args.device == "cpu" else None
    mm, runtime, core_llm = import_comfy(args.device)
    shapes = ["tiny"] if args.dry_run else args.shapes.split(",")
    rows = []
    for shape in shapes:
        try:
            row = measure_shape(mm, runtime, core_llm, shape, args)
        except Exception as exc:  # one shape failing (out of memory) must not lose the others' figures
            log.exception("%s failed", shape)
            row = {"shape": shape, "failed": f"{type(exc).__name__}: {exc}"[:300]}
            mm.unload_all_models()
        log.info("%s", row)
        rows.append(row)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" and torch.cuda.is_available() else "cpu"
    report = {"device": device_name, "rows": rows, "new_tokens": args.new_tokens, "batch": args.batch,
              "sd_gb": args.sd_gb, "dry_run": args.dry_run}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llm_comfy.json").write_text(json.dumps(report, indent=2))
    (args.out / "llm_comfy.md").write_text(f"Device: {device_name}\n\n" + markdown(rows))
    emit(markdown(rows))
    return 0 if all("failed" not in row for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
