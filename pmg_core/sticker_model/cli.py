"""``pmg train-generator``: train the sticker generator (autoencoder, then denoiser), resumably.

    pmg train-generator --out runs/sticker-gen --minutes 120 --threads 1

Running it again on the same ``--out`` continues where it stopped (budget,
Ctrl-C, a killed machine): finished stages are kept, the unfinished one resumes
from its checkpoint. The weights file is rewritten from the EMA weights at
every stop.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path


def register(subparsers) -> None:
    """Add the ``train-generator`` subcommand."""
    p = subparsers.add_parser("train-generator", help="train the sticker generator on the Twemoji images (resumable)")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, loss curves, the weights file")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget of this call (default: until done)")
    p.add_argument("--autoencoder-steps", type=int, default=None)
    p.add_argument("--denoiser-steps", type=int, default=None)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="save a resumable checkpoint this often")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (set it on a shared machine)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--export", action="store_true", help="only write the weights file from the checkpoints (no training)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="warm start from a generator file: keep its autoencoder, train its denoiser further")
    p.add_argument("--learning-rate", type=float, default=None, help="the trained stage's peak learning rate")
    p.add_argument("--min-snr-gamma", type=float, default=None,
                   help="weight the denoiser's loss by min(SNR, γ)/SNR (5 is the usual γ; default: uniform)")
    p.add_argument("--finetune-decoder", action="store_true",
                   help="fine-tune only the decoder of the --init-from file (encoder, latents and denoiser stay as they are)")
    p.add_argument("--decoder-steps", type=int, default=None, help="steps of the decoder fine-tuning")
    p.set_defaults(run=run_train_generator, interrupt_hint="the last checkpoint is kept; run the same command to continue")


def run_train_generator(args: argparse.Namespace) -> dict:
    import torch

    from ..progress import stderr_bar, tqdm_progress
    from .run import StickerTrainingConfig, train_sticker_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.finetune_decoder:
        return _run_finetune_decoder(args)
    config = StickerTrainingConfig()
    if args.autoencoder_steps:
        config.autoencoder = replace(config.autoencoder, steps=args.autoencoder_steps)
    if args.denoiser_steps:
        config.denoiser = replace(config.denoiser, steps=args.denoiser_steps)
    if args.learning_rate:
        config.denoiser = replace(config.denoiser, learning_rate=args.learning_rate)
    config.min_snr_gamma = args.min_snr_gamma
    bars: dict = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = stack.enter_context(stderr_bar(stage, "step", total))
        tqdm_progress(bars[stage])(done, total)

    from contextlib import ExitStack

    with ExitStack() as stack:
        path = train_sticker_model(
            args.out, config, minutes=args.minutes, checkpoint_minutes=args.checkpoint_minutes, device=args.device,
            progress=progress, export_only=args.export, init_from=args.init_from,
        )
    return {"weights": str(path), "out": str(args.out)}


def _run_finetune_decoder(args: argparse.Namespace) -> dict:
    from ..errors import InvalidSettingError
    from ..progress import stderr_bar, tqdm_progress
    from .decoder_finetune import DecoderFinetuneConfig, finetune_decoder

    if args.init_from is None:
        raise InvalidSettingError(
            "--finetune-decoder needs the generator file whose decoder it trains: add --init-from FILE."
        )
    config = DecoderFinetuneConfig()
    if args.decoder_steps:
        config.stage = replace(config.stage, steps=args.decoder_steps)
    if args.learning_rate:
        config.stage = replace(config.stage, learning_rate=args.learning_rate)
    with stderr_bar("decoder", "step", config.stage.steps) as bar:
        path = finetune_decoder(
            args.out, args.init_from, config, minutes=args.minutes, checkpoint_minutes=args.checkpoint_minutes,
            device=args.device, progress=tqdm_progress(bar), export_only=args.export,
        )
    return {"weights": str(path), "out": str(args.out)}
