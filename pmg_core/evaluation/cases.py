"""Evaluation users: their keywords (from the LLM, cached), images and soft embeddings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidSettingError
from ..sticker_model.dataset import CATEGORIES, load_on_white
from ..sticker_model.text_encoder import WIDTH
from ..history import Item, UserHistory
from ..keywords import KeywordExtractor
from .sticker_eval import UserCase


def item_image(item: Item) -> torch.Tensor:
    """``[3, 64, 64]`` in [0, 1]: the item's image on white, at the generator's size."""
    if item.image_path is None:
        raise InvalidSettingError(f"Item {item.item_id!r} has no image; sticker evaluation users need one per item.")
    array = np.asarray(load_on_white(item.image_path, 64), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def image_prompt_examples(generator, encoder, lpips, histories: list[UserHistory]):
    """Training users of the image route: history-image features, the target's latent and its prompt's states."""
    from ..image_prompt import ImagePromptExample, image_features
    from ..render import render_target_text

    examples = []
    with torch.no_grad():
        for history in histories:
            target = history.target
            latent = generator.autoencoder.encode(item_image(target).unsqueeze(0))[0]
            states = encoder.encode([render_target_text(target, target.keywords, history.scene)]).embeddings[0]
            features = image_features(lpips, torch.stack([item_image(item) for item in history.items]))
            examples.append(ImagePromptExample(features, latent.float(), states.float()))
    return examples


def build_cases(
    histories: list[UserHistory],
    llm,
    cache_dir: Path | None,
    methods: list[str],
    adapter_path: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    image_prompt=None,
) -> list[UserCase]:
    """One :class:`UserCase` per history; soft embeddings only for the methods that use them
    (``image_prompt``, an :class:`pmg_core.image_prompt.ImagePrompt`, adds the history images' tokens as ``soft["image"]``)."""
    from ..soft_prompt import SoftPromptAdapter, load_adapter

    preferences = KeywordExtractor(llm, cache_dir=cache_dir).extract_many(histories)
    adapters = {}
    if "keywords + soft (untrained)" in methods:
        adapters["(untrained)"] = SoftPromptAdapter.untrained(llm, text_dim=WIDTH)
    if "keywords + soft (trained)" in methods:
        adapters["(trained)"] = load_adapter(adapter_path, llm=llm, text_dim=WIDTH)
    cases = []
    for index, (history, preference) in enumerate(zip(histories, preferences, strict=True)):
        target = history.target
        with torch.no_grad():
            soft = {name: adapter.encode(llm, [preference.soft_prompt_text]).float() for name, adapter in adapters.items()}
        history_images = torch.stack([item_image(item) for item in history.items])
        if image_prompt is not None:
            soft["image"] = image_prompt.encode(history_images)
        cases.append(
            UserCase(
                history=history,
                preference=preference,
                history_images=history_images,
                target_image=item_image(target).unsqueeze(0),
                target_category=CATEGORIES.index(target.categories[0]),
                soft=soft,
            )
        )
        if progress is not None:
            progress(index + 1, len(histories))
    return cases
