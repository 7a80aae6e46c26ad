"""The frozen generator parts the trainer needs, behind small protocols.

Training PMG's soft embeddings needs three things from the diffusion model, and
nothing else: predict the noise (or velocity) of a noisy latent under a condition
(:class:`NoisePredictor`), turn images into the latents that model expects
(:class:`LatentEncoder`), and the schedule it was trained with: a DDPM
:class:`NoiseSchedule` (SD1.x, SD2.x, SDXL) or a rectified-flow
:class:`FlowMatchingSchedule` (SD3, Flux). The text encoder is
:class:`pmg_core.conditioning.TextEncoder`. :class:`FrozenGenerator` holds the four
with the checkpoint's identity. Diffusers adapters live here; the ComfyUI node wraps
ComfyUI's MODEL/VAE the same way, so one trainer serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..conditioning import TextEncoder
from ..errors import InvalidSettingError, TrainingError

__all__ = [
    "DiffusersLatentEncoder",
    "DiffusersNoisePredictor",
    "FlowMatchingSchedule",
    "FrozenGenerator",
    "LatentEncoder",
    "NoisePredictor",
    "NoiseSchedule",
    "TrainingSchedule",
    "frozen_parameters",
]


@runtime_checkable
class NoisePredictor(Protocol):
    """``(noisy_latents [B,C,h,w], timesteps [B] (long), cond [B,T,D], pooled [B,P] | None) -> prediction``.

    ``timesteps`` index the schedule's table (DDPM step, or the flow schedule's sigma).
    ``pooled`` is the caption's pooled text vector, which SDXL (ADM ``y``), SD3 and Flux
    take beside the tokens; SD1.x/2.x predictors ignore it. Gradients must flow from
    the prediction back to ``cond`` (the soft embeddings sit in it); the predictor's own
    weights stay frozen.
    """

    device: torch.device

    def __call__(
        self, noisy_latents: Tensor, timesteps: Tensor, cond_embeddings: Tensor, pooled: Tensor | None = None
    ) -> Tensor: ...


@runtime_checkable
class LatentEncoder(Protocol):
    """``images [B,3,H,W] in [0,1] -> latents`` already scaled the way the noise predictor expects."""

    def __call__(self, images: Tensor) -> Tensor: ...


@dataclass
class NoiseSchedule:
    """The forward-diffusion schedule: ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps``.

    ``prediction_type`` says what the noise predictor outputs: ``"epsilon"``
    (SD1.x, SD2-base) or ``"v_prediction"`` (SD2-768); the training target follows it.
    """

    alphas_cumprod: Tensor  # [num_train_timesteps], float
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        self.alphas_cumprod = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64).flatten()
        if self.alphas_cumprod.numel() < 2:
            raise InvalidSettingError(
                "A noise schedule needs at least 2 timesteps; pass num_train_timesteps >= 2 (Stable Diffusion uses 1000)."
            )
        if not bool(((self.alphas_cumprod > 0) & (self.alphas_cumprod <= 1)).all()):
            raise InvalidSettingError("alphas_cumprod must lie in (0, 1]; the schedule is malformed.")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise TrainingError(
                f"Prediction type {self.prediction_type!r} is not supported for soft-prompt training; "
                "use an epsilon- or v-prediction model (SD1.x / SD2.x)."
            )

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    @classmethod
    def from_scheduler(cls, scheduler) -> NoiseSchedule:
        """From any diffusers scheduler that exposes ``alphas_cumprod`` (DDPM, DDIM, PNDM...)."""
        alphas = getattr(scheduler, "alphas_cumprod", None)
        if alphas is None:
            raise TrainingError(
                f"{type(scheduler).__name__} has no alphas_cumprod; pass a DDPM-family scheduler "
                "(DDPMScheduler.from_config(pipeline.scheduler.config))."
            )
        prediction = getattr(scheduler.config, "prediction_type", "epsilon") or "epsilon"
        return cls(torch.as_tensor(alphas), prediction)

    @classmethod
    def from_config(cls, config: dict) -> NoiseSchedule:
        """From a diffusers scheduler config dict (``scheduler_config.json``)."""
        from diffusers import DDPMScheduler

        return cls.from_scheduler(DDPMScheduler.from_config(config))

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        alpha = self._per_sample(timesteps, latents)
        return alpha.sqrt() * latents + (1 - alpha).sqrt() * noise

    def target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """What the predictor should output for these noisy latents."""
        if self.prediction_type == "epsilon":
            return noise
        alpha = self._per_sample(timesteps, latents)
        return alpha.sqrt() * noise - (1 - alpha).sqrt() * latents

    def _per_sample(self, timesteps: Tensor, like: Tensor) -> Tensor:
        values = self.alphas_cumprod.to(like.device)[timesteps.to(like.device)]
        return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


@dataclass
class FlowMatchingSchedule:
    """Rectified flow (SD3, Flux): ``x_t = (1 - s) x_0 + s eps``, the model predicts ``v = eps - x_0``.

    ``sigmas`` is the model's own table of noise levels (ComfyUI's
    ``model_sampling.sigmas``: SD3's shift-3 table of 1000, Flux's shift-1.15 table of
    10000). A timestep is an index into it, drawn uniformly, so training sees the
    noise levels with the density the model samples them at.
    """

    sigmas: Tensor  # [num_train_timesteps], increasing, in (0, 1]
    prediction_type: str = "flow"

    def __post_init__(self) -> None:
        self.sigmas = torch.as_tensor(self.sigmas, dtype=torch.float64).flatten()
        if self.sigmas.numel() < 2:
            raise InvalidSettingError("A flow schedule needs at least 2 noise levels; pass the model's sigma table.")
        if not bool(((self.sigmas > 0) & (self.sigmas <= 1)).all()):
            raise InvalidSettingError("Flow-matching sigmas must lie in (0, 1]; pass the model's model_sampling.sigmas.")
        if self.prediction_type != "flow":
            raise TrainingError(f"A FlowMatchingSchedule predicts 'flow', not {self.prediction_type!r}.")

    @property
    def num_train_timesteps(self) -> int:
        return int(self.sigmas.numel())

    def sigma(self, timesteps: Tensor, like: Tensor) -> Tensor:
        """The noise level of each sample, shaped to broadcast over ``like``."""
        values = self.sigmas.to(like.device)[timesteps.to(like.device)]
        return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        sigma = self.sigma(timesteps, latents)
        return (1 - sigma) * latents + sigma * noise

    def target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The velocity ``eps - x_0`` (the same at every noise level)."""
        return noise - latents


