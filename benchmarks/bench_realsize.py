"""Full-size txt2img with and without PMG, in one ComfyUI process: seconds per prompt and peak memory.

    .venv/bin/python -m benchmarks.bench_realsize --device cuda --out $OUT/bench_realsize.json
    .venv/bin/python -m benchmarks.bench_realsize --device cpu --size 64 --steps 1 --repeats 1   # CPU smoke run

``--device cuda`` is the GPU check's mode: SDXL base at 1024×1024 (default 20 steps), a full-size
checkpoint with RANDOM weights built by ``pmg_tools.realsize`` (cached in ``~/.cache/pmg/realsize``;
the first build takes a minute or two), loaded with ComfyUI's stock ``CheckpointLoaderSimple`` from
the ComfyUI source in ``.cache/comfyui``, with this pack imported as ComfyUI imports it. It times,
side by side, after one untimed run of each:

* **plain**: ``CLIPTextEncode ×2 → EmptyLatentImage → KSampler → VAEDecode`` with as many images as PMG has alphas;
* **PMG, returning user**: ``PMG Soft Prompt Encoder → PMG Conditioning → KSampler → VAEDecode → PMG Scorer``
  for a MovieLens user whose keywords the PMG Preference Extractor (SmolLM2-135M, the offline
  default LLM) computed in the untimed run;

and reports the median seconds, the ratio PMG / plain, the PMG Scorer's share of a PMG prompt and the
peak memory of each: on CUDA the peak allocated and reserved VRAM (``torch.cuda.max_memory_*``) and the
device's total; on the CPU the process's peak RSS. Nodes run one after another under
``torch.inference_mode()``, as ComfyUI's executor runs them, with a device synchronise at each node's
end. ``--out`` takes a file (or a folder, which gets ``bench_realsize.json``); the JSON is also printed.
Random weights: the images are noise; the costs are the real model's. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pmg_tools.comfy_source import DEFAULT_COMFY_DIR, ensure_comfy_source_first, import_comfy_package
from pmg_tools.realsize import FAMILIES, ensure_realsize_checkpoint
from pmg_tools.report import emit
from pmg_tools.server import EXAMPLE_MOVIELENS, install_default_models
from pmg_tools.tiny_models.clip import TINY_CLIP_NAME

log = logging.getLogger("bench_realsize")

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui_pmg"
ALPHAS = "0.33, 0.5, 0.67"
PLAIN_TEXT = "a movie poster of Star Wars, science fiction, space"
NEGATIVE_TEXT = "blurry, low quality, text, watermark"


def start_comfy(device: str, family: str, base: Path):
    """ComfyUI's modules in this process, its folders under ``base``, then the pack imported as ComfyUI does."""
    comfy = import_comfy_package(DEFAULT_COMFY_DIR, cpu=device == "cpu")
    if device == "cpu" and FAMILIES[family].dtype == "bfloat16":
        comfy.cli_args.args.bf16_unet = True  # as `--bf16-unet`: fp32 SDXL needs 10 GB for the UNet alone
    import folder_paths

    for name in ("input", "output", "temp", "user"):
        (base / name).mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(str(base / "input"))
    folder_paths.set_output_directory(str(base / "output"))
    folder_paths.set_temp_directory(str(base / "temp"))
    folder_paths.set_user_directory(str(base / "user"))
    folder_paths.models_dir = str(base / "models")  # the pack registers models/LLM and models/pmg under it
    folder_paths.add_model_folder_path("checkpoints", str(base / "models" / "checkpoints"), is_default=True)
    import nodes as comfy_nodes  # ComfyUI's top-level nodes module, before the pack's own nodes package

    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = pack
    spec.loader.exec_module(pack)
    extension = asyncio.run(pack.comfy_entrypoint())
    pmg_nodes = {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}
    return comfy_nodes, pmg_nodes


