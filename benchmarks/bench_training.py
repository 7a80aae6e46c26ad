"""What one soft-prompt training step costs, and where the time goes: LLM or UNet.

    .venv/bin/python -m benchmarks.bench_training [--steps 5] [--batch-size 6] [--resolution 256]
        [--checkpoint PATH] [--llm PATH] [--negative-weight 0.5] [--device cpu] [--json out.json]

Builds the trainer exactly as ``pmg train`` does (real SmolLM2-135M by default; the tiny
random SD1.5 checkpoint, i.e. a one-level 320-channel UNet with the full CLIP-L and
TAESD, by default) on real Twemoji sticker users, then runs ``--steps`` timed
micro-batches after one warm-up. Inside each micro-batch it times, in the same run:

* LLM forward: ``adapter.encode`` (SmolLM2 with image tokens and the prefix cache);
* UNet forward: the noise predictor call (target + negative in one batch);
* UNet backward: from ``loss.backward()`` until the gradient reaches the soft embeddings
  (an autograd hook on the adapter's output marks that moment);
* LLM backward: from there until ``backward()`` returns;
* optimizer: the AdamW update of the adapter.

Peak memory: the process's peak RSS (``resource.getrusage(...).ru_maxrss``) after model
loading and after the timed steps (torch's CPU tensors bypass ``tracemalloc``, so RSS is
the honest number), plus ``torch.cuda.max_memory_allocated`` on CUDA. Prints a JSON
report with per-part medians and their shares of the step. Not a test: the numbers
depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from pmg_core.assets import smollm2_gguf
from pmg_core.conditioning import DiffusersTextEncoder
from pmg_core.llm import load_llm
from pmg_core.loaders.stickers import build_sticker_histories
from pmg_core.sd_checkpoint import load_sd_components
from pmg_core.soft_prompt import SoftPromptAdapter
from pmg_core.training.components import (
    DiffusersLatentEncoder,
    DiffusersNoisePredictor,
    NoiseSchedule,
)
from pmg_core.training.data import build_examples
from pmg_core.training.trainer import SoftPromptTrainer, TrainConfig
from pmg_tools.report import emit

PARTS = ("llm_forward", "unet_forward", "unet_backward", "llm_backward", "optimizer")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class _Timed:
    """Wraps the trainer's adapter encoder and noise predictor to time them in place."""

    def __init__(self, trainer: SoftPromptTrainer, device: torch.device):
        self.trainer = trainer
        self.device = device
        self.marks: dict[str, float] = {}
        self.encode = trainer.adapter.encode
        self.predict = trainer.noise_predictor
        trainer.adapter.encode = self._encode
        trainer.noise_predictor = self._predict

    def _encode(self, llm, texts):
        _sync(self.device)
        began = time.perf_counter()
        soft = self.encode(llm, texts)
        _sync(self.device)
        self.marks["llm_forward"] = time.perf_counter() - began
        # Fires when the UNet's backward has produced the soft embeddings' gradient.
        soft.register_hook(self._soft_grad_ready)
        return soft

    def _soft_grad_ready(self, grad):
        _sync(self.device)
        self.marks["soft_grad_at"] = time.perf_counter()
        return grad

    def _predict(self, *args):
        _sync(self.device)
        began = time.perf_counter()
        out = self.predict(*args)
        _sync(self.device)
        self.marks["unet_forward"] = self.marks.get("unet_forward", 0.0) + time.perf_counter() - began
        return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed micro-batches (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--negative-weight", type=float, default=0.5)
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="SD1.x .safetensors or diffusers folder (default: tiny SD1.5)")
    parser.add_argument("--llm", type=Path, default=None, help="HF folder or .gguf (default: SmolLM2-135M)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    return parser.parse_args(argv)


def build_trainer(args: argparse.Namespace, device: torch.device) -> SimpleNamespace:
    """The models, the training examples and the trainer, with the seconds loading took."""
    if args.checkpoint is None:
        from pmg_tools.server import ensure_tiny_checkpoint

        args.checkpoint = ensure_tiny_checkpoint()
    began = time.perf_counter()
    generator = load_sd_components(args.checkpoint).to(device)
    llm = load_llm(args.llm or smollm2_gguf(), device=str(device))
    load_seconds = time.perf_counter() - began
    examples = build_examples(build_sticker_histories(n_users=args.users, seed=0), seed=0)
    adapter = SoftPromptAdapter.untrained(llm, generator.text_width, seed=0).to(device)
    config = TrainConfig(batch_size=args.batch_size, grad_accum=1, resolution=args.resolution,
                         negative_weight=args.negative_weight, learning_rate=1e-4)
    trainer = SoftPromptTrainer(
        llm, adapter, DiffusersTextEncoder(generator.tokenizer, generator.text_encoder),
        DiffusersNoisePredictor(generator.unet),
        DiffusersLatentEncoder(generator.vae, generator.latent_scaling, generator.latent_shift),
        NoiseSchedule.from_scheduler(generator.scheduler), config, generator_identity=generator.identity,
    )
    return SimpleNamespace(generator=generator, llm=llm, adapter=adapter, config=config, trainer=trainer,
                           examples=examples, load_seconds=load_seconds)


def time_steps(setup: SimpleNamespace, steps: int, batch_size: int, device: torch.device) -> list[dict]:
    """Seconds of each part of ``steps`` micro-batches, after one untimed warm-up step."""
    trainer, examples = setup.trainer, setup.examples
    timed = _Timed(trainer, device)
    optimizer = torch.optim.AdamW(setup.adapter.parameters(), lr=setup.config.learning_rate,
                                  weight_decay=setup.config.weight_decay)
    rng = torch.Generator().manual_seed(0)
    rows = []
    for step in range(steps + 1):
        batch = [examples[(step * batch_size + i) % len(examples)] for i in range(batch_size)]
        timed.marks = {}
        _sync(device)
        started = time.perf_counter()
        loss, _, _ = trainer.micro_batch_loss(batch, rng)
        _sync(device)
        backward_began = time.perf_counter()
        loss.backward()
        _sync(device)
        backward_done = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        finished = time.perf_counter()
        soft_grad_at = timed.marks["soft_grad_at"]
        row = {
            "llm_forward": timed.marks["llm_forward"],
            "unet_forward": timed.marks["unet_forward"],
            "unet_backward": soft_grad_at - backward_began,
            "llm_backward": backward_done - soft_grad_at,
            "optimizer": finished - backward_done,
            "step": finished - started,
        }
        if step > 0:  # step 0 warms up allocators and kernels
            rows.append(row)
    return rows


def shares(rows: list[dict]) -> dict:
    """Median seconds of each part, its share of a step, and the LLM's share against the UNet's."""
    median = {key: statistics.median(r[key] for r in rows) for key in (*PARTS, "step")}
    llm_total = median["llm_forward"] + median["llm_backward"]
    unet_total = median["unet_forward"] + median["unet_backward"]
    return {
        "median_seconds": {k: round(v, 4) for k, v in median.items()},
        "share_of_step": {k: round(median[k] / median["step"], 3) for k in PARTS},
        "llm_share": round(llm_total / median["step"], 3),
        "unet_share": round(unet_total / median["step"], 3),
        "llm_to_unet_ratio": round(llm_total / unet_total, 3) if unet_total else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    device = torch.device(args.device)
    setup = build_trainer(args, device)
    began = time.perf_counter()
    setup.trainer._encode_all(setup.examples)  # noqa: SLF001 - timed apart: the one-time VAE + CLIP work, cached for the run
    encode_seconds = time.perf_counter() - began
    rss_loaded = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = time_steps(setup, args.steps, args.batch_size, device)
    report = {
        "device": str(device),
        "checkpoint": setup.generator.identity,
        "llm": setup.llm.identity,
        "batch_size": args.batch_size,
        "resolution": args.resolution,
        "negative_weight": args.negative_weight,
        "timed_micro_batches": len(rows),
        "load_seconds": round(setup.load_seconds, 2),
        "encode_images_and_captions_seconds": round(encode_seconds, 2),
        **shares(rows),
        "peak_rss_mb_after_loading": round(rss_loaded, 1),
        "peak_rss_mb_after_training": round(_rss_mb(), 1),
    }
    if device.type == "cuda":
        report["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    text = json.dumps(report, indent=2)
    emit(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
