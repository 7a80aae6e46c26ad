"""Validated conversion of parsed records (JSON objects, CSV cells) into history objects.

Every format ends up here, so a wrong type or a missing field gets the same
message wherever it comes from: the file and line, the field, what was found,
and what to write instead.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import HistoryFormatError, MissingImageError, UnsafePathError
from ..history import SCENES, ChatTurn, Item, UserHistory
from ..safe_paths import resolve_inside

logger = logging.getLogger(__name__)

ITEM_FIELDS = ("item_id", "title", "categories", "description", "keywords", "image_path", "timestamp", "rating")
HISTORY_FIELDS = ("user_id", "items", "scene", "target", "conversation")
# Accepted spellings besides the canonical field names.
ITEM_ALIASES = {"image": "image_path"}
HISTORY_ALIASES = {"turns": "conversation"}

RECORD_EXAMPLE = '{"user_id": "u1", "items": [{"item_id": "m1", "title": "Star Wars", "categories": ["Sci-Fi"]}]}'


@dataclass(frozen=True)
class Where:
    """The place a record came from, for error messages."""

    path: Path
    line: int | None = None
    record: int | None = None  # position in a JSON list, when lines mean nothing

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.path}, line {self.line}"
        if self.record is not None:
            return f"{self.path}, record {self.record}"
        return str(self.path)

    @property
    def place(self) -> str:
        """Where in its file, for "already appeared ..." messages: "on line 3", "as record 0"."""
        if self.line is not None:
            return f"on line {self.line}"
        if self.record is not None:
            return f"as record {self.record}"
        return f"in {self.path}"


@dataclass(frozen=True)
class ImagePolicy:
    """How image paths named in a history file are resolved and checked.

    Relative paths start at ``base_dir`` (the history file's folder). When
    ``root`` is set (a ComfyUI input folder), every image must resolve inside it.
    """

    base_dir: Path
    root: Path | None = None

    def resolve(self, value: str, where: Where) -> Path:
        candidate = Path(value)
        joined = candidate if candidate.is_absolute() else self.base_dir / candidate
        if self.root is not None:
            try:
                resolved = resolve_inside(self.root, joined)
            except UnsafePathError as error:
                raise UnsafePathError(f"{where}: image {value!r}: {error}") from error
        else:
            try:
                resolved = joined.resolve()
            except (OSError, RuntimeError, ValueError) as error:
                raise MissingImageError(f"{where}: the image path {value!r} cannot be resolved ({error}); fix it.") from error
        try:
            readable = resolved.is_file() and os.access(resolved, os.R_OK)
        except (OSError, ValueError):  # a name too long for the file system, say
            readable = False
        if not readable:
            raise MissingImageError(
                f"{where}: the image {value!r} does not exist or is not a readable file "
                f"(looked for {resolved}). Image paths are relative to the history file's folder "
                f"{self.base_dir}; fix the path, copy the image there, or remove the field."
            )
        return resolved


@dataclass
class RecordParser:
    """Turns JSON-like dicts into :class:`UserHistory` objects, checking every field."""

    images: ImagePolicy
    default_scene: str = "generic"  # for records that name no scene
    unknown_fields: set[str] = field(default_factory=set)

    def history(self, data: object, where: Where) -> UserHistory:
        if not isinstance(data, dict):
            raise HistoryFormatError(
                f"{where}: expected a JSON object (one user's history), found {_kind(data)}. "
                f"Write one object per user, like {RECORD_EXAMPLE}"
            )
        data = _canonical(data, HISTORY_ALIASES, where)
        self._note_unknown(data, HISTORY_FIELDS)
        if "user_id" not in data:
            raise HistoryFormatError(f"{where}: the record has no 'user_id'; add one, like {RECORD_EXAMPLE}")
        user_id = parse_id(data["user_id"], "user_id", where)
        conversation = self.conversation(data.get("conversation"), where)
        if "items" not in data and not conversation:
            raise HistoryFormatError(
                f"{where}: user {user_id!r} has no 'items' list (and no conversation); "
                f"add the items the user interacted with, like {RECORD_EXAMPLE}"
            )
        raw_items = data.get("items")
        if raw_items is None:
            raw_items = []
        if not isinstance(raw_items, list):
            raise HistoryFormatError(f"{where}: 'items' must be a list of item objects, found {_kind(raw_items)}.")
        items = tuple(self.item(entry, where, f"items[{i}]") for i, entry in enumerate(raw_items))
        target_data = data.get("target")
        target = None if target_data is None else self.item(target_data, where, "target")
        return UserHistory(
            user_id=user_id,
            items=items,
            scene=parse_scene(data.get("scene", self.default_scene), where),
            target=target,
            conversation=conversation,
        )

    def histories(self, records: Iterable[tuple[Where, object]], path: Path, fix: str) -> list[UserHistory]:
        """Every record's history, in order, then the ignored fields reported once for ``path``.

        A user id that appears twice is an error naming both places; ``fix`` says
        how to repair the file (it depends on what a record is: a line, a list entry).
        """
        histories: list[UserHistory] = []
        first_seen: dict[str, Where] = {}
        for where, record in records:
            history = self.history(record, where)
            if history.user_id in first_seen:
                raise HistoryFormatError(
                    f"{where}: user {history.user_id!r} already appeared {first_seen[history.user_id].place}; {fix}"
                )
            first_seen[history.user_id] = where
            histories.append(history)
        self.report_unknown(path)
        return histories

    def item(self, data: object, where: Where, name: str = "item") -> Item:
        if not isinstance(data, dict):
            raise HistoryFormatError(
                f"{where}: {name} must be an object with at least 'item_id' and 'title', found {_kind(data)}."
            )
        data = _canonical(data, ITEM_ALIASES, where)
        self._note_unknown(data, ITEM_FIELDS)
        for required in ("item_id", "title"):
            if data.get(required) is None:
                raise HistoryFormatError(
                    f"{where}: {name} has no {required!r}; every item needs 'item_id' and 'title', "
                    'like {"item_id": "m1", "title": "Star Wars"}.'
                )
        image = data.get("image_path")
        return Item(
            item_id=parse_id(data["item_id"], f"{name}.item_id", where),
            title=parse_title(data["title"], f"{name}.title", where),
            categories=parse_strings(data.get("categories"), f"{name}.categories", where),
            description=parse_text(data.get("description"), f"{name}.description", where),
            keywords=parse_strings(data.get("keywords"), f"{name}.keywords", where),
            image_path=self.image(image, f"{name}.image_path", where),
            timestamp=parse_timestamp(data.get("timestamp"), f"{name}.timestamp", where),
            rating=parse_number(data.get("rating"), f"{name}.rating", where),
        )

    def image(self, value: object, name: str, where: Where) -> Path | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise HistoryFormatError(f"{where}: {name} must be a path string, found {_kind(value)}.")
        return self.images.resolve(value, where)

    def conversation(self, value: object, where: Where) -> tuple[ChatTurn, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise HistoryFormatError(
                f"{where}: 'conversation' (or 'turns') must be a list of turns, found {_kind(value)}; "
                'write [{"speaker": "alice", "text": "hi"}, ...] or ["alice: hi", ...].'
            )
        return tuple(parse_turn(turn, f"turn {i}", where) for i, turn in enumerate(value))

    def report_unknown(self, path: Path) -> None:
        """Log (once per file) the fields that were ignored, so a typo is not lost silently."""
        if self.unknown_fields:
            logger.warning(
                "%s: ignored unknown field(s) %s; known item fields are %s and history fields %s.",
                path,
                ", ".join(sorted(self.unknown_fields)),
                ", ".join(ITEM_FIELDS),
                ", ".join(HISTORY_FIELDS),
            )

    def _note_unknown(self, data: dict, known: tuple[str, ...]) -> None:
        self.unknown_fields.update(str(key) for key in data if key not in known)


def _canonical(data: dict, aliases: dict[str, str], where: Where) -> dict:
    """Rename accepted aliases to canonical names, refusing a field given twice."""
    out = dict(data)
    for alias, canonical in aliases.items():
        if alias in out:
            if canonical in out:
                raise HistoryFormatError(f"{where}: both {alias!r} and {canonical!r} are given; keep only {canonical!r}.")
            out[canonical] = out.pop(alias)
    return out


def parse_id(value: object, name: str, where: Where) -> str:
    """A user or item id: a non-empty string or integer, returned as a string."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise HistoryFormatError(f"{where}: {name} must be a string or an integer, found {_kind(value)}.")
    text = str(value)
    if not text.strip():
        raise HistoryFormatError(f"{where}: {name} is empty; give every user and item a non-empty id.")
    return text


# A title is a name: the LLM reads it and the target prompt quotes it, so a runaway one
# (a pasted document) would stall both; longer text belongs in the item's description.
MAX_TITLE_CHARS = 500


def parse_title(value: object, name: str, where: Where | str) -> str:
    """An item title: a non-empty string of at most :data:`MAX_TITLE_CHARS` characters."""
    if not isinstance(value, str):
        raise HistoryFormatError(f"{where}: {name} must be a string, found {_kind(value)}.")
    if not value.strip():
        raise HistoryFormatError(f"{where}: {name} is empty; every item needs a title (the name the LLM reads).")
    if len(value) > MAX_TITLE_CHARS:
        raise HistoryFormatError(
            f"{where}: {name} is {len(value):,} characters long; a title may hold at most {MAX_TITLE_CHARS} "
            "(the LLM reads it and the target prompt quotes it). Shorten it, and move longer text to the "
            "item's description."
        )
    return value


def parse_text(value: object, name: str, where: Where) -> str:
    """An optional free-text field: a string, or '' when absent."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HistoryFormatError(f"{where}: {name} must be a string, found {_kind(value)}.")
    return value


def parse_strings(value: object, name: str, where: Where) -> tuple[str, ...]:
    """An optional list of strings (genres, keywords), as a tuple."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HistoryFormatError(
            f"{where}: {name} must be a list of strings like [\"Comedy\", \"Drama\"], found {_kind(value)}."
        )
    return tuple(value)


