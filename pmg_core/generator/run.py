"""One generator training run, end to end: data, autoencoder, latents, captions, denoiser, the weights file.

:func:`train_generator` can be called again on the same folder at any time: a
finished stage is not redone, an unfinished one resumes from its checkpoint,
the derived tensors (latents, caption states) are cached in the folder, and
the weights file is rewritten from the EMA weights whenever the run stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import TrainingError
from ..training.checkpoint import find_checkpoint
from .autoencoder import TinyAutoencoder
from .dataset import caption_table, image_tensor, split
from .text_encoder import CHUNK, MiniLMTextEncoder
from .training import (
    StageConfig,
    StageRun,
    autoencoder_loss,
    denoiser_loss,
    new_denoiser,
)
from .weights import FILE_NAME, save_generator

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class GeneratorRunConfig:
    """Everything that defines a generator run (a changed value needs a new --out folder)."""

    image_size: int = 64
    latent_channels: int = 16
    autoencoder: StageConfig = field(default_factory=lambda: StageConfig(steps=1500, batch_size=8, learning_rate=1e-3))
    denoiser: StageConfig = field(
        default_factory=lambda: StageConfig(steps=8000, batch_size=64, learning_rate=4e-4, warmup_steps=200)
    )
    condition_dropout: float = 0.1


def train_generator(
    out_dir: Path,
    config: GeneratorRunConfig | None = None,
    minutes: float | None = None,
    checkpoint_minutes: float = 5.0,
    device: str = "cpu",
    progress: Progress | None = None,
    export_only: bool = False,
) -> Path:
    """Train (or continue training) into ``out_dir``; returns the weights file once the denoiser has steps.

    ``export_only`` writes the weights file from the checkpoints as they are and
    trains nothing (safe while another process trains into the same folder:
    it reads the checkpoints and never writes them).
    """
    config = config or GeneratorRunConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if minutes is None else time.monotonic() + 60 * minutes
    seconds = 60 * checkpoint_minutes
    trained, _held_out = split()
    fingerprint = {"image_size": config.image_size, "latent_channels": config.latent_channels, "images": len(trained)}

    autoencoder_run = StageRun(
        "autoencoder", out_dir / "autoencoder", TinyAutoencoder(config.latent_channels).to(device), config.autoencoder, fingerprint
    )
    autoencoder_run.restore()
    if export_only and not (autoencoder_run.done and find_checkpoint(out_dir / "denoiser")):
        raise TrainingError(f"{out_dir} has no trained denoiser yet; nothing to export. Train first: pmg train-generator --out {out_dir}")
    if not autoencoder_run.done:
        images = image_tensor(trained, config.image_size)
        loss = autoencoder_loss(images, config.autoencoder.batch_size)
        autoencoder_run.run(loss, deadline, seconds, _stage_progress(progress, "autoencoder"))
        if not autoencoder_run.done:
            logger.info("Time is up in the autoencoder stage (step %d); run again to continue", autoencoder_run.step)
            return out_dir / FILE_NAME
    # The live weights, not the EMA: over a 1,000-step run an EMA of decay 0.999 still carries the
    # blurry early autoencoder (measured: L1 0.135 for the EMA vs 0.092 live at step ~400).
    autoencoder = autoencoder_run.model.eval()

    latents = _cached(out_dir / "latents.safetensors", lambda: _encode_latents(autoencoder, trained, config.image_size))
    autoencoder.normalise(latents["raw"])
    normalised = latents["raw"] / autoencoder.vae_scale + autoencoder.vae_shift
    states = _cached(out_dir / "captions.safetensors", lambda: _encode_captions(trained))
    texts_index = caption_table(trained)[1]

    denoiser_fingerprint = {**fingerprint, "condition_dropout": config.condition_dropout}
    denoiser_run = StageRun(
        "denoiser", out_dir / "denoiser", new_denoiser(config.denoiser.seed).to(device), config.denoiser, denoiser_fingerprint
    )
    denoiser_run.restore()
    if not denoiser_run.done and not export_only:
        loss = denoiser_loss(
            normalised, states["states"], texts_index, states["empty"][0], config.denoiser.batch_size, config.condition_dropout
        )
        denoiser_run.run(loss, deadline, seconds, _stage_progress(progress, "denoiser"))
    training = {
        "image_size": config.image_size,
        "autoencoder_steps": autoencoder_run.step,
        "denoiser_steps": denoiser_run.step,
        "config": asdict(config),
        "images": len(trained),
    }
    path = save_generator(out_dir / FILE_NAME, autoencoder.cpu(), denoiser_run.ema.cpu(), training)
    logger.info("Wrote %s (denoiser step %d of %d)", path, denoiser_run.step, config.denoiser.steps)
    return path


@torch.no_grad()
def _encode_latents(autoencoder: TinyAutoencoder, images, size: int) -> dict[str, torch.Tensor]:
    device = next(autoencoder.parameters()).device
    raw = []
    for start in range(0, len(images), 64):
        batch = image_tensor(images[start : start + 64], size).to(device)
        raw.append(autoencoder.taesd_encoder(batch).cpu())
    return {"raw": torch.cat(raw)}


@torch.no_grad()
def _encode_captions(images) -> dict[str, torch.Tensor]:
    encoder = MiniLMTextEncoder()
    texts, _ = caption_table(images)
    # A training caption is one chunk (the denoiser learns on single chunks; longer prompts are several).
    states = [encoder.encode(texts[i : i + 256]).embeddings[:, :CHUNK].half() for i in range(0, len(texts), 256)]
    return {"states": torch.cat(states), "empty": encoder.encode([""]).embeddings.half()}


def _cached(path: Path, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Tensors saved beside the run: computed once, read back on every resume."""
    from safetensors.torch import load_file, save

    from ..atomic import write_bytes_atomic

    if path.is_file():
        return load_file(str(path))
    tensors = compute()
    write_bytes_atomic(path, save({k: v.contiguous() for k, v in tensors.items()}))
    return tensors


def _stage_progress(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)
