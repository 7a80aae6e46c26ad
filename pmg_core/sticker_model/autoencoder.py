"""The sticker generator's autoencoder, in the TAESD layout that ComfyUI's VAE class loads.

ComfyUI recognises a state dict with ``taesd_decoder.1.weight`` as a TAESD
(``comfy.taesd.taesd.TAESD``) and reads the latent channels from that weight, so
an autoencoder trained here in exactly that layout is decoded by the stock
``VAEDecode`` and encoded by the stock ``VAEEncode``. The layout is fixed: 64
channels, three stride-2 stages (8x down), ReLU blocks, a tanh clamp before the
decoder. This module rebuilds it in plain torch (the library never imports
ComfyUI) with the same parameter names.

``vae_scale`` and ``vae_shift`` are TAESD's own normalisation:
``encode(x) = encoder(x) / scale + shift`` and ``decode(z) = decoder((z - shift) * scale)``.
After training they are set from the latents' statistics, so the diffusion model
sees latents of mean 0 and variance 1 with a latent format of scale 1.
"""

from __future__ import annotations

import torch
from torch import nn

WIDTH = 64  # fixed by ComfyUI's TAESD class


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def _encoder(latent_channels: int) -> nn.Sequential:
    w = WIDTH
    return nn.Sequential(
        _conv(3, w), _Block(w, w),
        _conv(w, w, stride=2, bias=False), _Block(w, w), _Block(w, w), _Block(w, w),
        _conv(w, w, stride=2, bias=False), _Block(w, w), _Block(w, w), _Block(w, w),
        _conv(w, w, stride=2, bias=False), _Block(w, w), _Block(w, w), _Block(w, w),
        _conv(w, latent_channels),
    )  # fmt: skip


def _decoder(latent_channels: int) -> nn.Sequential:
    w = WIDTH
    return nn.Sequential(
        _Clamp(), _conv(latent_channels, w), nn.ReLU(),
        _Block(w, w), _Block(w, w), _Block(w, w), nn.Upsample(scale_factor=2), _conv(w, w, bias=False),
        _Block(w, w), _Block(w, w), _Block(w, w), nn.Upsample(scale_factor=2), _conv(w, w, bias=False),
        _Block(w, w), _Block(w, w), _Block(w, w), nn.Upsample(scale_factor=2), _conv(w, w, bias=False),
        _Block(w, w), _conv(w, 3),
    )  # fmt: skip


class TinyAutoencoder(nn.Module):
    """TAESD-layout autoencoder: images in [0, 1] ``[N, 3, H, W]`` <-> latents ``[N, C, H/8, W/8]``."""

    downscale = 8

    def __init__(self, latent_channels: int = 16):
        super().__init__()
        self.latent_channels = latent_channels
        self.taesd_encoder = _encoder(latent_channels)
        self.taesd_decoder = _decoder(latent_channels)
        self.vae_scale = nn.Parameter(torch.tensor(1.0), requires_grad=False)
        self.vae_shift = nn.Parameter(torch.tensor(0.0), requires_grad=False)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> TinyAutoencoder:
        """An autoencoder with the latent channels the state dict was saved with."""
        model = cls(latent_channels=int(state["taesd_decoder.1.weight"].shape[1]))
        model.load_state_dict(state)
        return model.eval().requires_grad_(False)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.taesd_encoder(images) / self.vae_scale + self.vae_shift

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.taesd_decoder((latents - self.vae_shift) * self.vae_scale).clamp(0, 1)

    def raw_decode(self, raw: torch.Tensor) -> torch.Tensor:
        """The decoder on unnormalised latents (training, before the statistics are known)."""
        return self.taesd_decoder(raw)

    @torch.no_grad()
    def normalise(self, raw_latents: torch.Tensor) -> None:
        """Set scale and shift so that ``encode`` gives latents of mean 0 and variance 1."""
        std = raw_latents.std().clamp_min(1e-6)
        self.vae_scale.fill_(std)
        self.vae_shift.fill_(-raw_latents.mean() / std)
