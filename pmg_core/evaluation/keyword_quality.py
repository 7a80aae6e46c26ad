"""What kind of keywords the LLM gives: abstractions, copies, categories, echoes or junk.

PMG's explicit preference is a handful of keywords. Whether they help depends on what
they are, so each keyword of a user is put in one class, checked in this order:

* **junk**: no letters, a sentence (more than six words), or a word cut off mid-way (the
  start of a longer word of the history or of the other keywords: "Hor" beside "Horror");
* **echo**: every word is a word of PMG's own prompt ("mood, color, character");
* **category**: the name of one of the history's genres or emoji categories;
* **copy**: its words all come from one item's title or name ("teddy" of "teddy bear");
* **junk** again: a word repeated inside a keyword that is no title ("Movie Movie Movie");
* **abstraction**: anything else — a word the LLM brought itself.

:func:`keyword_classes` is pure; :func:`quality_table` counts the shares per class.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from ..history import UserHistory
from ..keyword_parser import MAX_WORDS, is_echo

CLASSES = ("abstraction", "copy", "category", "echo", "junk")
_WORD = re.compile(r"[^\W\d_]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def _is_cut_word(word: str, vocabulary: set[str]) -> bool:
    """``word`` is not a word of ``vocabulary`` but the start of one, two or more letters short of it."""
    return word not in vocabulary and any(len(other) >= len(word) + 2 and other.startswith(word) for other in vocabulary)


def keyword_class(keyword: str, history: UserHistory, instruction_words: frozenset[str], others: Iterable[str] = ()) -> str:
    """The class of one keyword of ``history``'s user (see the module docstring)."""
    words = _words(keyword)
    items = [*history.items, *([history.target] if history.target is not None else [])]
    vocabulary = {w for item in items for w in _words(f"{item.title} {' '.join(item.categories)}")}
    vocabulary |= {w for other in others for w in _words(other) if other != keyword}
    if not words or len(keyword.split()) > MAX_WORDS or _is_cut_word(words[-1], vocabulary):
        return "junk"
    if is_echo(keyword, instruction_words):
        return "echo"
    categories = {" ".join(_words(category)) for item in items for category in item.categories}
    if " ".join(words) in categories:
        return "category"
    if any(set(words) <= set(_words(item.title)) for item in items):
        return "copy"  # before the repeated-word rule: "Liar Liar" is a title
    if len(set(words)) < len(words):
        return "junk"
    return "abstraction"


def keyword_classes(keywords: Iterable[str], history: UserHistory, instruction_words: frozenset[str]) -> list[str]:
    """The class of each keyword, in order (each judged beside the others of the list)."""
    keywords = list(keywords)
    return [keyword_class(k, history, instruction_words, keywords) for k in keywords]


def quality_table(classes: Iterable[str]) -> dict:
    """``{"keywords": n, "shares": {class: share}}`` over every class, zeros included."""
    counts = Counter(classes)
    total = sum(counts.values())
    return {"keywords": total, "shares": {name: (counts[name] / total if total else 0.0) for name in CLASSES}}
