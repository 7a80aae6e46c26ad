"""Evaluation users: their keywords (from the LLM, cached), images and soft embeddings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidSettingError
from ..generator.dataset import CATEGORIES, load_on_white
from ..generator.text_encoder import WIDTH
from ..history import Item, UserHistory
from ..keywords import KeywordExtractor
from .sticker_eval import UserCase


def item_image(item: Item) -> torch.Tensor:
    """``[3, 64, 64]`` in [0, 1]: the item's image on white, at the generator's size."""
    if item.image_path is None:
        raise InvalidSettingError(f"Item {item.item_id!r} has no image; sticker evaluation users need one per item.")
    array = np.asarray(load_on_white(item.image_path, 64), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def build_cases(
    histories: list[UserHistory],
    llm,
    cache_dir: Path | None,
    methods: list[str],
    adapter_path: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[UserCase]:
    """One :class:`UserCase` per history; soft embeddings only for the methods that use them."""
    from ..soft_prompt import SoftPromptAdapter, load_adapter

    preferences = KeywordExtractor(llm, cache_dir=cache_dir).extract_many(histories)
    adapters = {}
    if "keywords + soft (untrained)" in methods:
        adapters["(untrained)"] = SoftPromptAdapter.untrained(llm, text_dim=WIDTH)
    if "keywords + soft (trained)" in methods:
        adapters["(trained)"] = load_adapter(adapter_path, llm=llm, text_dim=WIDTH)
    cases = []
    for index, (history, preference) in enumerate(zip(histories, preferences)):
        target = history.target
        with torch.no_grad():
            soft = {name: adapter.encode(llm, [preference.soft_prompt_text]).float() for name, adapter in adapters.items()}
        cases.append(
            UserCase(
                history=history,
                preference=preference,
                history_images=torch.stack([item_image(item) for item in history.items]),
                target_image=item_image(target).unsqueeze(0),
                target_category=CATEGORIES.index(target.categories[0]),
                soft=soft,
            )
        )
        if progress is not None:
            progress(index + 1, len(histories))
    return cases
