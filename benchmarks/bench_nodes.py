"""What PMG costs on top of plain txt2img, measured on ONE real ComfyUI server.

    .venv/bin/python -m benchmarks.bench_nodes [--repeats 3] [--checkpoint NAME] [--steps 4] [--size 64] [--json out.json]

Against one embedded server started in a fresh folder (so every PMG cache is empty), it
times, from ``POST /prompt`` to the prompt's end:

* **plain**: ``CheckpointLoaderSimple → CLIPTextEncode ×2 → EmptyLatentImage → KSampler →
  VAEDecode → SaveImage`` with as many images as the PMG run has alphas (3);
* **PMG cold**: ``workflows/api/pmg_movie_poster.json`` for a MovieLens user never seen
  before (LLM keywords and soft prompt computed);
* **PMG warm**: the same users again (keywords and soft prompt read from the disk caches).
* **PMG warm, 1.7B LLM** (``--large-llm``): the same, with PMG LLM Loader given a folder shaped like
  SmolLM2-1.7B (``LlamaConfig`` with 2048 hidden, 24 layers: 1.71B parameters, 3.4 GB of *zero* bf16
  weights, SmolLM2's tokenizer). Its keyword and soft-prompt caches are filled in this process first
  (scripted keywords, random embeddings, under the exact keys the nodes compute), because a warm
  prompt never reads the weights: the condition shows the warm path does not depend on LLM size.
* **plain / PMG warm, live server**: no ``/free`` between prompts, as a studio queue meets the
  server: each prompt is another (returning) user for PMG, another prompt text for plain txt2img,
  and ComfyUI re-runs only the nodes whose inputs changed.

Before every other timed prompt ``/free`` clears ComfyUI's in-memory node cache and unloads the
models, so those conditions execute all of their nodes and reload the checkpoint (and PMG
its LLM); the very first PMG prompt also pays the LLM's first load in the server process
(and its one-time GGUF conversion, if the model cache is empty), reported as "first".
Peak memory is the server process's RSS, sampled every 20 ms by psutil while the prompt
runs. Prints the medians and the ratios PMG / plain. Not a test: numbers depend on the machine.

**Real size** (``--realsize sd15``): the same server with the FULL-SIZE SD1.5 checkpoint of random
weights (``pmg_tools.realsize``, 1.07 B parameters, built once into ``~/.cache/pmg/realsize``), at
512×512 by default, timing what a user's machine sees: **returning user / plain txt2img** (same
images and steps), freed before each prompt and on a live server; **the PMG Scorer's share** of one
generation; peak RSS. The returning users' keywords and soft prompts are computed first by untimed
64-px prompts (the caches do not depend on size or steps), so the timed PMG prompts read them::

    flock /tmp/pmg-bigmem.lock .venv/bin/python -m benchmarks.bench_nodes --realsize sd15 --steps 2 --repeats 2 --alphas 0.5
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from pmg_core.comfy_client.client import ComfyClient
from pmg_tools.demo import DemoSettings, apply_settings, load_api_workflow
from pmg_tools.server import TINY_CHECKPOINT_NAME, EmbeddedComfyUI, install_default_models

log = logging.getLogger("bench_nodes")

REPO = Path(__file__).resolve().parents[1]
ALPHAS = "0.33, 0.5, 0.67"


def plain_graph(checkpoint: str, steps: int, size: int, batch: int, seed: int, prefix: str,
                text: str = "a movie poster of Star Wars, science fiction, space") -> dict:
    """Stock txt2img with the PMG workflow's sampler settings."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality, text, watermark", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
            "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


def pmg_graph(settings: DemoSettings, user: str, seed: int, prefix: str, llm: str | None = None) -> dict:
    # The shared workflow ships for SD1.5 at 512 px; checkpoint, steps and size go in as `--set` overrides.
    graph = apply_settings(load_api_workflow("pmg_movie_poster"), DemoSettings(**{**settings.__dict__, "seed": seed}))
    for node in graph.values():
        if node["class_type"] == "PMGUserHistoryLoader":
            node["inputs"]["user_id"] = user
        if node["class_type"] == "PMGLLMLoader" and llm is not None:
            node["inputs"]["model"] = llm
        if "filename_prefix" in node["inputs"]:
            node["inputs"]["filename_prefix"] = f"bench/{prefix}_{node['inputs']['filename_prefix'].rsplit('/', 1)[-1]}"
    return graph


