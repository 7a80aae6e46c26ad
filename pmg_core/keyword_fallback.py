"""Keywords from an item's or a history's own metadata, for when the LLM gives none that are usable."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

from .history import Item, UserHistory
from .keyword_parser import normalize_keyword

# Words that carry no preference of their own; kept out of keywords built from metadata.
_STOPWORDS = frozenset([
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "he", "her", "his", "i", "in",
    "into", "is", "it", "its", "me", "my", "no", "not", "of", "on", "or", "our", "she", "so", "than", "that", "the", "their",
    "them", "then", "there", "they", "this", "to", "too", "us", "was", "we", "were", "what", "when", "which", "who", "will",
    "with", "you", "your", "released",
])
_WORD = re.compile(r"[^\W\d_][\w'&-]*")


def _content_words(text: str) -> list[str]:
    """The words of ``text`` worth a keyword: no stop words, no numbers, at least three letters."""
    return [word for word in _WORD.findall(text) if len(word) >= 3 and word.casefold() not in _STOPWORDS]


def _unique(words, limit: int) -> list[str]:
    seen: set[str] = set()
    kept = []
    for word in words:
        word = normalize_keyword(word)
        if word and word.casefold() not in seen:
            seen.add(word.casefold())
            kept.append(word)
    return kept[:limit]


def item_fallback_keywords(item: Item, n: int) -> list[str]:
    """Keywords from an item's own metadata: its categories, then the content words of its title."""
    return _unique([*item.categories, *_content_words(item.title)], n)


def history_fallback_keywords(history: UserHistory, item_keywords: Mapping[tuple, tuple[str, ...]], n: int,
                              prompt_set: str) -> list[str]:
    """Preference keywords from a history's metadata: its most frequent categories, item keywords and
    title words (the conversation's words for a chat), most frequent first; ``item_keywords`` is keyed
    by :func:`item_identity` in ``prompt_set``."""
    counts: Counter[str] = Counter()
    for item in history.items:
        words = item.keywords or item_keywords.get(item_identity(item, prompt_set), ())
        # Each word once per item, in first-seen order: ties among equal counts must not follow
        # set order, which changes with every process's string hash seed.
        counts.update(list(dict.fromkeys(word.casefold() for word in (*item.categories, *words, *_content_words(item.title)))))
    for turn in history.conversation:
        counts.update(word.casefold() for word in _content_words(turn.text))
    return _unique([word for word, _ in counts.most_common()], n)


def item_identity(item: Item, prompt_set: str) -> tuple:
    """Which item a keyword answer belongs to (an item is described once per prompt set)."""
    return (item.item_id, item.title, prompt_set)
