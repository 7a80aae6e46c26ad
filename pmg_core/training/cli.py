"""``pmg train``: train a soft-prompt adapter from the command line.

    pmg train --stickers 200 --checkpoint models/checkpoints/sd15.safetensors --out runs/stickers
    pmg train --history users.jsonl --checkpoint sd15-diffusers/ --llm SmolLM2.gguf --out runs/a --steps 500

Progress goes to stderr (tqdm), one JSON summary to stdout; bad input ends with
a one-line ``error: ...`` and exit status 1. ``python -m pmg_core.training.cli``
runs the same command on its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..cli_common import BUILTIN_STICKERS, add_llm_source_args, build_parser, load_cli_llm, run
from ..errors import InvalidSettingError
from ..progress import stderr_bar, tqdm_progress

log = logging.getLogger("pmg.train")


def register(subparsers) -> None:
    """Add the ``train`` subcommand to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser("train", help="train a soft-prompt adapter (safetensors + loss.csv + loss_curve.png)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--history", help=f"history file (users need a target item with an image), or {BUILTIN_STICKERS}")
    data.add_argument("--stickers", type=int, metavar="N", help="N synthetic sticker users built from the real Twemoji images")
    p.add_argument("--format", default="auto", help="history format: auto, jsonl, csv, chat, sticker")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the sticker users (--stickers)")
    p.add_argument("--skip-incomplete", action="store_true", help="drop users without a target image instead of failing")
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="SD1.x single-file .safetensors (ComfyUI's) or a diffusers folder")
    add_llm_source_args(p)
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: adapter.safetensors, loss.csv, loss_curve.png, checkpoint/")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: --epochs passes over the users)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=6)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--negative-weight", type=float, default=0.5,
                   help="weight of the random negative item's loss (0 = plain loss)")
    p.add_argument("--resolution", type=int, default=512, help="training image size (multiple of 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-image-tokens", type=int, default=4, help="k learnable image tokens")
    p.add_argument("--num-prefix", type=int, default=4, help="m P-Tuning v2 prefix vectors per layer")
    p.add_argument(
        "--checkpoint-every", type=int, default=None,
        help="save a resumable checkpoint every N steps (default: a quarter of the run, at most 50)",
    )
    p.add_argument("--mixed-precision", choices=("auto", "bf16", "no"), default="auto")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    resume.add_argument("--overwrite", action="store_true", help="discard a checkpoint in --out and start over")
    p.add_argument("--eval-users", type=int, default=0,
                   help="hold out N users; after training compare trained/untrained/keywords on them")
    p.add_argument("--eval-steps", type=int, default=20, help="denoising steps of the evaluation images")
    p.add_argument("--eval-size", type=int, default=None, help="evaluation image size (default: --resolution)")
    p.add_argument("--eval-guidance", type=float, default=7.5)
    p.add_argument("--alpha", type=float, default=0.5, help="preference/target balance of the evaluation conditions")
    p.set_defaults(run=run_train, interrupt_hint="the last checkpoint is kept; continue with --resume")


