"""Telling a history file's format from its name, or failing that, from its first bytes."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import HistoryFormatError, MissingFileError
from .jsonl import JSONL_NAME
from .movielens import ATOMIC_SUFFIXES

FORMATS = ("movielens", "jsonl", "csv", "chat", "sticker")

_BY_SUFFIX = {
    **{suffix: "movielens" for suffix in ATOMIC_SUFFIXES},
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "chat",
    ".csv": "csv",
    ".txt": "chat",
}
_SNIFF_BYTES = 64 * 1024
_TRANSCRIPT_LINE = re.compile(r"^[^\s:#][^:\n]{0,60}:")


def detect_format(path: Path | str) -> str:
    """The format name of a history file or folder (one of :data:`FORMATS`).

    Folders: one holding a RecBole ``.inter`` file is ``movielens``, one holding
    ``history.jsonl`` (an exported sticker set, for instance) is ``jsonl``.
    Files: by extension (``.inter/.item/.user`` movielens, ``.jsonl`` jsonl,
    ``.csv`` csv, ``.json``/``.txt`` chat), otherwise by their first line.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"The history path {path} does not exist; check the path.")
    if path.is_dir():
        if any(path.glob("*.inter")):
            return "movielens"
        if (path / JSONL_NAME).is_file():
            return "jsonl"
        raise HistoryFormatError(
            f"The folder {path} holds neither a RecBole '.inter' file nor a {JSONL_NAME}; "
            "name a history file, or pass fmt= explicitly."
        )
    by_suffix = _BY_SUFFIX.get(path.suffix.lower())
    if by_suffix:
        return by_suffix
    return _sniff(path)


def check_format(fmt: str) -> str:
    """Return ``fmt`` if it is 'auto' or a known format, else raise HistoryFormatError."""
    if fmt not in FORMATS and fmt != "auto":
        raise HistoryFormatError(f"Unknown history format {fmt!r}; use 'auto' or one of {', '.join(FORMATS)}.")
    return fmt


def _sniff(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES).decode("utf-8", errors="replace").lstrip("\ufeff")
    first_line = next((line.strip() for line in head.split("\n") if line.strip()), "")
    if not first_line:
        raise HistoryFormatError(f"The history file {path} is empty; it needs at least one user's history.")
    if first_line.startswith("["):
        return "chat"
    if first_line.startswith("{"):
        # One object per line is JSONL; an object spread over lines is a JSON chat file.
        return "jsonl" if first_line.endswith("}") else "chat"
    if "," in first_line and "user_id" in first_line.lower():
        return "csv"
    first_turn = next((line for line in head.split("\n") if line.strip() and not line.startswith("#")), "")
    if _TRANSCRIPT_LINE.match(first_turn):
        return "chat"
    raise HistoryFormatError(
        f"Cannot tell the format of {path} from its name or first line ({first_line[:60]!r}). "
        f"Give it an extension (.jsonl, .json, .csv, .txt, .inter) or pass fmt= one of {', '.join(FORMATS)}."
    )
