"""Reading a history file's text: existence, emptiness and UTF-8 checked once, for every format."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import HistoryFormatError, MissingFileError


def require_file(path: Path, what: str = "history file") -> Path:
    """``path`` if it is an existing regular file, else a :class:`MissingFileError` saying what to do."""
    if not path.exists():
        raise MissingFileError(f"The {what} {path} does not exist; check the path (relative paths start at {Path.cwd()}).")
    if not path.is_file():
        raise HistoryFormatError(f"The {what} {path} is not a regular file; name a file, not a folder or device.")
    return path


def read_text(path: Path, what: str = "history file") -> str:
    """The file's text, decoded as UTF-8 (a leading BOM is dropped).

    Raises :class:`HistoryFormatError` for an empty (or whitespace-only) file and
    for bytes that are not UTF-8, naming the line of the first bad byte.
    """
    require_file(path, what)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise MissingFileError(f"Cannot read the {what} {path} ({error.strerror}); check its permissions.") from error
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise HistoryFormatError(
            f"{path}, line {line}: the file is not UTF-8 (byte 0x{data[error.start]:02x} cannot be decoded). "
            "Re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`."
        ) from error
    if not text.strip():
        raise HistoryFormatError(f"The {what} {path} is empty; it needs at least one user's history.")
    return text


def parse_json(text: str, path: Path, example: str, line: int | None = None) -> object:
    """``json.loads`` with a message naming the file, line, problem and the expected shape.

    ``line`` is the line number of ``text`` in the file when it is one line of a
    JSONL file; for a whole JSON file the decoder's own line number is used.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        at = line if line is not None else error.lineno
        raise HistoryFormatError(
            f"{path}, line {at}, column {error.colno}: malformed JSON ({error.msg}). Expected something like {example}"
        ) from error
    except (RecursionError, ValueError) as error:  # ValueError: e.g. an integer with thousands of digits
        raise HistoryFormatError(
            f"{path}, line {line or 1}: unusable JSON ({str(error)[:80] or 'nested too deeply'}); "
            f"expected something like {example}"
        ) from error