LARGE_LLM = "pmg-zero-1.7b"
_KEYWORDS = ("space opera\n2. salvage crews\n3. lonely lighthouses\n4. night trains\n5. mystery\n6. red giants\n"
             "7. robots\n8. the sea\n9. birds\n10. colonies")


def build_large_llm(base: Path) -> Path:
    """``models/LLM/pmg-zero-1.7b``: SmolLM2-1.7B's shape, zero bf16 weights, SmolLM2's tokenizer."""
    import torch
    import transformers
    from safetensors.torch import save_file

    from pmg_core.assets import smollm2_gguf
    from pmg_core.llm import open_llm

    folder = base / "models" / "LLM" / LARGE_LLM
    folder.mkdir(parents=True, exist_ok=True)
    config = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=8192, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2,
    )
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in transformers.LlamaForCausalLM(config).state_dict().items()}
    shapes.pop("lm_head.weight", None)  # tied to the embeddings
    save_file({name: torch.zeros(shape, dtype=torch.bfloat16) for name, shape in shapes.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(folder)
    open_llm(smollm2_gguf()).tokenizer.save_pretrained(folder)
    log.info("built %s: %.2fB parameters", folder, sum(int(__import__("math").prod(s)) for s in shapes.values()) / 1e9)
    return folder


def fill_caches(base: Path, llm_folder: Path, users: list[str]) -> None:
    """Keyword and soft-prompt cache entries of ``users`` for the LLM in ``llm_folder``, as the nodes key them."""
    import torch

    from pmg_core.keywords import KeywordExtractor
    from pmg_core.llm import open_llm
    from pmg_core.loaders import load_user
    from pmg_core.soft_prompt import AdapterSource, save_soft_embeddings, soft_cache_key

    llm = open_llm(llm_folder)
    llm.generate = lambda prompts, **_: [_KEYWORDS] * len(prompts)  # scripted: the weights stay unread
    cache = base / "user" / "pmg_cache"
    extractor = KeywordExtractor(llm, cache_dir=cache)  # the workflow's settings are the defaults
    adapter = AdapterSource(None, 4, 0).identity()
    for user in users:
        history = load_user(base / "input" / "pmg" / "movielens.jsonl", user, scene="movie")
        preference = extractor.extract(history)
        key = soft_cache_key(adapter, llm.identity, preference.soft_prompt_text, 768)
        save_soft_embeddings(cache / "soft_prompts" / f"{key}.safetensors", torch.randn(1, 4, 768) * 0.02,
                             {"llm_identity": llm.identity, "cache_key": key})
    assert not llm.loaded


class PeakRSS:
    """Samples a process's resident memory in a thread; ``peak`` is the largest value seen (bytes)."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Condition:
    name: str
    seconds: list[float] = field(default_factory=list)
    peak_rss: list[int] = field(default_factory=list)
    node_seconds: dict[str, list[float]] = field(default_factory=dict)  # class_type -> one total per run

    def add_node_times(self, times: dict[str, float]) -> None:
        for node, seconds in times.items():
            self.node_seconds.setdefault(node, []).append(seconds)

    def node_medians(self) -> dict[str, float]:
        return {node: round(statistics.median(values), 3) for node, values in self.node_seconds.items()}

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def peak_mib(self) -> float:
        return max(self.peak_rss) / 2**20

    def to_dict(self) -> dict:
        return {"runs_s": [round(s, 3) for s in self.seconds], "median_s": round(self.median_s, 3),
                "peak_rss_mib": round(self.peak_mib, 1), "node_median_s": self.node_medians()}


class NodeClock:
    """Per-node wall time from the ``/ws`` events: a node runs from its ``executing`` event to the next event.

    Times are summed by class type (PMG Conditioning, KSampler, ...); ComfyUI's cached nodes send no
    ``executing`` event and count nothing.
    """

    def __init__(self, graph: dict):
        self.graph = graph
        self.marks: list[tuple[float, str | None]] = []

    def on_event(self, event: dict) -> None:
        if event["type"] in ("executing", "execution_cached", "execution_success", "executed"):
            node = (event.get("data") or {}).get("node") if event["type"] == "executing" else None
            self.marks.append((time.monotonic(), node))

    def totals(self, ended: float) -> dict[str, float]:
        totals: dict[str, float] = {}
        following = [mark[0] for mark in self.marks[1:]] + [ended]
        for (began, node), until in zip(self.marks, following, strict=True):
            if node is not None and node in self.graph:
                kind = self.graph[node]["class_type"]
                totals[kind] = totals.get(kind, 0.0) + until - began
        return totals


def timed(client: ComfyClient, pid: int, graph: dict, condition: Condition, warm: bool = False, free: bool = True) -> None:
    """Run ``graph`` and record its wall time, peak RSS and node times; first clear ComfyUI's node cache
    and unload the models, unless ``free`` is False (a live server: what did not change stays cached)."""
    if free:
        client.free(unload_models=True, free_memory=True)
        time.sleep(1.5)  # the worker applies /free between prompts; let it finish before timing
    clock = NodeClock(graph)
    with PeakRSS(pid) as memory, client.connect() as events:
        began = time.monotonic()
        entry = client.wait(client.queue_prompt(graph), timeout=900, on_progress=clock.on_event, events=events)
        ended = time.monotonic()
        elapsed = ended - began
    if entry["status"]["status_str"] != "success":
        raise RuntimeError(f"{condition.name}: the prompt failed: {entry['status']}")
    if warm:  # a warm prompt that ran the LLM would not measure the warm path
        reports = [out[key][0] for out in entry["outputs"].values() for key in ("pmg_keywords", "pmg_soft_prompt")
                   if key in out]
        llm_work = [r for r in reports if r.get("llm_batches") or r.get("cached") is False
                    or (r.get("llm") or {}).get("weight_loads")]
        if len(reports) != 2 or llm_work:
            raise RuntimeError(f"{condition.name}: the warm prompt was not served from the caches: {reports}")
    condition.seconds.append(elapsed)
    condition.peak_rss.append(memory.peak)
    condition.add_node_times(clock.totals(ended))
    log.info("%s: %.2f s, peak RSS %.0f MiB", condition.name, elapsed, memory.peak / 2**20)


def benchmark(repeats: int, settings: DemoSettings, base: Path, users: list[str], large_llm: bool = False) -> dict:
    settings = settings.resolved()
    install_default_models(base)  # also the scorer's tiny CLIP
    if large_llm:
        fill_caches(base, build_large_llm(base), users[1 : 1 + repeats])
    with EmbeddedComfyUI(base_dir=base) as server:
        client = ComfyClient(server.url)
        pid = server.pid
        batch = len([a for a in settings.alphas.split(",") if a.strip()])
        # Warm-up: imports, torch kernels and the first checkpoint load are not what we compare.
        warmup = plain_graph(settings.checkpoint, settings.steps, settings.size, batch, 999, "bench/warmup")
        client.wait(client.queue_prompt(warmup))

        first, plain = Condition("PMG first (first LLM load)"), Condition("plain")
        cold, warm = Condition("PMG cold"), Condition("PMG warm")
        timed(client, pid, pmg_graph(settings, users[0], 0, "first"), first)
        cold_users = users[1 : 1 + repeats]
        for i in range(repeats):
            plain_i = plain_graph(settings.checkpoint, settings.steps, settings.size, batch, i, f"bench/plain{i}")
            timed(client, pid, plain_i, plain)
            timed(client, pid, pmg_graph(settings, cold_users[i], i, f"cold{i}"), cold)
        large = Condition("PMG warm, 1.7B LLM")
        for i in range(repeats):
            plain_i = plain_graph(settings.checkpoint, settings.steps, settings.size, batch, 50 + i, f"bench/plainw{i}")
            timed(client, pid, plain_i, plain)
            timed(client, pid, pmg_graph(settings, cold_users[i], 100 + i, f"warm{i}"), warm, warm=True)
            if large_llm:
                timed(client, pid, pmg_graph(settings, cold_users[i], 200 + i, f"large{i}", LARGE_LLM), large, warm=True)
        # A live server, as a studio queue meets it: nothing freed between prompts, so ComfyUI keeps the
        # checkpoint and every node output whose inputs did not change. Each prompt is another user:
        # PMG gets a returning user, plain txt2img a prompt text of its own (the negative stays cached).
        live_plain, live_warm = Condition("plain, live server"), Condition("PMG warm, live server")
        for i in range(repeats):
            text = f"a movie poster, user {cold_users[i]}, science fiction, space"
            timed(client, pid, plain_graph(settings.checkpoint, settings.steps, settings.size, batch, 300 + i,
                                           "bench/live_plain", text), live_plain, free=False)
            timed(client, pid, pmg_graph(settings, cold_users[i], 300 + i, "live"), live_warm, warm=True, free=False)
        stats = client.system_stats()
    extra = [large] if large_llm else []
    ratios_large = ({"time_warm_1.7b_over_plain": round(large.median_s / plain.median_s, 2),
                     "peak_rss_warm_1.7b_over_plain": round(large.peak_mib / plain.peak_mib, 2)} if large_llm else {})
    return {
        "settings": {"checkpoint": settings.checkpoint, "steps": settings.steps, "size": settings.size,
                     "images": batch, "repeats": repeats},
        "device": stats.get("devices", [{}])[0].get("name"),
        "conditions": {c.name: c.to_dict() for c in (plain, cold, warm, *extra, first, live_plain, live_warm)},
        "ratios": {
            "time_cold_over_plain": round(cold.median_s / plain.median_s, 2),
            "time_warm_over_plain": round(warm.median_s / plain.median_s, 2),
            "time_warm_over_plain_live_server": round(live_warm.median_s / live_plain.median_s, 2),
            "peak_rss_cold_over_plain": round(cold.peak_mib / plain.peak_mib, 2),
            "peak_rss_warm_over_plain": round(warm.peak_mib / plain.peak_mib, 2),
            **ratios_large,
        },
    }


def realsize_benchmark(repeats: int, settings: DemoSettings, base: Path, users: list[str]) -> dict:
    """Returning user / plain txt2img on a full-size checkpoint (already in ``base``), freed and live."""
    settings = settings.resolved()
    install_default_models(base)
    with EmbeddedComfyUI(base_dir=base) as server:
        client = ComfyClient(server.url)
        pid = server.pid
        batch = len([a for a in settings.alphas.split(",") if a.strip()])
        returning = users[:repeats]
        # Untimed: the imports, the first checkpoint load, and each returning user's keywords and soft prompt
        # (computed once at 64 px and 1 step: the caches are keyed by user and LLM, not by size or steps).
        client.wait(client.queue_prompt(plain_graph(settings.checkpoint, 1, 64, batch, 999, "bench/warmup")), timeout=900)
        primer = DemoSettings(settings.checkpoint, 1, 64, settings.alphas)
        for i, user in enumerate(returning):
            entry = client.wait(client.queue_prompt(pmg_graph(primer, user, 900 + i, f"prime{i}")), timeout=900)
            if entry["status"]["status_str"] != "success":
                raise RuntimeError(f"priming user {user} failed: {entry['status']}")
        plain, warm = Condition("plain"), Condition("PMG returning user")
        for i, user in enumerate(returning):
            plain_i = plain_graph(settings.checkpoint, settings.steps, settings.size, batch, i, f"bench/plain{i}")
            timed(client, pid, plain_i, plain)
            timed(client, pid, pmg_graph(settings, user, i, f"warm{i}"), warm, warm=True)
        live_plain, live_warm = Condition("plain, live server"), Condition("PMG returning user, live server")
        for i, user in enumerate(returning):
            text = f"a movie poster, user {user}, science fiction, space"
            timed(client, pid, plain_graph(settings.checkpoint, settings.steps, settings.size, batch, 300 + i,
                                           "bench/live_plain", text), live_plain, free=False)
            timed(client, pid, pmg_graph(settings, user, 300 + i, "live"), live_warm, warm=True, free=False)
        stats = client.system_stats()
    scorer = warm.node_seconds.get("PMGScorer", [])
    return {
        "settings": {"checkpoint": settings.checkpoint, "steps": settings.steps, "size": settings.size,
                     "images": batch, "repeats": repeats},
        "device": stats.get("devices", [{}])[0].get("name"),
        "conditions": {c.name: c.to_dict() for c in (plain, warm, live_plain, live_warm)},
        "ratios": {
            "time_returning_over_plain": round(warm.median_s / plain.median_s, 3),
            "time_returning_over_plain_live_server": round(live_warm.median_s / live_plain.median_s, 3),
            "peak_rss_returning_over_plain": round(warm.peak_mib / plain.peak_mib, 3),
            # PMG Scorer's time over the whole returning-user prompt (checkpoint load included: freed before it).
            "scorer_share_of_generation": round(statistics.median(scorer) / warm.median_s, 4) if scorer else None,
            "scorer_share_of_generation_live_server": round(
                statistics.median(live_warm.node_seconds.get("PMGScorer", [0.0])) / live_warm.median_s, 4),
        },
    }


def place_realsize_checkpoint(family: str, base: Path) -> str:
    """Build (once, cached) the full-size ``family`` checkpoint and put it in ``base``; returns its name."""
    from pmg_core.atomic import copy_atomic
    from pmg_tools.realsize import FAMILIES, ensure_realsize_checkpoint

    name = FAMILIES[family].file_name
    copy_atomic(ensure_realsize_checkpoint(family), base / "models" / "checkpoints" / name, link=True)
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per condition (default 3)")
    parser.add_argument("--checkpoint", default=TINY_CHECKPOINT_NAME)
    parser.add_argument("--steps", type=int, help="default: 4 for the tiny checkpoint, 20 otherwise")
    parser.add_argument("--size", type=int, help="default: 64 for the tiny checkpoint, 512 otherwise")
    parser.add_argument("--users", default="1,2,3,4,5,6,7,8,9", help="MovieLens users, never seen by this server")
    parser.add_argument("--base", type=Path, help="server folder (default: a fresh temporary one, so caches start empty)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--large-llm", action="store_true",
                        help="also time the warm path with a 1.7B-shaped LLM folder (3.4 GB written to --base)")
    parser.add_argument("--alphas", default=ALPHAS,
                        help=f"PMG's alpha list, one image each; plain txt2img makes as many (default {ALPHAS!r})")
    parser.add_argument("--realsize", choices=["sd15"],
                        help="time returning user / plain txt2img on this FULL-SIZE random-weight checkpoint "
                             "(pmg_tools.realsize; default size 512, steps 4; ~7 GB of memory: run under "
                             "flock /tmp/pmg-bigmem.lock on a shared machine)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    users = [u.strip() for u in args.users.split(",") if u.strip()]
    if args.realsize:
        with tempfile.TemporaryDirectory(prefix="pmg-bench-") as temporary:
            base = args.base or Path(temporary)
            checkpoint = place_realsize_checkpoint(args.realsize, base)
            settings = DemoSettings(checkpoint=checkpoint, steps=args.steps or 4, size=args.size or 512, alphas=args.alphas)
            result = realsize_benchmark(args.repeats, settings, base, users)
        return report(result, args.json)
    if len(users) < args.repeats + 1:
        parser.error(f"--users needs at least {args.repeats + 1} ids (one for the first run, then one per repeat)")
    settings = DemoSettings(checkpoint=args.checkpoint, steps=args.steps, size=args.size, alphas=args.alphas)
    with tempfile.TemporaryDirectory(prefix="pmg-bench-") as temporary:
        result = benchmark(args.repeats, settings, args.base or Path(temporary), users, args.large_llm)
    return report(result, args.json)


def report(result: dict, json_path: Path | None) -> int:
    """Print the medians, ratios and per-node times; write ``result`` to ``json_path`` if given."""
    conditions = result["conditions"]
    out = sys.stdout
    out.write(f"settings: {json.dumps(result['settings'])}, device {result['device']}\n")
    out.write(f"{'condition':32} {'median s':>9} {'peak RSS MiB':>13}\n")
    for name, values in conditions.items():
        out.write(f"{name:32} {values['median_s']:9.2f} {values['peak_rss_mib']:13.0f}\n")
    for name, value in result["ratios"].items():
        out.write(f"{name:40} {value}\n")
    out.write("\nmedian seconds per node (summed by class type)\n")
    for name, values in conditions.items():
        nodes = ", ".join(f"{node} {seconds:.2f}" for node, seconds in values["node_median_s"].items())
        out.write(f"{name:32} {nodes}\n")
    if json_path:
        json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
