"""Training examples from user histories whose target items have images.

For each user: the soft-prompt text the adapter reads (the scene's "Please
describe his interests" prompt around the rendered history), the target item's
caption (the scene's generation prompt, :func:`render_target_text`) and image,
and a negative: another user's target item, picked with a seeded RNG.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import MissingImageError, TrainingError
from ..history import Item, UserHistory
from ..prompts import soft_prompt_text
from ..render import render_history, render_target_text
from .examples import TrainingExample

logger = logging.getLogger(__name__)

__all__ = ["build_examples", "split_users"]


def _own_keywords(item: Item) -> tuple[str, ...]:
    return item.keywords


def build_examples(
    histories: Sequence[UserHistory],
    seed: int = 0,
    target_keywords: Callable[[Item], Sequence[str]] | None = None,
    skip_incomplete: bool = False,
) -> list[TrainingExample]:
    """One :class:`TrainingExample` per user, in the order given.

    ``target_keywords(item)`` gives the keywords of a target's caption; by
    default the item's own keywords (for stickers: the emotion and expression;
    pass a :class:`pmg_core.keywords.KeywordExtractor`-backed function to use
    LLM target keywords as at generation time).

    Raises :class:`TrainingError` for users without a target or a target image
    (or, with ``skip_incomplete=True``, drops them with a warning), for fewer
    than two distinct target items (no negative can be drawn), and
    :class:`MissingImageError` for image paths that do not exist.
    """
    keywords_of = target_keywords or _own_keywords
    usable = _usable_histories(histories, skip_incomplete)
    targets = {_item_key(h.target) for h in usable}
    if len(targets) < 2:
        raise TrainingError(
            f"Training needs at least two users with different target items (the loss contrasts a user's target "
            f"with another user's); found {len(usable)} usable user(s) with {len(targets)} distinct target(s). "
            "Add more users with targets and images."
        )

    rng = random.Random(seed)
    examples = []
    for history in usable:
        target = history.target
        others = [h for h in usable if _item_key(h.target) != _item_key(target)]
        negative = rng.choice(others)
        examples.append(
            TrainingExample(
                user_id=history.user_id,
                soft_prompt_text=soft_prompt_text(history.scene, render_history(history)),
                target_caption=_caption(target, history.scene, keywords_of),
                target_image=Path(target.image_path),
                negative_caption=_caption(negative.target, negative.scene, keywords_of),
                negative_image=Path(negative.target.image_path),
            )
        )
    return examples


def _usable_histories(histories: Sequence[UserHistory], skip_incomplete: bool) -> list[UserHistory]:
    """The users that can be trained on: a history and a target whose image exists (see :func:`build_examples`)."""
    usable: list[UserHistory] = []
    incomplete: list[str] = []
    for history in histories:
        target = history.target
        if target is None or target.image_path is None or not (history.items or history.conversation):
            incomplete.append(history.user_id)
            continue
        if not Path(target.image_path).is_file():
            raise MissingImageError(
                f"The target image {target.image_path} of user {history.user_id!r} does not exist; fix the path in "
                "the history file (relative paths are read from the file's folder) or remove the user."
            )
        usable.append(history)
    if incomplete:
        shown = ", ".join(repr(u) for u in incomplete[:5]) + (" ..." if len(incomplete) > 5 else "")
        if not skip_incomplete:
            raise TrainingError(
                f"{len(incomplete)} user(s) have no target item with an image, or no history: {shown}. "
                "Training needs, per user, history items and a target item whose image shows what to generate; "
                "add targets with images (e.g. the sticker data set: pmg train --stickers N) or drop these users."
            )
        logger.warning("Skipping %d user(s) without a target image or history: %s", len(incomplete), shown)
    return usable


def split_users(histories: Sequence[UserHistory], held_out: int, seed: int = 0) -> tuple[list[UserHistory], list[UserHistory]]:
    """``(train, held_out)``: a seeded random choice of ``held_out`` users kept away from training."""
    histories = list(histories)
    if held_out <= 0:
        return histories, []
    if held_out >= len(histories) - 1:
        raise TrainingError(
            f"Holding out {held_out} of {len(histories)} users leaves fewer than two to train on; "
            "hold out fewer users or add more."
        )
    order = list(range(len(histories)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:held_out])
    train = [h for i, h in enumerate(histories) if i not in chosen]
    evaluation = [h for i, h in enumerate(histories) if i in chosen]
    return train, evaluation


def _item_key(item: Item) -> tuple[str, str]:
    return (item.item_id, str(item.image_path))


def _caption(item: Item, scene: str, keywords_of: Callable[[Item], Sequence[str]]) -> str:
    return render_target_text(item, tuple(keywords_of(item)), scene)
