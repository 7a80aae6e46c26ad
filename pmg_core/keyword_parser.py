"""Turn what an LLM answered into a clean keyword list.

Small instruct models rarely follow the requested format exactly. This parser
accepts what they really emit: numbered lists on one line or many ("1. a 2. b",
"1) a"), bullets (-, *, •), comma or semicolon separated lists, a "The keywords
are:" preamble, quotes, markdown bold, trailing periods and explanations
("Action - lots of fights"). It never returns junk silently: echoes of the
prompt's example ("Keyword 1"), sentences (more than six words) and empty
strings are dropped, and if nothing usable is left it raises
:class:`KeywordParseError` with an excerpt of the raw answer and the fix.
"""

from __future__ import annotations

import itertools
import re

from .errors import KeywordParseError

MAX_WORDS = 6  # a "keyword" longer than this is a sentence the model wrote instead

# "1." or "1)" preceded by start/whitespace/punctuation and followed by whitespace.
_NUMBER = re.compile(r"(?:^|(?<=[\s:(\"'*]))(\d{1,2})[.)](?=\s|$)")
_BULLET_LINE = re.compile(r"^\s*[-*•·–]\s+")
_MARKDOWN = re.compile(r"\*\*|__|`+|^#+\s*", re.MULTILINE)
# A lead-in ending with a colon ("The keywords are:", "Here are 8 keywords for you:").
_PREAMBLE = re.compile(r"^[^,;\n]{0,80}?\b(?:keywords?|interests?|here|are|is)\b[^,;\n]{0,40}?:\s*", re.IGNORECASE)
_EXPLANATION = re.compile(r"\s[-–—]\s|:\s|\.\s|\(")
_NOT_ALLOWED = re.compile(r"[^\w\s'&-]|_")
_LETTERS = re.compile(r"[^\W\d_]+")
_EXAMPLE_ECHO = re.compile(r"^(?:keyword|key word)s?\s*\d*$", re.IGNORECASE)


def parse_keywords(text: str, expected: int | None = None, max_keywords: int | None = None) -> list[str]:
    """The keywords in an LLM answer, cleaned, deduplicated (case-insensitive) and in order.

    ``max_keywords`` caps the list; when it is not given, ``expected`` (the number
    the prompt asked for) is the cap, because small models keep counting past it.
    Raises :class:`KeywordParseError` when nothing usable remains.
    """
    cap = max_keywords if max_keywords is not None else expected
    raw = text if isinstance(text, str) else ""
    candidates = _split(_MARKDOWN.sub("", raw))
    keywords: list[str] = []
    seen: set[str] = set()
    for candidate in candidates:
        keyword = _clean(candidate)
        if not keyword or _is_junk(keyword):
            continue
        key = keyword.casefold()
        if key in seen:
            continue
        seen.add(key)
        keywords.append(keyword)
        if cap is not None and len(keywords) >= cap:
            break
    if not keywords:
        excerpt = " ".join(raw.split())[:160] or "<empty>"
        raise KeywordParseError(
            f"The LLM's answer holds no usable keywords: {excerpt!r}. "
            "Try a larger model or raise max_new_tokens (the answer may have been cut off)."
        )
    return keywords


def _split(text: str) -> list[str]:
    """Candidate keywords: numbered items first, then bullets, then separators."""
    numbered = _numbered_items(text)
    if numbered:
        return [part for item in numbered for part in _separated(_first_line(item))]
    lines = [line for line in text.splitlines() if line.strip()]
    bullets = [_BULLET_LINE.sub("", line) for line in lines if _BULLET_LINE.match(line)]
    if bullets:
        return [part for item in bullets for part in _separated(item)]
    return [part for line in lines for part in _separated(_PREAMBLE.sub("", line.strip()))]


def _numbered_items(text: str) -> list[str]:
    """Items of a 1., 2., 3. list; a marker only counts if it continues the sequence.

    Requiring consecutive numbers keeps titles such as "Apollo 13. " or years from
    being taken for list markers.
    """
    markers = []
    expected_number = None
    for match in _NUMBER.finditer(text):
        number = int(match.group(1))
        if (expected_number is None and number in (0, 1)) or number == expected_number:
            markers.append(match)
            expected_number = number + 1
    if not markers:
        return []
    bounds = [(m.end(), nxt.start()) for m, nxt in itertools.pairwise(markers)] + [(markers[-1].end(), len(text))]
    return [text[start:end] for start, end in bounds]


def _first_line(item: str) -> str:
    lines = [line for line in item.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _separated(segment: str) -> list[str]:
    """A segment split at commas/semicolons, each part cut before an explanation."""
    parts = re.split(r"[,;]|\s/\s", segment)
    return [_EXPLANATION.split(part.strip(), maxsplit=1)[0] for part in parts]


def normalize_keyword(candidate: str) -> str:
    """One keyword cleaned as :func:`parse_keywords` cleans each item (allowed characters only)."""
    return _clean(candidate)


def _clean(candidate: str) -> str:
    text = candidate.replace("’", "'").replace("‘", "'")
    text = _NOT_ALLOWED.sub(" ", text)
    text = " ".join(text.split())
    return text.strip(" '-&")


def _is_junk(keyword: str) -> bool:
    if len(keyword.split()) > MAX_WORDS:
        return True
    if _EXAMPLE_ECHO.match(keyword):  # the prompt's format example parroted back
        return True
    return not any(c.isalpha() for c in keyword)


def folded_words(text: str) -> list[str]:
    """The casefolded words (runs of letters) of ``text``."""
    return _LETTERS.findall(text.casefold())


def is_echo(keyword: str, instruction_words: frozenset[str]) -> bool:
    """Whether every word of ``keyword`` is a word of the prompt itself (a plural counts as its singular)."""
    words = folded_words(keyword)
    return bool(words) and all(w in instruction_words or w.rstrip("s") in instruction_words for w in words)



def is_cut(keyword: str, keywords, source_words: frozenset[str] = frozenset()) -> bool:
    """Whether ``keyword`` was cut off mid-word: the start of another keyword of the list ("Tranqu" beside
    "Tranquility"), or its last word the start of a longer word of what it describes ("Heath" for the
    movie "Heathers"; ``source_words``: the items' titles and categories, casefolded)."""
    folded = keyword.casefold()
    for other in (k.casefold() for k in keywords):
        # A cut ends inside a word of the other keyword: "Kissing face" beside "Kissing face with ..." is no cut.
        if len(other) > len(folded) and other.startswith(folded) and other[len(folded)].isalpha():
            return True
    words = folded_words(folded)
    # Two letters short at least: a plural or a possessive ("Star" of "Stars") is no cut.
    return bool(words) and words[-1] not in source_words and any(
        len(word) >= len(words[-1]) + 2 and word.startswith(words[-1]) for word in source_words
    )


def source_words(texts) -> frozenset[str]:
    """The casefolded words of ``texts`` (titles, categories), for :func:`is_cut`."""
    return frozenset(word for text in texts for word in folded_words(text))


def drop_echoes(
    keywords, instruction_words: frozenset[str], sources: frozenset[str] = frozenset()
) -> tuple[list[str], list[str]]:
    """(kept, dropped): drop echoes of the prompt's own words and words cut off mid-way (see :func:`is_cut`)."""
    keywords = list(keywords)
    bad = [k for k in keywords if is_echo(k, instruction_words) or is_cut(k, keywords, sources)]
    return [k for k in keywords if k not in bad], bad
