"""Fitting a history into an LLM's context: which of its oldest entries to drop.

Pure functions over a history, a way to render it into a request and a way to count a
request's tokens; no model, no cache, no logging of their own beyond the one warning
that says what was dropped.

"Oldest" is by timestamp where entries have one (undated ones count as older than
dated ones), else by position: a history sorted by rating (``SplitRule(order="rating")``)
thus keeps its most recent items, in order.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import EmptyHistoryError
from .history import UserHistory
from .prompts import ChatRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FittedHistory:
    """A history cut to fit, the text it renders to and its request."""

    history: UserHistory  # only the kept items (or turns)
    text: str
    request: ChatRequest
    dropped: int  # entries dropped to fit
    tokens: int  # the request's length


def timestamp(unit) -> float:
    value = getattr(unit, "timestamp", None)
    return float("-inf") if value is None else float(value)


def oldest_first(units: Sequence) -> list[int]:
    """Indices of ``units``, oldest first."""
    return sorted(range(len(units)), key=lambda i: (timestamp(units[i]), i))


def most_recent(history: UserHistory, max_items: int) -> tuple[UserHistory, int]:
    """``history`` with only its ``max_items`` most recent items (in their order), and how many went."""
    units = history.items
    if len(units) <= max_items:
        return history, 0
    newest = set(oldest_first(units)[-max_items:])
    return dataclasses.replace(history, items=tuple(u for i, u in enumerate(units) if i in newest)), len(units) - max_items


def fit_to_context(
    history: UserHistory,
    render: Callable[[UserHistory], str],
    to_request: Callable[[str], ChatRequest],
    count_tokens: Callable[[ChatRequest], int],
    context_length: int,
    answer_tokens: int,
) -> FittedHistory:
    """Drop the oldest items (turns for a conversation) until prompt + answer fit ``context_length``.

    Raises :class:`EmptyHistoryError` when not even one entry fits.
    """
    budget = context_length - answer_tokens
    use_turns = not history.items
    units = history.conversation if use_turns else history.items
    order = oldest_first(units)

    def build(dropped: int) -> FittedHistory:
        gone = set(order[:dropped])
        rest = tuple(unit for i, unit in enumerate(units) if i not in gone)
        trimmed = dataclasses.replace(history, **({"conversation": rest} if use_turns else {"items": rest}))
        text = render(trimmed)
        request = to_request(text)
        return FittedHistory(trimmed, text, request, dropped, count_tokens(request))

    # Every unit takes at least one token, so more than `budget` units never fit: a
    # 10,000-item history is not rendered and counted whole at every search step.
    at_least = max(len(units) - max(budget, 1), 0)
    fitted = build(at_least)
    if fitted.tokens <= budget:
        return fitted
    # Binary search for the fewest dropped units that fit (the length shrinks as units go).
    low, high = at_least + 1, len(units) - 1
    best = None
    while low <= high:
        middle = (low + high) // 2
        candidate = build(middle)
        if candidate.tokens <= budget:
            best, high = candidate, middle - 1
        else:
            low = middle + 1
    if best is None:
        raise EmptyHistoryError(
            f"Even one history entry of user {history.user_id!r} does not fit the LLM's context "
            f"({context_length} tokens, {answer_tokens} kept for the answer); lower "
            "max_new_tokens, shorten the item texts, or use an LLM with a longer context."
        )
    log.warning(
        "User %r: dropped the %d oldest of %d history entries so the prompt (%d tokens) fits the "
        "LLM's context of %d tokens.", history.user_id, best.dropped, len(units), best.tokens, context_length,
    )
    return best
