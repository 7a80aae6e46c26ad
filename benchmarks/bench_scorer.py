"""What PMG's scoring costs, beside one generation, measured in one process.

    .venv/bin/python -m benchmarks.bench_scorer [--repeats 5] [--threads 1] [--json out.json]

Conditions, timed side by side (median of ``--repeats``, after one untimed warm-up each):

* **scorer, batched**: :func:`pmg_core.metrics.score_candidates` as PMG Scorer calls it —
  3 candidates against 8 history images and the target image, LPIPS (AlexNet) + SSIM: every
  image through the network once, the pairs formed from stored features;
* **scorer, per-pair loop**: the same 27 LPIPS and 27 SSIM values, one ``distance``/``ssim``
  call per pair (each pair's two images through the network again);
* **one generation**: the shipped sticker generator drawing the 3 candidates the sticker
  workflow draws (64 px, 20 Euler steps, cfg 5, MiniLM text encoding included).

Candidates are 64 px (the sticker workflow's size) and history images 256 px (what PMG User
History Loader gives), so the scorer also pays the resize, as in the node. Prints a table and
the two ratios the performance targets are about. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pmg_core.metrics import LPIPS, score_candidates
from pmg_core.metrics.ssim import ssim

log = logging.getLogger("bench_scorer")

REPO = Path(__file__).resolve().parents[1]
CANDIDATES, HISTORY = 3, 8


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: first-call allocations and kernel choices are not what we compare
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def per_pair_loop(lpips: LPIPS, candidates: torch.Tensor, references: torch.Tensor) -> tuple[list[float], list[float]]:
    """Every (candidate, reference) pair on its own: what scoring costs without batching."""
    distances, similarities = [], []
    for candidate in candidates:
        for reference in references:
            distances.append(float(lpips.distance(candidate[None], reference[None])))
            similarities.append(float(ssim(candidate[None], reference[None])))
    return distances, similarities


def sticker_generation(count: int) -> Callable[[], torch.Tensor]:
    from pmg_core.evaluation.sticker_eval import StickerPipeline
    from pmg_core.sticker_model.text_encoder import MiniLMTextEncoder
    from pmg_core.sticker_model.weights import load_sticker_model

    sticker_model = load_sticker_model(REPO / "models" / "generators" / "pmg-sticker-generator.safetensors")
    pipeline = StickerPipeline(sticker_model, MiniLMTextEncoder())

    def generate() -> torch.Tensor:
        condition = pipeline.encoder.encode(["a cute emoji, sticker, white background, cat face"]).embeddings
        return pipeline.generate(condition, seed=0, count=count, steps=20, cfg=5.0)

    return generate


def benchmark(repeats: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    candidates = torch.rand(CANDIDATES, 3, 64, 64, generator=generator)
    history = torch.rand(HISTORY, 3, 256, 256, generator=generator)
    target = torch.rand(1, 3, 256, 256, generator=generator)
    references = torch.cat([history, target])
    lpips = LPIPS("alex")

    batched = median_seconds(lambda: score_candidates(candidates, history, target, lpips=lpips), repeats)
    looped = median_seconds(lambda: per_pair_loop(lpips, candidates, references), repeats)
    generation = median_seconds(sticker_generation(CANDIDATES), repeats)

    # The two ways must agree, or the comparison means nothing.
    report = score_candidates(candidates, history, target, lpips=lpips)
    loop_lpips, _ = per_pair_loop(lpips, candidates, references)
    batched_history = [c.lpips_history for c in report.candidates]
    looped_history = [statistics.fmean(loop_lpips[i * (HISTORY + 1) : i * (HISTORY + 1) + HISTORY]) for i in range(CANDIDATES)]
    agree = max(abs(a - b) for a, b in zip(batched_history, looped_history, strict=True))
    return {
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "seconds": {"scorer_batched": batched, "scorer_per_pair": looped, "generation_3_stickers": generation},
        "ratios": {"scorer_over_generation": batched / generation, "per_pair_over_batched": looped / batched},
        "max_lpips_difference_batched_vs_loop": agree,
    }


def print_table(result: dict) -> None:
    seconds, ratios = result["seconds"], result["ratios"]
    rows = [
        ("PMG scorer, batched (3 candidates × 8 history + target)", seconds["scorer_batched"]),
        ("the same values, one pair at a time", seconds["scorer_per_pair"]),
        ("one generation: 3 stickers, 64 px, 20 steps", seconds["generation_3_stickers"]),
    ]
    lines = ["| condition | median s |", "|---|---:|", *(f"| {name} | {value:.3f} |" for name, value in rows), ""]
    lines += [
        f"scorer / one generation: {100 * ratios['scorer_over_generation']:.1f} % (target < 5 %)",
        f"per-pair loop / batched: {ratios['per_pair_over_batched']:.1f}× (target ≥ 5×)",
        f"largest LPIPS difference between the two: {result['max_lpips_difference_batched_vs_loop']:.2e}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: as the tests and the server here)")
    parser.add_argument("--json", type=Path, help="also write the result as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    result = benchmark(args.repeats)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