class Meter:
    """Wall time of a block, with the device synchronised at its end, and the peak memory over all blocks."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.cuda = device == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> dict:
        if self.cuda:
            return {"peak_allocated_gib": round(self.torch.cuda.max_memory_allocated() / 2**30, 2),
                    "peak_reserved_gib": round(self.torch.cuda.max_memory_reserved() / 2**30, 2)}
        import resource

        return {"peak_rss_gib_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def run_graph(steps: list, meter: Meter) -> tuple[float, dict[str, float], object]:
    """Run ``(name, callable)`` steps in order, each fed the previous results; seconds in total and per step."""
    import torch

    per_node: dict[str, float] = {}
    results: dict = {}
    meter.sync()
    began = time.perf_counter()
    with torch.inference_mode():
        for name, step in steps:
            start = time.perf_counter()
            results[name] = step(results)
            meter.sync()
            per_node[name] = per_node.get(name, 0.0) + time.perf_counter() - start
    return time.perf_counter() - began, per_node, results


class Graphs:
    """The two workflows as ``(node, callable)`` steps: ComfyUI's stock nodes and the pack's, one loaded checkpoint."""

    def __init__(self, args, comfy_nodes, pmg: dict, checkpoint: tuple):
        self.args, self.comfy_nodes, self.pmg = args, comfy_nodes, pmg
        self.model, self.clip, self.vae = checkpoint
        self.batch = len([a for a in ALPHAS.split(",") if a.strip()])
        self.keywords_of_first_run: dict = {}
        self.history = None  # the user's history, loaded once before the timed runs

    def load_history(self) -> tuple:
        return self.pmg["PMGUserHistoryLoader"].execute(
            history_file=EXAMPLE_MOVIELENS, format="auto", user_id=self.args.user, max_items=0, scene="movie").result

    def preference(self, r):
        """The extractor's output in the first (keyword) run; afterwards the same, as a returning user's cache hit."""
        return r["PMGPreferenceExtractor"] if "PMGPreferenceExtractor" in r else self.keywords_of_first_run["preference"]

    def sample(self, positive, negative, seed: int):
        size, nodes = self.args.size, self.comfy_nodes
        (latent,) = nodes.EmptyLatentImage().generate(size, size, self.batch)
        return nodes.KSampler().sample(self.model, seed, self.args.steps, 5.0, "euler", "normal", positive, negative,
                                       latent)[0]

    def plain_steps(self, seed: int) -> list:
        nodes, clip = self.comfy_nodes, self.clip
        return [
            ("CLIPTextEncode", lambda r: (nodes.CLIPTextEncode().encode(clip, f"{PLAIN_TEXT}, {seed}")[0],
                                          nodes.CLIPTextEncode().encode(clip, NEGATIVE_TEXT)[0])),
            ("KSampler", lambda r: self.sample(r["CLIPTextEncode"][0], r["CLIPTextEncode"][1], seed)),
            ("VAEDecode", lambda r: nodes.VAEDecode().decode(self.vae, r["KSampler"])[0]),
        ]

    def keyword_steps(self) -> list:
        """History, LLM and extractor: the first run only (a returning user's keywords are cached)."""
        from pmg_core.assets import smollm2_gguf

        pmg = self.pmg
        return [
            ("PMGUserHistoryLoader", lambda r: self.load_history()),
            ("PMGLLMLoader", lambda r: pmg["PMGLLMLoader"].execute(model=smollm2_gguf().name, device="auto").result[0]),
            ("PMGPreferenceExtractor", lambda r: pmg["PMGPreferenceExtractor"].execute(
                history=r["PMGUserHistoryLoader"][0], llm=r["PMGLLMLoader"], n_preference=8, n_target=10, seed=0,
                max_new_tokens=100, keep_model_loaded=False).result[2]),
        ]

    def pmg_steps(self, seed: int, keywords: bool) -> list:
        pmg, clip = self.pmg, self.clip
        return (self.keyword_steps() if keywords else []) + [
            ("PMGSoftPromptEncoder", lambda r: pmg["PMGSoftPromptEncoder"].execute(
                preference=self.preference(r), adapter="random (untrained, research)", clip=clip, num_image_tokens=4,
                seed=0).result[0]),
            ("PMGConditioning", lambda r: pmg["PMGConditioning"].execute(
                clip=clip, w_target=1.0, w_soft=1.0, w_preference=1.0, alphas=ALPHAS, preference=self.preference(r),
                soft_prompt=r["PMGSoftPromptEncoder"]).result),
            ("KSampler", lambda r: self.sample(r["PMGConditioning"][0], r["PMGConditioning"][1], seed)),
            ("VAEDecode", lambda r: self.comfy_nodes.VAEDecode().decode(self.vae, r["KSampler"])[0]),
            # As the movie workflow scores: MovieLens has no posters, so CLIP texts (the offline tiny CLIP).
            ("PMGScorer", lambda r: pmg["PMGScorer"].execute(
                images=r["VAEDecode"], history_images=self.history[2], preference=self.preference(r),
                alphas=r["PMGConditioning"][3], alpha=0.67, lpips_net="alex", filename_prefix="bench/realsize",
                clip_model=TINY_CLIP_NAME).args),
        ]


def load_graphs(args, base: Path) -> tuple[Graphs, dict]:
    """The full-size checkpoint in ComfyUI's folders under ``base``, loaded by the stock loader; what it took."""
    import torch

    from pmg_core.atomic import copy_atomic

    spec = FAMILIES[args.family]
    install_default_models(base)  # the offline LLM, the example histories, the scorer's tiny CLIP
    copy_atomic(ensure_realsize_checkpoint(args.family), base / "models" / "checkpoints" / spec.file_name, link=True)
    comfy_nodes, pmg = start_comfy(args.device, args.family, base)
    began = time.perf_counter()
    with torch.inference_mode():
        checkpoint = comfy_nodes.CheckpointLoaderSimple().load_checkpoint(spec.file_name)[:3]
    loaded = {"checkpoint_load_s": round(time.perf_counter() - began, 2),
              "detected_model_class": type(checkpoint[0].model.model_config).__name__}
    return Graphs(args, comfy_nodes, pmg, checkpoint), loaded


def time_conditions(graphs: Graphs, meter: Meter, repeats: int) -> dict:
    """The untimed first runs (kernels, the user's keywords, the soft prompt cache), then plain and PMG in turn."""
    import torch

    with torch.inference_mode():
        graphs.history = graphs.load_history()
    first_pmg = run_graph(graphs.pmg_steps(10_000, keywords=True), meter)
    graphs.keywords_of_first_run["preference"] = first_pmg[2]["PMGPreferenceExtractor"]
    run_graph(graphs.plain_steps(10_001), meter)
    runs = {"plain": ([], [], {}), "pmg_returning_user": ([], [], {})}
    for i in range(repeats):
        for name, steps in (("plain", graphs.plain_steps(i)), ("pmg_returning_user", graphs.pmg_steps(i, keywords=False))):
            meter.reset_peak()
            seconds, nodes, _ = run_graph(steps, meter)
            runs[name][0].append(seconds), runs[name][1].append(nodes)
            runs[name][2].update(meter.peak())
        log.info("repeat %d: plain %.2f s, PMG %.2f s", i, runs["plain"][0][-1], runs["pmg_returning_user"][0][-1])
    return {"first_pmg_s (keywords by the LLM, untimed warm-up)": round(first_pmg[0], 2), **{
        name: {"median_s": round(statistics.median(seconds), 3), "runs_s": [round(s, 3) for s in seconds],
               "node_median_s": medians(nodes), **peak}
        for name, (seconds, nodes, peak) in runs.items()}}


def medians(runs: list[dict]) -> dict:
    return {name: round(statistics.median(run[name] for run in runs), 3) for name in runs[0]}


def benchmark(args, base: Path) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    graphs, loaded = load_graphs(args, base)
    timed = time_conditions(graphs, Meter(args.device), args.repeats)
    result = {
        "family": args.family, "detected_model_class": loaded["detected_model_class"], "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "settings": {"size": args.size, "steps": args.steps, "images": graphs.batch, "repeats": args.repeats,
                     "alphas": ALPHAS, "unet_dtype": str(graphs.model.model.get_dtype())},
        "checkpoint_load_s": loaded["checkpoint_load_s"],
        "plain": timed["plain"],
        "pmg_returning_user": timed["pmg_returning_user"],
        "first_pmg_s (keywords by the LLM, untimed warm-up)": timed["first_pmg_s (keywords by the LLM, untimed warm-up)"],
    }
    result["ratio_pmg_over_plain"] = round(result["pmg_returning_user"]["median_s"] / result["plain"]["median_s"], 3)
    result["scorer_share_of_pmg_prompt"] = round(
        result["pmg_returning_user"]["node_median_s"]["PMGScorer"] / result["pmg_returning_user"]["median_s"], 4)
    if args.device == "cuda":
        _, total = torch.cuda.mem_get_info()
        result["vram_total_gib"] = round(total / 2**30, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_realsize",
        description=__doc__.split("\n\n")[0] + " The GPU check (scripts/gpu_check.sh) runs "
        "`python -m benchmarks.bench_realsize --device cuda --out $OUT/...`: SDXL base at 1024 px, 20 steps, "
        "3 images, plain txt2img vs PMG for a returning user, seconds, PMG/plain, the scorer's share and peak VRAM "
        "(random weights from pmg_tools.realsize; a few minutes on one GPU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="where ComfyUI runs the models")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="sdxl", help="full-size checkpoint family")
    parser.add_argument("--size", type=int, help="image side in pixels (default: 1024 for sdxl, 512 otherwise)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps of each prompt")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each condition")
    parser.add_argument("--user", default="1", help="MovieLens user of the PMG prompts")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--base", type=Path, help="ComfyUI folders (default: a fresh temporary one)")
    parser.add_argument("--out", type=Path, help="write the JSON here (a file, or a folder for bench_realsize.json)")
    args = parser.parse_args(argv)
    args.size = args.size or (1024 if args.family == "sdxl" else 512)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ensure_comfy_source_first("benchmarks.bench_realsize", sys.argv[1:] if argv is None else argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device here; run it on a GPU machine, or use --device cpu")
    with tempfile.TemporaryDirectory(prefix="pmg-bench-realsize-") as temporary:
        result = benchmark(args, args.base or Path(temporary))
    text = json.dumps(result, indent=2)
    emit(text)
    if args.out is not None:
        target = args.out / "bench_realsize.json" if args.out.is_dir() or not args.out.suffix else args.out
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