def parse_number(value: object, name: str, where: Where, text_allowed: bool = False) -> float | None:
    """A finite float, or None for a missing value. CSV cells arrive as text (``text_allowed``)."""
    if value is None or (text_allowed and isinstance(value, str) and not value.strip()):
        return None
    if text_allowed and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise HistoryFormatError(
                f"{where}: {name} {value!r} is not a number; write e.g. 4 or 4.5, or leave it empty."
            ) from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            number = math.inf
    else:
        raise HistoryFormatError(f"{where}: {name} must be a number (e.g. 4 or 4.5), found {_kind(value)}.")
    if not math.isfinite(number):
        raise HistoryFormatError(f"{where}: {name} is {number}; it must be a finite number.")
    return number


def parse_timestamp(value: object, name: str, where: Where, text_allowed: bool = False) -> float | None:
    """Seconds since the epoch: a number, or an ISO-8601 date string (naive dates are UTC)."""
    if isinstance(value, str) and value.strip():
        try:
            return parse_number(value, name, where, text_allowed=True)
        except HistoryFormatError:
            pass
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise HistoryFormatError(
                f"{where}: {name} {value!r} is neither a number (seconds since 1970) nor an ISO date "
                "like 2024-05-01T12:00:00; fix it or leave it empty."
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        try:
            return moment.timestamp()
        except (OverflowError, ValueError, OSError):
            raise HistoryFormatError(
                f"{where}: {name} {value!r} is out of range; use a date within the years 1 to 9999."
            ) from None
    return parse_number(value, name, where, text_allowed=text_allowed)


def parse_scene(value: object, where: Where) -> str:
    """One of the known scenes (movie, clothing, sticker, generic)."""
    if value not in SCENES:
        raise HistoryFormatError(f"{where}: unknown scene {value!r}; use one of {', '.join(SCENES)}.")
    return value  # type: ignore[return-value]


def parse_turn(value: object, name: str, where: Where) -> ChatTurn:
    """A conversation turn from 'speaker: text' or ``{speaker, text}``."""
    if isinstance(value, str):
        speaker, sep, text = value.partition(":")
        if not sep or not speaker.strip():
            raise HistoryFormatError(f"{where}: {name} {value[:60]!r} is not 'speaker: text'; write e.g. \"alice: hi there\".")
        return ChatTurn(speaker=speaker.strip(), text=text.strip())
    if isinstance(value, dict) and isinstance(value.get("speaker"), str) and isinstance(value.get("text"), str):
        if set(value) - {"speaker", "text"}:
            raise HistoryFormatError(
                f"{where}: {name} has fields other than 'speaker' and 'text': {sorted(map(str, value))}; "
                "remove them (a turn is {\"speaker\": ..., \"text\": ...})."
            )
        return ChatTurn(speaker=value["speaker"], text=value["text"])
    raise HistoryFormatError(
        f"{where}: {name} must be {{\"speaker\": ..., \"text\": ...}} with string values or a \"speaker: text\" string, "
        f"found {_kind(value)}."
    )


def _kind(value: object) -> str:
    """A short description of a value for error messages: its JSON type and a preview."""
    names = {dict: "an object", list: "a list", str: "the string", bool: "the boolean", type(None): "null",
             int: "the number", float: "the number"}
    label = names.get(type(value), f"a {type(value).__name__}")
    if isinstance(value, (dict, list)):
        return label
    preview = repr(value)
    return f"{label} {preview[:40]}{'...' if len(preview) > 40 else ''}"
