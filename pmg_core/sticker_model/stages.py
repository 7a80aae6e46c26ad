"""Training the sticker generator: the autoencoder first, then the denoiser on its latents.

Both stages share one loop (:class:`StageRun`): seeded batches and noise from
one ``torch.Generator`` whose state is checkpointed, AdamW with warm-up and
cosine decay, an EMA copy of the weights, ``loss.csv`` and a loss curve,
a resumable checkpoint every few minutes (``pmg_core.training.checkpoint``:
safetensors + JSON, swapped atomically) and a wall-clock budget. A run stopped
at any point (budget, Ctrl-C, a killed machine) continues from its last
checkpoint with the same loss curve it would have had.

Layout of a run folder::

    <out>/autoencoder/{checkpoint/, loss.csv, loss.png}
    <out>/denoiser/{checkpoint/, loss.csv, loss.png}
    <out>/sticker-generator.safetensors      (written by pmg_core.sticker_model.weights)
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidSettingError, TrainingError
from ..training.checkpoint import TrainingState, find_checkpoint, load_state, save_state
from ..training.loss_log import LossLog, read_loss_csv
from ..training.plot import loss_curve_image, save_loss_curve
from .autoencoder import TinyAutoencoder
from .denoiser import UNET_CONFIG, StickerDenoiser
from .sampling import add_noise, alphas_cumprod

logger = logging.getLogger(__name__)

_FIELDS = ("step", "loss", "lr")


@dataclass
class StageConfig:
    """One stage's optimisation settings."""

    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int = 100
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    seed: int = 0

    def validate(self, name: str) -> None:
        for field, value in (("steps", self.steps), ("batch_size", self.batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidSettingError(f"The {name} stage's {field} must be a positive integer, not {value!r}.")
        if not (0 < self.learning_rate < 1):
            raise InvalidSettingError(f"The {name} stage's learning rate must be in (0, 1), not {self.learning_rate!r}.")
        if not (0 <= self.ema_decay < 1):
            raise InvalidSettingError(f"The {name} stage's EMA decay must be in [0, 1), not {self.ema_decay!r}.")

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to a tenth of the peak."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class StageRun:
    """The shared training loop of one stage, resumable from ``folder/checkpoint``."""

    def __init__(self, name: str, folder: Path, model: nn.Module, config: StageConfig, fingerprint: dict):
        config.validate(name)
        self.name = name
        self.folder = Path(folder)
        self.model = model
        self.ema = copy.deepcopy(model).requires_grad_(False)
        self.config = config
        self.fingerprint = {"stage": name, **fingerprint, **asdict(config)}
        self.rng = torch.Generator().manual_seed(config.seed)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.step = 0

    @property
    def done(self) -> bool:
        return self.step >= self.config.steps

    def restore(self) -> None:
        """Continue from the folder's checkpoint, if there is one of this very run."""
        self.folder.mkdir(parents=True, exist_ok=True)
        checkpoint = find_checkpoint(self.folder)
        if checkpoint is not None:
            state = load_state(checkpoint)
            if state.fingerprint != self.fingerprint:
                differing = sorted(k for k in self.fingerprint if state.fingerprint.get(k) != self.fingerprint[k])
                raise TrainingError(
                    f"The checkpoint in {self.folder} comes from a run with other {', '.join(differing)}; "
                    "train into another --out folder, or delete that one to start over."
                )
            device = next(self.model.parameters()).device
            self.model.load_state_dict({k[6:]: v.to(device) for k, v in state.weights.items() if k.startswith("model.")})
            self.ema.load_state_dict({k[4:]: v.to(device) for k, v in state.weights.items() if k.startswith("ema.")})
            self.optimizer.load_state_dict(state.optimizer)
            self.rng.set_state(state.noise_rng)
            self.step = state.step
            logger.info("%s: resuming at step %d of %d", self.name, self.step, self.config.steps)

    def open_log(self) -> None:
        self.log = LossLog(self.folder / "loss.csv", _FIELDS, keep_until=self.step)

    def run(
        self,
        loss_fn: Callable[[nn.Module, torch.Generator], torch.Tensor],
        deadline: float | None,
        checkpoint_seconds: float,
        progress: Callable[[int, int], None] | None = None,
        until_step: int | None = None,
    ) -> None:
        """Optimise until the stage's steps (or ``until_step``) are done or ``deadline`` (``time.monotonic``) passes."""
        self.open_log()
        self.model.train()
        last_save = time.monotonic()
        stop = self.config.steps if until_step is None else min(until_step, self.config.steps)
        try:
            while self.step < stop and (deadline is None or time.monotonic() < deadline):
                lr = self.config.lr_at(self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss = loss_fn(self.model, self.rng)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"{self.name}: the loss became {loss.item()} at step {self.step + 1}; "
                        "lower the learning rate and train into a new --out folder."
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.optimizer.step()
                self._update_ema()
                self.step += 1
                self.log.append({"step": self.step, "loss": loss.item(), "lr": lr})
                if progress is not None:
                    progress(self.step, self.config.steps)
                if time.monotonic() - last_save > checkpoint_seconds:
                    self.save_checkpoint()
                    last_save = time.monotonic()
        finally:
            self.model.eval()
            self.save_checkpoint()
            self.draw_curve()

    @torch.no_grad()
    def _update_ema(self) -> None:
        # A short warm-up of the decay, so early EMA weights are not dominated by the random start.
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for ema, live in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            ema.lerp_(live.detach(), 1 - decay)
        for ema, live in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            ema.copy_(live)

    def save_checkpoint(self) -> None:
        weights = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        weights.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        save_state(
            self.folder,
            TrainingState(
                step=self.step,
                weights=weights,
                optimizer=self.optimizer.state_dict(),
                noise_rng=self.rng.get_state(),
                fingerprint=self.fingerprint,
            ),
        )

    def draw_curve(self) -> Path:
        rows = read_loss_csv(self.folder / "loss.csv")
        image = loss_curve_image([r["step"] for r in rows], {"loss": [r["loss"] for r in rows]}, title=f"sticker {self.name}")
        return save_loss_curve(image, self.folder / "loss.png")


def autoencoder_loss(
    images: torch.Tensor, batch_size: int, latent_noise: float = 0.1
) -> Callable[[nn.Module, torch.Generator], torch.Tensor]:
    """Reconstruction loss over random batches of ``images`` ``[N, 3, H, W]`` in [0, 1].

    L1 + MSE on the pixels, with noise added to the latents before decoding (the
    denoiser's samples are never exact latents: the decoder must tolerate that)
    and a small penalty that keeps the raw latents inside the decoder's tanh range.
    """

    def loss(model: TinyAutoencoder, rng: torch.Generator) -> torch.Tensor:
        rows = torch.randint(0, images.shape[0], (batch_size,), generator=rng)
        batch = images[rows].to(next(model.parameters()).device)
        flip = torch.rand(batch.shape[0], generator=rng) < 0.5
        batch = torch.where(flip[:, None, None, None].to(batch.device), batch.flip(-1), batch)
        raw = model.taesd_encoder(batch)
        noise = torch.randn(raw.shape, generator=rng).to(raw.device) * latent_noise * raw.detach().std()
        out = model.raw_decode(raw + noise)
        return F.l1_loss(out, batch) + F.mse_loss(out, batch) + 1e-3 * raw.pow(2).mean()

    return loss


def decoder_loss(
    raw_latents: torch.Tensor,
    images: torch.Tensor,
    batch_size: int,
    perceptual: nn.Module,
    perceptual_weight: float = 1.0,
    latent_noise: float = 0.1,
) -> Callable[[nn.Module, torch.Generator], torch.Tensor]:
    """L1 + ``perceptual_weight`` x LPIPS of a decoder on the frozen encoder's latents.

    ``raw_latents`` ``[2, N, C, h, w]`` are the encoder's raw latents of ``images``
    ``[N, 3, H, W]`` and of their mirror images (index 1), computed once: the
    encoder does not train. ``perceptual`` is an ``lpips.LPIPS`` module (inputs
    in [-1, 1]); the latent noise is the autoencoder stage's, so the decoder stays
    as tolerant of the denoiser's inexact latents as it was.
    """

    def loss(decoder: nn.Module, rng: torch.Generator) -> torch.Tensor:
        rows = torch.randint(0, images.shape[0], (batch_size,), generator=rng)
        flip = (torch.rand(batch_size, generator=rng) < 0.5).long()
        device = next(decoder.parameters()).device
        raw = raw_latents[flip, rows].to(device)
        target = torch.where(flip[:, None, None, None].bool(), images[rows].flip(-1), images[rows]).to(device)
        noise = torch.randn(raw.shape, generator=rng).to(device) * latent_noise * raw.std()
        out = decoder(raw + noise)
        distance = perceptual(out * 2 - 1, target * 2 - 1).mean()
        return F.l1_loss(out, target) + perceptual_weight * distance

    return loss


def denoiser_loss(
    latents: torch.Tensor,
    caption_states: torch.Tensor,
    caption_index: torch.Tensor,
    empty_state: torch.Tensor,
    batch_size: int,
    condition_dropout: float = 0.1,
    min_snr_gamma: float | None = None,
) -> Callable[[nn.Module, torch.Generator], torch.Tensor]:
    """ε-prediction MSE over random (latent, one of its captions) pairs.

    ``caption_states`` ``[K, T, D]`` are the text encoder's states of every
    distinct caption, ``caption_index`` ``[N, C]`` the captions of each latent;
    with probability ``condition_dropout`` the empty prompt's states
    ``empty_state`` ``[T, D]`` replace them (classifier-free guidance).
    ``min_snr_gamma`` weights each sample by ``min(SNR, γ) / SNR`` (Hang et al.,
    2023, "Min-SNR weighting"): the low-noise timesteps, whose ε-targets are easy
    and whose gradients pull against the others, count less. ``None`` weights all
    timesteps alike. Either way the network still predicts ε, so ComfyUI samples it unchanged.
    """
    weights = None if min_snr_gamma is None else min_snr_weights(min_snr_gamma)

    def loss(model: StickerDenoiser, rng: torch.Generator) -> torch.Tensor:
        size = batch_size
        rows = torch.randint(0, latents.shape[0], (size,), generator=rng)
        choice = torch.randint(0, caption_index.shape[1], (size,), generator=rng)
        context = caption_states[caption_index[rows, choice]].float()
        dropped = torch.rand(size, generator=rng) < condition_dropout
        context[dropped] = empty_state.float()
        x0 = latents[rows]
        noise = torch.randn(x0.shape, generator=rng)
        timesteps = torch.randint(0, 1000, (size,), generator=rng)
        device = next(model.parameters()).device
        noisy = add_noise(x0, noise, timesteps).to(device)
        predicted = model(noisy, timesteps.to(device).float(), context.to(device))
        if weights is None:
            return F.mse_loss(predicted, noise.to(device))
        per_sample = (predicted - noise.to(device)).pow(2).flatten(1).mean(1)
        return (weights[timesteps].to(device) * per_sample).mean()

    return loss


def min_snr_weights(gamma: float) -> torch.Tensor:
    """``min(SNR_t, γ) / SNR_t`` for t = 0..999, with ``SNR_t = ᾱ_t / (1 - ᾱ_t)`` (float32)."""
    if not gamma > 0:
        raise InvalidSettingError(f"The min-SNR γ must be a positive number, not {gamma!r}.")
    acp = alphas_cumprod()
    snr = acp / (1 - acp)
    return (snr.clamp(max=gamma) / snr).float()


def new_denoiser(seed: int) -> StickerDenoiser:
    torch.manual_seed(seed)
    return StickerDenoiser(**UNET_CONFIG)