def run_train(args: argparse.Namespace) -> dict:
    """Run ``pmg train``; returns the JSON summary."""
    import torch

    from ..conditioning import DiffusersTextEncoder
    from ..sd_checkpoint import load_sd_components
    from .components import DiffusersLatentEncoder, DiffusersNoisePredictor, FrozenGenerator, NoiseSchedule
    from .data import build_examples, split_users
    from .run import train_adapter
    from .run_state import check_existing_checkpoint

    config = _config(args)
    # Before loading any model: bad settings and an unasked-for checkpoint fail fast.
    config.validate()
    existing = "resume" if args.resume else "restart" if args.overwrite else "refuse"
    check_existing_checkpoint(args.out, existing)

    histories = _histories(args)
    train_users, eval_users = split_users(histories, args.eval_users, seed=args.seed)
    examples = build_examples(train_users, seed=args.seed, skip_incomplete=args.skip_incomplete)
    log.info("%d training examples, %d held-out users", len(examples), len(eval_users))

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    components = load_sd_components(args.checkpoint).to(device)
    llm = load_cli_llm(args, device=device)
    generator = FrozenGenerator(
        DiffusersTextEncoder(components.tokenizer, components.text_encoder),
        DiffusersNoisePredictor(components.unet),
        DiffusersLatentEncoder(components.vae, components.latent_scaling, components.latent_shift),
        NoiseSchedule.from_scheduler(components.scheduler),
        components.identity,
    )
    with stderr_bar("train", "step") as bar:
        result = train_adapter(
            llm, generator, examples, args.out, config, num_image_tokens=args.num_image_tokens,
            num_prefix=args.num_prefix, existing=existing, progress=tqdm_progress(bar),
        )

    summary = {
        "adapter": str(result.adapter_path),
        "loss_csv": str(result.loss_csv),
        "loss_curve": str(result.loss_curve),
        "steps": result.steps,
        "resumed_from_step": result.start_step,
        "examples": result.examples,
        "first_loss_mean10": result.first_loss_mean,
        "final_loss": result.final_loss,
        "final_loss_mean10": result.final_loss_mean,
        "seconds": round(result.seconds, 3),
        "seconds_per_step": round(result.seconds_per_step, 4),
        "generator": components.identity,
        "llm": llm.identity,
        "device": device,
    }
    if eval_users:
        summary["evaluation"] = _evaluate(args, components, llm, result.adapter, eval_users)
    return summary


def _config(args):
    """The command line's :class:`~.trainer.TrainConfig`."""
    from .trainer import TrainConfig

    return TrainConfig(
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        epochs=args.epochs,
        resolution=args.resolution,
        negative_weight=args.negative_weight,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        max_steps=args.steps,
        mixed_precision=args.mixed_precision,
    )


def _histories(args) -> list:
    from ..loaders import load_histories
    from ..loaders.stickers import build_sticker_histories

    if args.stickers is not None:
        if args.stickers < 2:
            raise InvalidSettingError(f"--stickers {args.stickers}: training needs at least 2 users; pass --stickers 2 or more.")
        return build_sticker_histories(n_users=args.stickers, seed=args.data_seed)
    if args.history == BUILTIN_STICKERS:
        return build_sticker_histories(seed=args.data_seed)
    path = Path(args.history)
    if not path.exists():
        raise InvalidSettingError(f"History file {path} does not exist; check --history.")
    return list(load_histories(path, fmt=args.format).values())


def _evaluate(args, components, llm, adapter, users) -> dict:
    from ..sd_runner import SDRunner
    from ..soft_prompt import SoftPromptAdapter
    from .evaluate import evaluate_adapter, format_table

    generator = SDRunner(components.pipeline())
    # The untrained baseline is the trainer's own starting point (same seed).
    untrained = SoftPromptAdapter.untrained(
        llm, adapter.config.text_dim, adapter.config.num_image_tokens, adapter.config.num_prefix, seed=args.seed
    )
    with stderr_bar("evaluate", "user") as bar:
        result = evaluate_adapter(
            generator,
            llm,
            adapter,
            users,
            untrained=untrained,
            seed=args.seed,
            steps=args.eval_steps,
            guidance_scale=args.eval_guidance,
            size=args.eval_size or args.resolution,
            alpha=args.alpha,
            progress=tqdm_progress(bar),
        )
    (Path(args.out) / "evaluation.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    log.info("evaluation on %d held-out users:\n%s", len(result["users"]), format_table(result))
    return {"file": str(Path(args.out) / "evaluation.json"), "summary": result["summary"], "settings": result["settings"]}


def main(argv: list[str] | None = None) -> int:
    """``python -m pmg_core.training.cli ...``: ``pmg train ...`` (the leading ``train`` may be left out)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "train":
        argv = ["train", *argv]
    return run(build_parser([register]), argv)


if __name__ == "__main__":
    sys.exit(main())
