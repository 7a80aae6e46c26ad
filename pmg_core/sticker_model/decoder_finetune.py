"""Fine-tuning the generator's decoder alone, its encoder frozen (the idea of SD's ft-EMA/ft-MSE VAE decoders).

The encoder, the latent normalisation and the denoiser are the warm-start
file's, untouched: the latent space stays the same, so the shipped denoiser,
adapter and image-prompt projection stay valid with the new decoder. The loss is
L1 + LPIPS (VGG by default, while the evaluation scores with LPIPS AlexNet: a
perceptual loss is what reconstruction LPIPS rewards, so L1 and SSIM are
reported beside it). The decoder trains on the train split less a fixed
validation tenth (:func:`~pmg_core.sticker_model.dataset.validation_slice`);
at every checkpoint the live and EMA decoders are scored on that tenth, and the
best one so far is kept. Held-out emoji are never seen.

Layout of a run folder::

    <out>/decoder/{checkpoint/, loss.csv, loss.png, validation.csv, best.safetensors}
    <out>/decoder-latents-<sha>.safetensors     (the frozen encoder's latents, computed once)
    <out>/pmg-sticker-generator.safetensors     (the warm-start file with the best decoder)
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import TrainingError
from ..metrics.lpips import LPIPS, build_lpips_module
from .dataset import EmojiImage, image_tensor, split, validation_slice
from .stages import StageConfig, StageRun, decoder_loss
from .weights import FILE_NAME, StickerModel, load_sticker_model, save_sticker_model

logger = logging.getLogger(__name__)

_VALIDATION_FIELDS = ("step", "weights", "lpips_alex", "l1")


@dataclass
class DecoderFinetuneConfig:
    """What defines a decoder fine-tuning run (a changed value needs a new --out folder)."""

    stage: StageConfig = field(default_factory=lambda: StageConfig(steps=1500, batch_size=8, learning_rate=1e-4, warmup_steps=50))
    perceptual_net: str = "vgg"
    perceptual_weight: float = 1.0
    latent_noise: float = 0.1
    image_size: int = 64


def finetune_decoder(
    out_dir: Path,
    init_from: Path,
    config: DecoderFinetuneConfig | None = None,
    minutes: float | None = None,
    checkpoint_minutes: float = 5.0,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    export_only: bool = False,
    validate_every: int = 100,
    emoji: tuple[list[EmojiImage], list[EmojiImage]] | None = None,
) -> Path:
    """Train (or continue) the decoder of ``init_from`` into ``out_dir``; returns the exported generator file.

    The decoders are validated every ``validate_every`` steps and when the run stops. ``emoji``
    (fit, validation) replaces the train split and its validation tenth (tests use a few images).
    """
    from ..safe_paths import sha256_file

    config = config or DecoderFinetuneConfig()
    out_dir = Path(out_dir)
    generator = load_sticker_model(Path(init_from), device)
    digest = sha256_file(Path(init_from))[:16]
    fit, validation = emoji if emoji is not None else validation_slice(split()[0])
    decoder = generator.autoencoder.taesd_decoder.train().requires_grad_(True)
    fingerprint = {"init_from": digest, "images": len(fit), **{k: v for k, v in asdict(config).items() if k != "stage"}}
    run = StageRun("decoder", out_dir / "decoder", decoder, config.stage, fingerprint)
    run.restore()
    if export_only and not (out_dir / "decoder" / "best.safetensors").is_file():
        raise TrainingError(
            f"{out_dir} has no validated decoder yet; run pmg train-generator --finetune-decoder --out {out_dir} first."
        )
    if not export_only:
        images = image_tensor(fit, config.image_size)
        raw = _frozen_latents(out_dir / f"decoder-latents-{digest}-{len(fit)}.safetensors", generator, images)
        perceptual = build_lpips_module(config.perceptual_net).to(device)
        loss = decoder_loss(raw, images, config.stage.batch_size, perceptual, config.perceptual_weight, config.latent_noise)
        judge = _Validation(out_dir / "decoder", generator, image_tensor(validation, config.image_size))
        deadline = None if minutes is None else time.monotonic() + 60 * minutes
        _train(run, loss, judge, deadline, 60 * checkpoint_minutes, validate_every, progress)
    return _export(out_dir, generator, Path(init_from).name, digest, config, len(fit))


def _train(run: StageRun, loss, judge: _Validation, deadline: float | None, seconds: float, every: int, progress) -> None:
    """Train in stints of ``every`` steps, each followed by a validation of the live and EMA decoders."""
    if not judge.rows:  # the starting decoder's score: fine-tuning must beat it to be kept
        judge.score(run.step, "live", run.model)
    while not run.done and (deadline is None or time.monotonic() < deadline):
        run.run(loss, deadline, seconds, progress, until_step=(run.step // every + 1) * every)
        for kind, model in (("live", run.model), ("ema", run.ema)):
            judge.score(run.step, kind, model)
        logger.info("decoder step %d: best %s", run.step, judge.best)


class _Validation:
    """Scores decoders on the validation tenth (LPIPS AlexNet, as the evaluation) and keeps the best one's weights."""

    def __init__(self, folder: Path, generator: StickerModel, images: torch.Tensor):
        self.csv, self.best_file = folder / "validation.csv", folder / "best.safetensors"
        self.images, self.lpips = images, LPIPS("alex")
        with torch.no_grad():
            self.raw = generator.autoencoder.taesd_encoder(images.to(next(generator.autoencoder.parameters()).device))
        self.rows = _read_validation(self.csv)

    @property
    def best(self) -> dict | None:
        return min(self.rows, key=lambda row: row["lpips_alex"]) if self.rows else None

    @torch.no_grad()
    def score(self, step: int, kind: str, decoder: torch.nn.Module) -> None:
        was_training = decoder.training
        rebuilt = decoder.eval()(self.raw).clamp(0, 1).cpu()
        decoder.train(was_training)
        row = {"step": step, "weights": kind, "lpips_alex": float(self.lpips.distance(rebuilt, self.images).mean()),
               "l1": float(F.l1_loss(rebuilt, self.images))}
        improved = self.best is None or row["lpips_alex"] < self.best["lpips_alex"]
        self.rows.append(row)
        _append_validation(self.csv, row)
        if improved:
            from safetensors.torch import save

            from ..atomic import write_bytes_atomic

            state = {k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}
            write_bytes_atomic(self.best_file, save(state, metadata={"row": json.dumps(row)}))


