"""One training example for PMG's soft embeddings, and its images as tensors.

An example pairs what the adapter reads (the user's soft-prompt text) with what
the generator should then denoise well (the target item's image under its
caption) and a random other item it should *not* favour (the negative).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import MissingImageError, TrainingError
from ..metrics.images import load_image


@dataclass(frozen=True)
class TrainingExample:
    """One user's soft-prompt text with a target and a negative (caption + image each)."""

    user_id: str
    soft_prompt_text: str
    target_caption: str
    target_image: Path
    negative_caption: str
    negative_image: Path

    def to_dict(self) -> dict:
        return {
            "user_id": self.user_id,
            "soft_prompt_text": self.soft_prompt_text,
            "target_caption": self.target_caption,
            "target_image": str(self.target_image),
            "negative_caption": self.negative_caption,
            "negative_image": str(self.negative_image),
        }


def examples_fingerprint(examples: list[TrainingExample]) -> str:
    """A short hash of the examples (texts and image paths), to refuse resuming on other data."""
    payload = json.dumps([e.to_dict() for e in examples], sort_keys=True).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:16]


def check_examples(examples: list[TrainingExample]) -> None:
    """Refuse an empty list and examples whose images do not exist, before any model runs."""
    if not examples:
        raise TrainingError(
            "No training examples: every user needs a target item with an image and at least one history item. "
            "Check the history file (targets and image paths) or choose more users."
        )
    for example in examples:
        for role, path in (("target", example.target_image), ("negative", example.negative_image)):
            if not Path(path).is_file():
                raise MissingImageError(
                    f"The {role} image {path} of user {example.user_id!r} does not exist; "
                    "fix the item's image path in the history file or drop the item."
                )


def load_training_image(path: Path, resolution: int) -> torch.Tensor:
    """An image as ``[3, R, R]`` in [0, 1]: transparency on white, centre-cropped square, resized.

    Upscaling small images (72 px Twemoji) uses bicubic interpolation; the crop
    keeps the centre because stickers and posters put their subject there.
    """
    image = load_image(path)[0]  # [3, H, W]
    _, height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[:, top : top + side, left : left + side]
    if side != resolution:
        square = F.interpolate(
            square.unsqueeze(0), size=(resolution, resolution), mode="bicubic", align_corners=False, antialias=side > resolution
        )[0]
    return square.clamp(0, 1).contiguous()
