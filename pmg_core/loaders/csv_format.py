"""Our generic CSV format: one interaction per row, grouped into users by ``user_id``.

Columns (header required, any order; only ``user_id``, ``item_id`` and ``title``
are required): user_id, item_id, title, categories (``|``-separated),
description, keywords (``|``-separated), image, timestamp, rating,
role (``history`` or ``target``; empty means history), scene.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Iterable

from ..errors import HistoryFormatError
from ..history import Item, UserHistory
from ..atomic import write_text_atomic
from .jsonl import relative_path
from .records import ImagePolicy, RecordParser, Where, parse_id, parse_number, parse_scene, parse_timestamp, parse_title

logger = logging.getLogger(__name__)

COLUMNS = (
    "user_id", "item_id", "title", "categories", "description", "keywords", "image", "timestamp", "rating", "role", "scene",
)
REQUIRED = ("user_id", "item_id", "title")
_ALIASES = {"image_path": "image"}
LIST_SEPARATOR = "|"


def read_csv(path: Path, text: str, image_root: Path | None = None) -> list[UserHistory]:
    """Every user of a CSV file, in order of first appearance; rows keep their order."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        columns = _columns(header, path)
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as error:
        raise HistoryFormatError(f"{path}, line {reader.line_num}: unreadable CSV ({error}); check the quoting.") from error
    images = RecordParser(ImagePolicy(base_dir=path.parent.resolve(), root=image_root))
    users: dict[str, dict] = {}
    for line, cells in rows:
        if not any(cell.strip() for cell in cells):
            continue
        where = Where(path, line=line)
        if len(cells) != len(columns):
            raise HistoryFormatError(
                f"{where}: {len(cells)} fields, the header has {len(columns)}; "
                "quote fields that contain commas, e.g. \"Toy Story, the sequel\"."
            )
        row = dict(zip(columns, cells, strict=True))
        item = _item(row, where, images)
        user_id = parse_id(row["user_id"], "user_id", where)
        user = users.setdefault(user_id, {"items": [], "target": None, "scene": None})
        role = row.get("role", "").strip().lower() or "history"
        if role == "target":
            if user["target"] is not None:
                raise HistoryFormatError(
                    f"{where}: user {user_id!r} already has a target on line {user['target'][0]}; "
                    "mark one row per user as role=target."
                )
            user["target"] = (line, item)
        elif role == "history":
            user["items"].append(item)
        else:
            raise HistoryFormatError(
                f"{where}: role {row['role']!r} is neither 'history' nor 'target'; "
                "write one of those, or leave it empty for history."
            )
        scene = row.get("scene", "").strip()
        if scene:
            parse_scene(scene, where)
            if user["scene"] not in (None, scene):
                raise HistoryFormatError(
                    f"{where}: user {user_id!r} has scene {scene!r} here but {user['scene']!r} earlier; use one scene per user."
                )
            user["scene"] = scene
    images.report_unknown(path)
    if not users:
        raise HistoryFormatError(f"{path} has a header but no rows; add one row per interaction.")
    return [
        UserHistory(
            user_id=user_id,
            items=tuple(user["items"]),
            scene=user["scene"] or "generic",
            target=user["target"][1] if user["target"] else None,
        )
        for user_id, user in users.items()
    ]


def _columns(header: list[str], path: Path) -> list[str]:
    names = [_ALIASES.get(cell.strip().lower(), cell.strip().lower()) for cell in header]
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise HistoryFormatError(
            f"{path}, line 1: the header lacks the column(s) {', '.join(missing)}; the first line must name the "
            f"columns, at least {','.join(REQUIRED)} (all: {','.join(COLUMNS)})."
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise HistoryFormatError(f"{path}, line 1: the column(s) {', '.join(repeated)} appear twice; keep one of each.")
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        logger.warning("%s: ignored unknown column(s) %s; known columns are %s.", path, ", ".join(unknown), ", ".join(COLUMNS))
    return names


def _item(row: dict[str, str], where: Where, parser: RecordParser) -> Item:
    return Item(
        item_id=parse_id(row["item_id"], "item_id", where),
        title=parse_title(row["title"], "title", where),
        categories=_split_list(row.get("categories", "")),
        description=row.get("description", ""),
        keywords=_split_list(row.get("keywords", "")),
        image_path=parser.image(row.get("image", ""), "image", where),
        timestamp=parse_timestamp(row.get("timestamp", ""), "timestamp", where, text_allowed=True),
        rating=parse_number(row.get("rating", ""), "rating", where, text_allowed=True),
    )


def _split_list(cell: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in cell.split(LIST_SEPARATOR) if part.strip())


def write_csv(path: Path | str, histories: Iterable[UserHistory]) -> Path:
    """Write ``histories`` as CSV (atomically). Conversations cannot be written: use JSONL for those.

    List values must survive the ``|`` join: an element that is empty, contains
    ``|`` or has surrounding spaces is refused rather than silently changed.
    """
    path = Path(path)
    base = path.parent.resolve()
    out = io.StringIO()
    # RFC 4180 line ends: the writer quotes only characters of its line terminator, so "\n"
    # alone would leave a lone "\r" in a cell unquoted and split the row on reading.
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for history in histories:
        if history.conversation:
            raise HistoryFormatError(f"User {history.user_id!r} has a conversation, which CSV cannot hold; write JSONL instead.")
        if not history.items and history.target is None:
            raise HistoryFormatError(f"User {history.user_id!r} has no items and no target; CSV needs at least one row per user.")
        rows = [(item, "history") for item in history.items]
        if history.target is not None:
            rows.append((history.target, "target"))
        for item, role in rows:
            writer.writerow(
                (
                    history.user_id,
                    item.item_id,
                    item.title,
                    _join_list(item.categories, "categories", history.user_id),
                    item.description,
                    _join_list(item.keywords, "keywords", history.user_id),
                    relative_path(item.image_path, base) if item.image_path is not None else "",
                    _number_cell(item.timestamp, "timestamp", history.user_id),
                    _number_cell(item.rating, "rating", history.user_id),
                    role,
                    history.scene,
                )
            )
    write_text_atomic(path, out.getvalue())
    return path


def _number_cell(value: float | None, column: str, user_id: str) -> str:
    if value is None:
        return ""
    if not math.isfinite(value):
        raise HistoryFormatError(f"User {user_id!r}: {column} {value} is not finite and would not read back; fix it.")
    return repr(float(value))  # repr round-trips a float exactly


def _join_list(values: tuple[str, ...], column: str, user_id: str) -> str:
    for value in values:
        if not value.strip() or LIST_SEPARATOR in value or value != value.strip():
            raise HistoryFormatError(
                f"User {user_id!r}: the {column} value {value!r} cannot be written to CSV "
                f"(empty, contains {LIST_SEPARATOR!r} or has surrounding spaces); write JSONL instead."
            )
    return LIST_SEPARATOR.join(values)
