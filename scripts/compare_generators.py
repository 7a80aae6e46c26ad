"""Responsiveness and Fréchet distance of two or more sticker generator files, same seed, side by side.

    .venv/bin/python -m scripts.compare_generators models/generators/pmg-sticker-generator.safetensors \
        runs/decoder-ft/pmg-sticker-generator.safetensors --json runs/compare.json

Each file draws one sticker for every held-out emoji name (seed 0, 20 Euler steps, cfg 5), judged by the
category judge; with ``--images validation``, one for every emoji of the train split's validation tenth
instead: the set a choice between candidate files is made on, so that the held-out emoji stay a test set.
The report also holds the autoencoder's ceiling on the same images (reconstruction LPIPS, SSIM, L1 and
its Fréchet distance). Files whose denoisers are equal (e.g. a decoder fine-tuned from the other) share
the sampled latents: only their decoders differ, so only the decoding is redone. Used to decide which
generator file ships (models/README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pmg_tools.report import emit

REPO = Path(__file__).resolve().parents[1]


def _same_weights(a, b) -> bool:
    import torch

    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def main() -> None:
    import torch

    from pmg_core.evaluation.judge import load_judge
    from pmg_core.evaluation.responsiveness import responsiveness_report
    from pmg_core.evaluation.sticker_eval import StickerPipeline
    from pmg_core.metrics.lpips import LPIPS
    from pmg_core.sticker_model.dataset import split, validation_slice
    from pmg_core.sticker_model.text_encoder import MiniLMTextEncoder
    from pmg_core.sticker_model.weights import load_sticker_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("generators", nargs="+", type=Path)
    parser.add_argument("--judge", type=Path, default=REPO / "models" / "judges" / "pmg-sticker-judge.safetensors")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--images", choices=("held-out", "validation"), default="held-out",
                        help="the held-out emoji (the test set), or the train split's validation tenth (to choose on)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    trained, held_out = split()
    images = held_out if args.images == "held-out" else validation_slice(trained)[1]
    judge, lpips, encoder = load_judge(args.judge), LPIPS("alex"), MiniLMTextEncoder()
    results, sampled = {}, []  # sampled: (denoiser, latents) of the files done so far
    for path in args.generators:
        generator = load_sticker_model(path)
        latents = next((done for denoiser, done in sampled if _same_weights(denoiser, generator.denoiser)), None)
        report = responsiveness_report(StickerPipeline(generator, encoder), judge, lpips, images, latents=latents)
        report.pop("images"), report.pop("real")
        sampled.append((generator.denoiser, report.pop("latents")))
        report["latents_shared"] = latents is not None
        results[str(path)] = report
        logging.info("%s: %s", path, json.dumps(report))
    args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    emit(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
