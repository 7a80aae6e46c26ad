"""The sticker generator's noise predictor: a small text-conditioned UNet on 8x8 latents.

It is a diffusers ``UNet2DConditionModel`` (two levels, 8x8 and 4x4, cross-attention
to 384-wide MiniLM token states at both) behind the call signature ComfyUI's
``comfy.model_base.BaseModel`` uses for its diffusion models:
``forward(x, timesteps, context=..., **extra)``. ComfyUI builds it from
:data:`UNET_CONFIG` with ``StickerDenoiser(**config, device=..., operations=...)``;
the library builds it the same way, so one class serves training, the library's
sampler and the sampler inside ComfyUI.
"""

from __future__ import annotations

import torch
from torch import nn

from ..requirements import require

# Everything that fixes the network's shape; saved in the weights' metadata.
UNET_CONFIG: dict = {
    "in_channels": 16,
    "block_out_channels": (64, 128),
    "layers_per_block": 2,
    "cross_attention_dim": 384,
    "attention_head_dim": 32,
}


class StickerDenoiser(nn.Module):
    """ε-prediction UNet: ``(latents [N, C, 8, 8], timesteps [N], context [N, T, 384]) -> ε``."""

    def __init__(
        self,
        in_channels: int = 16,
        block_out_channels=(64, 128),
        layers_per_block: int = 2,
        cross_attention_dim: int = 384,
        attention_head_dim: int = 32,
        dtype: torch.dtype | None = None,
        device=None,
        **_comfy_kwargs,  # ComfyUI also passes `operations`: the network builds its own layers
    ):
        super().__init__()
        UNet2DConditionModel = require("diffusers", "the sticker generator's network").UNet2DConditionModel

        levels = len(block_out_channels)
        self.unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=in_channels,
            out_channels=in_channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            down_block_types=("CrossAttnDownBlock2D",) * levels,
            up_block_types=("CrossAttnUpBlock2D",) * levels,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            norm_num_groups=32,
        )
        if dtype is not None or device is not None:
            self.unet.to(device=device, dtype=dtype)

    @property
    def dtype(self) -> torch.dtype:  # BaseModel reads it at construction
        return next(self.unet.parameters()).dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None, **_extra) -> torch.Tensor:
        if context is None:
            raise ValueError("The sticker denoiser needs a text condition (context); encode a prompt first.")
        dtype = self.dtype
        timesteps = timesteps.reshape(-1).to(x.device).expand(x.shape[0]) if timesteps.numel() == 1 else timesteps
        out = self.unet(x.to(dtype), timesteps.to(dtype), encoder_hidden_states=context.to(dtype)).sample
        return out.to(x.dtype)
