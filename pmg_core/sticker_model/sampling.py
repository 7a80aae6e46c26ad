"""Noise schedule and sampler of the sticker generator, written to match ComfyUI's KSampler.

The generator is trained with Stable Diffusion's discrete schedule (1000 steps,
betas linear in sqrt from 0.00085 to 0.012: ComfyUI's default ``linear``
schedule for ε-prediction models). The library's sampler reproduces what the
stock ``KSampler`` does with ``sampler_name="euler"``, ``scheduler="normal"``:

* noise from ``torch.manual_seed(seed)`` over the whole latent batch, scaled by
  ``sqrt(1 + sigma_max^2)`` (ComfyUI's full-denoise noise scaling);
* timesteps spaced evenly between those of sigma_max and sigma_min, their
  sigmas interpolated in log space, and a final 0;
* the network sees ``x / sqrt(sigma^2 + 1)`` and the *nearest discrete*
  timestep of each sigma;
* classifier-free guidance ``uncond + cfg * (cond - uncond)`` and Euler steps.

So a seed and a condition give the same image here and through ComfyUI (checked
by a test against the real server).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

STEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012


def alphas_cumprod() -> Tensor:
    """ᾱ_t for t = 0..999 (float64), the training schedule."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, STEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def add_noise(latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    """The forward process: ``sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε``."""
    acp = alphas_cumprod().to(latents.device)[timesteps].to(latents.dtype)
    shape = (-1,) + (1,) * (latents.ndim - 1)
    return acp.sqrt().reshape(shape) * latents + (1 - acp).sqrt().reshape(shape) * noise


class DiscreteSigmas:
    """ComfyUI's ``ModelSamplingDiscrete`` for the schedule above."""

    def __init__(self):
        acp = alphas_cumprod()
        self.sigmas = (((1 - acp) / acp) ** 0.5).float()
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: Tensor) -> Tensor:
        """The nearest discrete timestep of each sigma (what the network is called with)."""
        distances = sigma.log() - self.log_sigmas[:, None]
        return distances.abs().argmin(dim=0).view(sigma.shape)

    def sigma(self, timestep: Tensor) -> Tensor:
        t = timestep.float().clamp(0, len(self.log_sigmas) - 1)
        low, high = t.floor().long(), t.ceil().long()
        weight = t.frac()
        return ((1 - weight) * self.log_sigmas[low] + weight * self.log_sigmas[high]).exp()

    def normal_schedule(self, steps: int) -> Tensor:
        """ComfyUI's ``normal`` scheduler: ``steps`` sigmas and a final 0."""
        start = self.timestep(self.sigma_max.reshape(1)).float()
        end = self.timestep(self.sigma_min.reshape(1)).float()
        timesteps = torch.linspace(start.item(), end.item(), steps)
        return torch.cat([self.sigma(timesteps), torch.zeros(1)])


Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x, timesteps, context) -> ε


def comfy_noise(shape: tuple[int, ...], seed: int) -> Tensor:
    """The initial noise ComfyUI's KSampler draws for a latent batch of ``shape`` and ``seed``."""
    generator = torch.manual_seed(seed)
    return torch.randn(shape, generator=generator, device="cpu")


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    cond: Tensor,
    uncond: Tensor,
    shape: tuple[int, ...],
    seed: int,
    steps: int = 20,
    cfg: float = 5.0,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Latents ``shape`` from noise, as KSampler(euler, normal) with ``seed`` gives them.

    ``cond`` is ``[N, T, D]`` (one row per image) and ``uncond`` ``[N, T', D]`` or
    ``[1, T', D]``. Conditions of different lengths are each run on their own,
    as ComfyUI does when they cannot be batched.
    """
    ms = DiscreteSigmas()
    sigmas = ms.normal_schedule(steps)
    x = comfy_noise(shape, seed) * torch.sqrt(1.0 + sigmas[0] ** 2)
    uncond = uncond.expand(shape[0], -1, -1) if uncond.shape[0] == 1 else uncond
    for i in range(steps):
        sigma = sigmas[i]
        x_in = x / torch.sqrt(sigma**2 + 1.0)
        t = ms.timestep(sigma.reshape(1)).float().expand(shape[0])
        if cond.shape[1] == uncond.shape[1]:
            eps_cond, eps_uncond = denoiser(torch.cat([x_in, x_in]), torch.cat([t, t]), torch.cat([cond, uncond])).chunk(2)
        else:
            eps_cond, eps_uncond = denoiser(x_in, t, cond), denoiser(x_in, t, uncond)
        denoised_cond, denoised_uncond = x - eps_cond * sigma, x - eps_uncond * sigma
        denoised = denoised_uncond + (denoised_cond - denoised_uncond) * cfg
        x = x + (x - denoised) / sigma * (sigmas[i + 1] - sigma)
        if progress is not None:
            progress(i + 1, steps)
    return x
