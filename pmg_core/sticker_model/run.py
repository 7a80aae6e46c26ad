"""One generator training run, end to end: data, autoencoder, latents, captions, denoiser, the weights file.

:func:`train_sticker_model` can be called again on the same folder at any time: a
finished stage is not redone, an unfinished one resumes from its checkpoint,
the derived tensors (latents, caption states) are cached in the folder, and
the weights file is rewritten from the EMA weights whenever the run stops.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import TrainingError
from ..training.checkpoint import find_checkpoint, load_state
from .autoencoder import TinyAutoencoder
from .dataset import caption_table, image_tensor, split
from .text_encoder import CHUNK, MiniLMTextEncoder
from .stages import (
    StageConfig,
    StageRun,
    autoencoder_loss,
    denoiser_loss,
    new_denoiser,
)
from .weights import FILE_NAME, save_sticker_model

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class StickerTrainingConfig:
    """Everything that defines a generator run (a changed value needs a new --out folder)."""

    image_size: int = 64
    latent_channels: int = 16
    autoencoder: StageConfig = field(default_factory=lambda: StageConfig(steps=1500, batch_size=8, learning_rate=1e-3))
    denoiser: StageConfig = field(
        default_factory=lambda: StageConfig(steps=8000, batch_size=64, learning_rate=4e-4, warmup_steps=200)
    )
    condition_dropout: float = 0.1
    min_snr_gamma: float | None = None  # the denoiser's loss weighting (stages.denoiser_loss); None: uniform


def train_sticker_model(
    out_dir: Path,
    config: StickerTrainingConfig | None = None,
    minutes: float | None = None,
    checkpoint_minutes: float = 5.0,
    device: str = "cpu",
    progress: Progress | None = None,
    export_only: bool = False,
    init_from: Path | None = None,
) -> Path:
    """Train (or continue training) into ``out_dir``; returns the weights file once the denoiser has steps.

    ``export_only`` writes the weights file from the checkpoints as they are and
    trains nothing (safe while another process trains into the same folder:
    it reads the checkpoints and never writes them). ``init_from`` (a generator
    file) warm-starts: its autoencoder is kept as it is, with its latent
    normalisation, and its denoiser is trained further (a run's checkpoints can be
    lost with a machine; the shipped weights cannot).
    """
    config = config or StickerTrainingConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if minutes is None else time.monotonic() + 60 * minutes
    seconds = 60 * checkpoint_minutes
    if export_only and find_checkpoint(out_dir / "denoiser") is None:  # a denoiser checkpoint implies a trained autoencoder
        raise TrainingError(
            f"{out_dir} has no trained denoiser yet; nothing to export. Train first: pmg train-generator --out {out_dir}"
        )
    trained, _held_out = split()
    fingerprint = {"image_size": config.image_size, "latent_channels": config.latent_channels, "images": len(trained)}
    warm = _WarmStart.read(init_from, device) if init_from is not None else None
    _check_same_start(out_dir, warm)
    if warm is not None:
        fingerprint["init_from"] = warm.digest
        autoencoder, autoencoder_steps = warm.autoencoder, warm.autoencoder_steps
    else:
        autoencoder, autoencoder_steps = _train_autoencoder(
            out_dir, config, trained, fingerprint, device, deadline, seconds, progress
        )
        if autoencoder is None:
            return out_dir / FILE_NAME
    normalised = _normalised_latents(out_dir, autoencoder, trained, config.image_size, warm)
    states = cached_tensors(out_dir / "captions.safetensors", lambda: _encode_captions(trained))
    texts_index = caption_table(trained)[1]

    denoiser_fingerprint = {**fingerprint, "condition_dropout": config.condition_dropout}
    if config.min_snr_gamma is not None:  # absent when uniform, so runs from before the option still resume
        denoiser_fingerprint["min_snr_gamma"] = config.min_snr_gamma
    start = warm.denoiser if warm is not None else new_denoiser(config.denoiser.seed)
    denoiser_run = StageRun("denoiser", out_dir / "denoiser", start.to(device), config.denoiser, denoiser_fingerprint)
    denoiser_run.restore()
    if not denoiser_run.done and not export_only:
        loss = denoiser_loss(
            normalised, states["states"], texts_index, states["empty"][0], config.denoiser.batch_size,
            config.condition_dropout, config.min_snr_gamma,
        )
        denoiser_run.run(loss, deadline, seconds, _stage_progress(progress, "denoiser"))
    training = _training_record(config, autoencoder_steps, denoiser_run.step, len(trained), warm)
    path = save_sticker_model(out_dir / FILE_NAME, autoencoder.cpu(), denoiser_run.ema.cpu(), training)
    logger.info("Wrote %s (denoiser step %d of %d)", path, denoiser_run.step, config.denoiser.steps)
    return path


def _train_autoencoder(out_dir: Path, config: StickerTrainingConfig, trained, fingerprint: dict, device: str, deadline,
                       seconds: float, progress) -> tuple[TinyAutoencoder | None, int]:
    """The autoencoder stage, resumed or run: (the trained autoencoder or None while unfinished, its steps)."""
    run = StageRun("autoencoder", out_dir / "autoencoder", TinyAutoencoder(config.latent_channels).to(device), config.autoencoder,
                   fingerprint)
    run.restore()
    if not run.done:
        images = image_tensor(trained, config.image_size)
        loss = autoencoder_loss(images, config.autoencoder.batch_size)
        run.run(loss, deadline, seconds, _stage_progress(progress, "autoencoder"))
        if not run.done:
            logger.info("Time is up in the autoencoder stage (step %d); run again to continue", run.step)
            return None, run.step
    # The live weights, not the EMA: over a 1,000-step run an EMA of decay 0.999 still carries the
    # blurry early autoencoder (measured: L1 0.135 for the EMA vs 0.092 live at step ~400).
    return run.model.eval(), run.step


def _normalised_latents(out_dir: Path, autoencoder: TinyAutoencoder, trained, size: int, warm) -> torch.Tensor:
    """The training images' latents, normalised as the denoiser sees them (cached beside the run).

    Latents belong to the autoencoder that made them: a warm start's go in a file of their own,
    and a warm start keeps the normalisation its denoiser was trained with.
    """
    latents_file = out_dir / ("latents.safetensors" if warm is None else f"latents-{warm.digest}.safetensors")
    latents = cached_tensors(latents_file, lambda: _encode_latents(autoencoder, trained, size))
    if warm is None:
        autoencoder.normalise(latents["raw"])
    return latents["raw"] / autoencoder.vae_scale + autoencoder.vae_shift


def _training_record(config: StickerTrainingConfig, autoencoder_steps: int, denoiser_steps: int, images: int, warm) -> dict:
    """How the file was trained (its ``training`` metadata)."""
    training = {
        "image_size": config.image_size,
        "autoencoder_steps": autoencoder_steps,
        "denoiser_steps": denoiser_steps + (warm.denoiser_steps if warm is not None else 0),
        "config": asdict(config),
        "images": images,
    }
    if warm is not None:
        training["warm_start"] = {"file": warm.name, "sha256": warm.digest, "denoiser_steps": warm.denoiser_steps,
                                  "training": warm.training}
    return training


@dataclass
class _WarmStart:
    """What a warm start takes from a generator file: both networks and how they were trained."""

    name: str
    digest: str
    autoencoder: TinyAutoencoder
    denoiser: torch.nn.Module
    training: dict

    @property
    def autoencoder_steps(self) -> int:
        return int(self.training.get("autoencoder_steps", 0))

    @property
    def denoiser_steps(self) -> int:
        return int(self.training.get("denoiser_steps", 0))

    @classmethod
    def read(cls, path: Path, device: str) -> _WarmStart:
        from ..safe_paths import sha256_file
        from .weights import load_sticker_model

        generator = load_sticker_model(Path(path), device)
        denoiser = generator.denoiser.train().requires_grad_(True)
        training = json.loads(generator.metadata.get("training", "{}"))
        return cls(Path(path).name, sha256_file(Path(path))[:16], generator.autoencoder, denoiser, training)


def _check_same_start(out_dir: Path, warm: _WarmStart | None) -> None:
    """Refuse to continue a run with another starting point (before any stage trains)."""
    checkpoint = find_checkpoint(out_dir / "denoiser")
    if checkpoint is None:
        return
    recorded = load_state(checkpoint).fingerprint.get("init_from")
    if recorded != (warm.digest if warm is not None else None):
        started = f"warm-started from a file of sha256 {recorded}" if recorded else "started from scratch"
        raise TrainingError(
            f"The run in {out_dir} was {started}, which differs from this call's init_from; continue it with the "
            "same --init-from file (or none), or train into another --out folder."
        )


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


def cached_tensors(path: Path, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
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
