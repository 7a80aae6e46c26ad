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

from collections import Counter
from collections.abc import Iterable

from ..history import UserHistory
from ..keyword_parser import MAX_WORDS, folded_words, is_cut, is_echo, source_words

CLASSES = ("abstraction", "copy", "category", "echo", "junk")


def keyword_class(keyword: str, history: UserHistory, instruction_words: frozenset[str], others: Iterable[str] = ()) -> str:
    """The class of one keyword of ``history``'s user (see the module docstring)."""
    words = folded_words(keyword)
    items = [*history.items, *([history.target] if history.target is not None else [])]
    others = [other for other in others if other != keyword]
    sources = source_words([text for item in items for text in (item.title, *item.categories)] + others)
    if not words or len(keyword.split()) > MAX_WORDS or is_cut(keyword, others, sources):
        return "junk"
    if is_echo(keyword, instruction_words):
        return "echo"
    categories = {" ".join(folded_words(category)) for item in items for category in item.categories}
    if " ".join(words) in categories:
        return "category"
    if any(set(words) <= set(folded_words(item.title)) for item in items):
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