TrainingSchedule = NoiseSchedule | FlowMatchingSchedule


def frozen_parameters(*modules: torch.nn.Module) -> None:
    """Eval mode and ``requires_grad=False`` for every weight of ``modules``."""
    for module in modules:
        module.eval()
        module.requires_grad_(False)


class DiffusersNoisePredictor:
    """A diffusers ``UNet2DConditionModel`` as a :class:`NoisePredictor` (weights frozen)."""

    def __init__(self, unet: torch.nn.Module):
        frozen_parameters(unet)
        self.unet = unet

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def __call__(
        self, noisy_latents: Tensor, timesteps: Tensor, cond_embeddings: Tensor, pooled: Tensor | None = None
    ) -> Tensor:
        # An SD1.x/2.x UNet has no ADM input: the pooled vector has nowhere to go.
        return self.unet(
            noisy_latents.to(self.dtype), timesteps, encoder_hidden_states=cond_embeddings.to(self.dtype)
        ).sample


class DiffusersLatentEncoder:
    """A diffusers ``AutoencoderKL`` or ``AutoencoderTiny`` as a :class:`LatentEncoder` (weights frozen).

    The KL posterior's *mean* is used (not a sample), so a target image always
    maps to the same latent and can be cached; the noise the trainer adds
    dominates the posterior's small spread. ``scaling``/``shift`` default to the
    VAE config (``scaling_factor``, ``shift_factor``); pass the values of
    :class:`pmg_core.sd_checkpoint.SDComponents` for checkpoints whose
    TAESD carries its own scale.
    """

    def __init__(self, vae: torch.nn.Module, scaling: float | None = None, shift: float | None = None):
        frozen_parameters(vae)
        self.vae = vae
        config = getattr(vae, "config", None)
        self.scaling = float(scaling if scaling is not None else getattr(config, "scaling_factor", 1.0) or 1.0)
        self.shift = float(shift if shift is not None else getattr(config, "shift_factor", 0.0) or 0.0)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise InvalidSettingError(f"Expected images [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}.")
        dtype = next(self.vae.parameters()).dtype
        pixels = (images * 2 - 1).to(self.device, dtype)  # both VAEs take [-1, 1]
        encoded = self.vae.encode(pixels)
        # AutoencoderTiny gives its latents directly; the KL VAE a distribution whose mean is taken.
        raw = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents
        return ((raw.float() - self.shift) * self.scaling).contiguous()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """The inverse map, for evaluation: latents -> images [B,3,H,W] in [0,1]."""
        dtype = next(self.vae.parameters()).dtype
        raw = (latents / self.scaling + self.shift).to(self.device, dtype)
        pixels = self.vae.decode(raw).sample
        return ((pixels.float() + 1) / 2).clamp(0, 1)


@dataclass
class FrozenGenerator:
    """The frozen generator parts a training run needs, and the checkpoint's identity (adapter metadata)."""

    text_encoder: TextEncoder
    noise_predictor: NoisePredictor
    latent_encoder: LatentEncoder
    schedule: TrainingSchedule
    identity: str = ""
