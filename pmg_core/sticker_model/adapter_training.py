"""Training PMG's soft-prompt adapter on the sticker generator.

The soft-prompt trainer (:class:`pmg_core.training.trainer.SoftPromptTrainer`)
needs a noise predictor, a latent encoder and the noise schedule behind small
protocols; these give it the sticker generator's denoiser, autoencoder and
schedule, and MiniLM as the text encoder, so an adapter learns to write soft
embeddings in exactly the space this generator reads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..history import UserHistory
from ..training.components import NoiseSchedule, frozen_parameters
from ..training.data import build_examples
from ..training.trainer import SoftPromptTrainer, TrainConfig, TrainResult
from .sampling import alphas_cumprod
from .text_encoder import MiniLMTextEncoder
from .weights import StickerModel


class StickerNoisePredictor:
    """The denoiser behind :class:`pmg_core.training.components.NoisePredictor` (frozen; gradients reach ``cond``)."""

    def __init__(self, generator: StickerModel):
        self.denoiser = generator.denoiser
        frozen_parameters(self.denoiser)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def __call__(self, noisy_latents: Tensor, timesteps: Tensor, cond_embeddings: Tensor) -> Tensor:
        return self.denoiser(noisy_latents, timesteps.float(), cond_embeddings)


class StickerLatentEncoder:
    """Images in [0, 1] to the normalised latents the denoiser was trained on."""

    def __init__(self, generator: StickerModel):
        self.autoencoder = generator.autoencoder
        frozen_parameters(self.autoencoder)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        return self.autoencoder.encode(images.to(next(self.autoencoder.parameters()).device))


def train_sticker_adapter(
    generator: StickerModel,
    llm,
    adapter,
    histories: list[UserHistory],
    out_dir: Path,
    config: TrainConfig,
    encoder: MiniLMTextEncoder | None = None,
    progress=None,
) -> TrainResult:
    """Train ``adapter`` on the target stickers of ``histories`` (their own target keywords as captions)."""
    trainer = SoftPromptTrainer(
        llm,
        adapter,
        encoder or MiniLMTextEncoder(),
        StickerNoisePredictor(generator),
        StickerLatentEncoder(generator),
        NoiseSchedule(alphas_cumprod()),
        config,
        generator_identity=str(generator.metadata.get("format", "pmg-sticker-generator")),
    )
    return trainer.train(build_examples(histories), out_dir, progress=progress)