def _read_validation(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [{"step": int(r["step"]), "weights": r["weights"], "lpips_alex": float(r["lpips_alex"]), "l1": float(r["l1"])}
                for r in csv.DictReader(handle)]


def _append_validation(path: Path, row: dict) -> None:
    new = not path.is_file()
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=_VALIDATION_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


@torch.no_grad()
def _frozen_latents(path: Path, generator: StickerModel, images: torch.Tensor) -> torch.Tensor:
    """``[2, N, C, h, w]``: the frozen encoder's raw latents of ``images`` and of their mirror images (cached)."""
    from .run import cached_tensors

    encoder = generator.autoencoder.taesd_encoder
    device = next(encoder.parameters()).device

    def encode() -> dict[str, torch.Tensor]:
        sides = [torch.cat([encoder(side[i : i + 64].to(device)).cpu() for i in range(0, len(side), 64)])
                 for side in (images, images.flip(-1))]
        return {"raw": torch.stack(sides)}

    return cached_tensors(path, encode)["raw"]


def _export(out_dir: Path, generator: StickerModel, name: str, digest: str, config: DecoderFinetuneConfig, images: int) -> Path:
    """The warm-start file with the best validated decoder (the file's own decoder if none beat it)."""
    from ..weights_file import read_weights

    best_file = out_dir / "decoder" / "best.safetensors"
    state, metadata = read_weights(
        best_file,
        f"{out_dir} has no validated decoder; run pmg train-generator --finetune-decoder --out {out_dir} first.",
        f"delete {best_file} and run pmg train-generator --finetune-decoder --out {out_dir} again.",
    )
    row = json.loads(metadata["row"])
    autoencoder = generator.autoencoder.cpu()
    autoencoder.taesd_decoder.load_state_dict(state)
    training = json.loads(generator.metadata.get("training", "{}"))
    training["decoder_finetune"] = {"file": name, "sha256": digest, "chosen": row, "config": asdict(config), "images": images}
    path = save_sticker_model(out_dir / FILE_NAME, autoencoder, generator.denoiser.cpu(), training)
    logger.info("Wrote %s (decoder of step %d, %s weights; validation LPIPS %.4f)",
                path, row["step"], row["weights"], row["lpips_alex"])
    return path
