"""Our generic JSONL format: one user per line, the shape of ``UserHistory.to_dict()``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from ..errors import HistoryFormatError
from ..history import UserHistory
from ..atomic import write_text_atomic
from .records import RECORD_EXAMPLE, ImagePolicy, RecordParser, Where
from .textfile import parse_json, read_text

JSONL_NAME = "history.jsonl"  # the file a history *folder* holds (e.g. an exported sticker set)


def jsonl_file(path: Path) -> Path:
    """The JSONL file itself, or ``history.jsonl`` inside a folder."""
    if path.is_dir():
        inside = path / JSONL_NAME
        if not inside.is_file():
            raise HistoryFormatError(f"The folder {path} holds no {JSONL_NAME}; name the history file itself.")
        return inside
    return path


def read_jsonl(path: Path, image_root: Path | None = None, default_scene: str = "generic") -> list[UserHistory]:
    """Every user of a JSONL file, in file order. Blank lines are skipped."""
    path = jsonl_file(path)
    text = read_text(path)
    parser = RecordParser(ImagePolicy(base_dir=path.parent.resolve(), root=image_root), default_scene=default_scene)

    def records():
        # Split on "\n" only: str.splitlines() would also split inside JSON strings at U+2028 and friends.
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                yield Where(path, line=number), parse_json(line, path, RECORD_EXAMPLE, line=number)

    return parser.histories(records(), path, fix="keep one line per user (merge the items into one list).")


def dumps_history(history: UserHistory, relative_to: Path | None = None) -> str:
    """One JSONL line for ``history``; image paths inside ``relative_to`` are written relative to it."""
    data = history.to_dict()
    if relative_to is not None:
        base = relative_to.resolve()
        for item in data["items"] + ([data["target"]] if data["target"] else []):
            if item.get("image_path"):
                item["image_path"] = relative_path(Path(item["image_path"]), base)
    return json.dumps(data, ensure_ascii=False, allow_nan=False)


def write_jsonl(path: Path | str, histories: Iterable[UserHistory]) -> Path:
    """Write ``histories`` as JSONL (atomically); images inside the file's folder get relative paths."""
    path = Path(path)
    try:
        lines = [dumps_history(h, relative_to=path.parent) for h in histories]
    except ValueError as error:  # allow_nan=False: NaN/inf would not read back
        raise HistoryFormatError(f"Cannot write {path}: {error}; ratings and timestamps must be finite.") from error
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return path


def relative_path(image: Path, base: Path) -> str:
    """``image`` relative to ``base`` (POSIX separators) when inside it, else absolute."""
    absolute = image if image.is_absolute() else (base / image)
    try:
        return absolute.resolve().relative_to(base).as_posix()
    except ValueError:
        return str(absolute)
