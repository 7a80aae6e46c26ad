"""Which of a user's interactions form the history and which one is the target.

The PMG reference (MovieLens) keeps ratings >= 4, sorts by (-rating, -timestamp),
takes the first min(3, n-1) items as the history and the next one as the target.
Later work (Pigeon) slides a window of 5 history items + 1 target over the
chronological sequence. :class:`SplitRule` expresses both as options.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Literal, Sequence

from ..errors import InvalidSettingError
from ..history import Item, UserHistory

logger = logging.getLogger(__name__)

ORDERS = ("rating", "chronological")
TARGETS = ("next", "none")


@dataclass(frozen=True)
class SplitRule:
    """How to cut one user's interactions into a history and a target.

    - ``min_rating``: drop items rated below it (default 4, as the reference);
      ``None`` keeps all. Unrated items are kept (implicit feedback: a click, a
      sent sticker, counts as liking it).
    - ``order="rating"``: most relevant first, by (-rating, -timestamp); unrated
      items come after rated ones; ties keep the file's order. The history is
      the first ``min(max_history, n - 1)`` items and the target the next one.
    - ``order="chronological"``: oldest first (undated items first, in file
      order). The target is the latest item and the history the
      ``max_history`` items just before it.
    - ``max_history``: at most this many history items (reference 3); ``None``
      keeps all but the target.
    - ``target="none"``: no target; every kept item may be history.

    The resulting history keeps the rule's order: most relevant first for
    ``"rating"``, oldest first for ``"chronological"``.
    """

    min_rating: float | None = 4.0
    order: Literal["rating", "chronological"] = "rating"
    max_history: int | None = 3
    target: Literal["next", "none"] = "next"

    def __post_init__(self) -> None:
        if self.min_rating is not None and (
            isinstance(self.min_rating, bool)
            or not isinstance(self.min_rating, (int, float))
            or not math.isfinite(self.min_rating)
        ):
            raise InvalidSettingError(f"SplitRule.min_rating must be a finite number or None, not {self.min_rating!r}.")
        if self.order not in ORDERS:
            raise InvalidSettingError(f"SplitRule.order must be one of {ORDERS}, not {self.order!r}.")
        if self.target not in TARGETS:
            raise InvalidSettingError(f"SplitRule.target must be one of {TARGETS}, not {self.target!r}.")
        if self.max_history is not None and (
            isinstance(self.max_history, bool) or not isinstance(self.max_history, int) or self.max_history < 1
        ):
            raise InvalidSettingError(
                f"SplitRule.max_history must be a positive integer or None (all), not {self.max_history!r}."
            )

    @classmethod
    def reference(cls) -> "SplitRule":
        """The PMG reference split: ratings >= 4, by (-rating, -timestamp), 3 history items + the next."""
        return cls()

    @classmethod
    def sliding_window(cls, size: int = 5, min_rating: float | None = None) -> "SplitRule":
        """The latest window of ``size`` chronological items plus the item after them as target.

        :func:`sliding_windows` gives every window of a history (training samples).
        """
        return cls(min_rating=min_rating, order="chronological", max_history=size, target="next")

    @classmethod
    def keep_all(cls) -> "SplitRule":
        """Every interaction, oldest first, as history; no target."""
        return cls(min_rating=None, order="chronological", max_history=None, target="none")

    def describe(self) -> str:
        rating = "all ratings" if self.min_rating is None else f"ratings >= {self.min_rating:g}"
        size = "all" if self.max_history is None else f"up to {self.max_history}"
        target = "the next item as target" if self.target == "next" else "no target"
        return f"{rating}, {self.order} order, {size} history items, {target}"

    def kept(self, items: Sequence[Item]) -> list[Item]:
        """The items that pass the rating filter, in file order."""
        if self.min_rating is None:
            return list(items)
        return [item for item in items if item.rating is None or item.rating >= self.min_rating]

    def ordered(self, items: Sequence[Item]) -> list[Item]:
        """The kept items in the rule's order."""
        kept = self.kept(items)
        if self.order == "rating":
            return sorted(kept, key=_relevance_key)
        return sorted(kept, key=_time_key)

    def split(self, items: Sequence[Item]) -> tuple[tuple[Item, ...], Item | None]:
        """``(history, target)`` for one user's interactions (in any order)."""
        sequence = self.ordered(items)
        if self.target == "none":
            if self.max_history is None or len(sequence) <= self.max_history:
                return tuple(sequence), None
            if self.order == "rating":
                return tuple(sequence[: self.max_history]), None
            return tuple(sequence[-self.max_history :]), None
        if not sequence:
            return (), None
        if self.order == "rating":
            size = len(sequence) - 1 if self.max_history is None else min(self.max_history, len(sequence) - 1)
            return tuple(sequence[:size]), sequence[size]
        before, target = sequence[:-1], sequence[-1]
        if self.max_history is not None:
            before = before[-self.max_history :]
        return tuple(before), target

    def apply(self, history: UserHistory) -> UserHistory:
        """The history re-split by this rule; the file's own target joins the pool first."""
        pool = history.items + ((history.target,) if history.target is not None else ())
        items, target = self.split(pool)
        return dataclasses.replace(history, items=items, target=target)


def truncate(history: UserHistory, max_items: int | None, newest_last: bool) -> UserHistory:
    """Keep at most ``max_items`` history items, the most relevant ones, and log what was dropped.

    ``newest_last``: the items are oldest first, so the most relevant are at the
    end; otherwise (rating order) they are at the start.
    """
    if max_items is None:
        return history
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise InvalidSettingError(f"max_items must be a positive integer or None, not {max_items!r}.")
    if len(history.items) <= max_items:
        return history
    kept = history.items[-max_items:] if newest_last else history.items[:max_items]
    logger.info(
        "user %s: kept the %d most relevant of %d history items (max_items=%d); %d dropped.",
        history.user_id,
        max_items,
        len(history.items),
        max_items,
        len(history.items) - max_items,
    )
    return dataclasses.replace(history, items=tuple(kept))


def sliding_windows(history: UserHistory, size: int = 5, stride: int = 1) -> list[UserHistory]:
    """Every window of ``size`` consecutive items plus the following item as target (training samples).

    The history's items and its target are put in chronological order first. A
    user with at most ``size`` items gives one window (all but the latest item as
    history); a user with fewer than two items gives none.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InvalidSettingError(f"sliding window size must be a positive integer, not {size!r}.")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise InvalidSettingError(f"sliding window stride must be a positive integer, not {stride!r}.")
    pool = history.items + ((history.target,) if history.target is not None else ())
    sequence = sorted(pool, key=_time_key)
    if len(sequence) < 2:
        return []
    if len(sequence) <= size:
        return [dataclasses.replace(history, items=tuple(sequence[:-1]), target=sequence[-1])]
    return [
        dataclasses.replace(history, items=tuple(sequence[end - size : end]), target=sequence[end])
        for end in range(size, len(sequence), stride)
    ]


def _relevance_key(item: Item) -> tuple:
    rating = item.rating if item.rating is not None else -math.inf
    timestamp = item.timestamp if item.timestamp is not None else -math.inf
    return (item.rating is None, -rating, -timestamp)


def _time_key(item: Item) -> float:
    return item.timestamp if item.timestamp is not None else -math.inf
