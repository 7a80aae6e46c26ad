"""A second judge for the sticker evaluation: an emoji-category classifier trained on the real images.

LPIPS says how close two pictures look; it cannot say whether a generated
sticker *is* a face, an animal or a food. This small CNN is trained on the real
Twemoji images of the generator's training emoji (the same fixed split) to tell
emoji-data's nine picture categories apart. Its accuracy on the real held-out
emoji is the ceiling a generator can be held to; on generated images it judges
whether the condition was followed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import write_bytes_atomic
from ..errors import ModelLoadError
from ..weights_file import read_weights
from ..sticker_model.dataset import CATEGORIES, EmojiImage, image_tensor

logger = logging.getLogger(__name__)

FORMAT = "pmg-sticker-judge"
FILE_NAME = "pmg-sticker-judge.safetensors"


class CategoryJudge(nn.Module):
    """64x64 RGB in [0, 1] -> logits over :data:`pmg_core.sticker_model.dataset.CATEGORIES`."""

    def __init__(self, classes: int = len(CATEGORIES), width: int = 32):
        super().__init__()
        layers, channels = [], 3
        for out in (width, 2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != 64:
            images = F.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
        return self.head(self.features(images * 2 - 1).mean(dim=(2, 3)))

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self(images[i : i + 128]).softmax(-1) for i in range(0, len(images), 128)])


def train_judge(
    images: list[EmojiImage],
    steps: int = 1500,
    batch_size: int = 64,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> CategoryJudge:
    """Train on ``images`` (real pictures) with flips and small shifts; deterministic for a seed."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    pixels = image_tensor(images, 64)
    labels = torch.tensor([image.category_index for image in images])
    # Categories are unbalanced (People & Body has 7x the images of Activities): weight the loss by inverse frequency.
    counts = torch.bincount(labels, minlength=len(CATEGORIES)).clamp_min(1).float()
    class_weights = counts.sum() / (len(CATEGORIES) * counts)
    judge = CategoryJudge()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    judge.train()
    for step in range(steps):
        rows = torch.randint(0, len(images), (batch_size,), generator=generator)
        batch = _augment(pixels[rows], generator)
        loss = F.cross_entropy(judge(batch), labels[rows], weight=class_weights, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress is not None:
            progress(step + 1, steps)
    return judge.eval().requires_grad_(False)


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(batch.shape[0], generator=generator) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    dx, dy = (int(v) for v in torch.randint(-4, 5, (2,), generator=generator))
    shifted = torch.ones_like(batch)  # white fills what the shift uncovers
    h, w = batch.shape[-2:]
    shifted[..., max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = batch[
        ..., max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)
    ]
    return shifted


def accuracy(judge: CategoryJudge, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((judge.probabilities(images).argmax(-1) == labels).float().mean())


def save_judge(judge: CategoryJudge, path: Path, training: dict) -> Path:
    from safetensors.torch import save

    metadata = {"format": FORMAT, "categories": json.dumps(CATEGORIES), "training": json.dumps(training, sort_keys=True)}
    write_bytes_atomic(Path(path), save({k: v.contiguous() for k, v in judge.state_dict().items()}, metadata=metadata))
    return Path(path)


def load_judge(path: Path) -> CategoryJudge:
    path = Path(path)
    state, metadata = read_weights(path, f"No sticker judge at {path}; train one with: pmg eval --train-judge",
                                   "train the judge again with: pmg eval --train-judge")
    if metadata.get("format") != FORMAT or json.loads(metadata.get("categories", "[]")) != list(CATEGORIES):
        raise ModelLoadError(f"{path} is not a PMG sticker judge for these categories; retrain it with: pmg eval --train-judge")
    judge = CategoryJudge()
    judge.load_state_dict(state)
    return judge.eval().requires_grad_(False)
