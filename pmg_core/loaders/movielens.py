"""MovieLens in RecBole's atomic-file format (``<name>.inter`` + ``<name>.item``).

Atomic files are tab-separated with a header of ``field:type`` columns, e.g.
``user_id:token  item_id:token  rating:float  timestamp:float`` in ``.inter`` and
``item_id:token  movie_title:token_seq  release_year:token  class:token_seq`` in
``.item``. ``token_seq`` cells are space-separated tokens: the genres of
ml-100k are single tokens (``Children's``, ``Sci-Fi``), the title is the tokens
joined back with spaces. The files are read by path; RecBole is never imported.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import HistoryFormatError
from ..history import Item, UserHistory
from .records import parse_number, parse_title
from .textfile import read_text

ATOMIC_SUFFIXES = (".inter", ".item", ".user", ".kg", ".link")
_TITLE_FIELDS = ("movie_title", "title", "name")
_GENRE_FIELDS = ("class", "genre", "genres", "categories")
_YEAR_FIELDS = ("release_year", "year")
# MovieLens files a title "Shawshank Redemption, The"; the natural order reads better in a prompt.
_TRAILING_ARTICLE = re.compile(r"^(?P<base>.+), (?P<article>The|A|An|L'|Le|La|Les|Il|Das|Der|Die|El|Det)(?P<rest> \(.*\))?$")


@dataclass(frozen=True)
class AtomicFiles:
    """The files of one RecBole data set."""

    inter: Path
    item: Path


def locate(path: Path) -> AtomicFiles:
    """The ``.inter``/``.item`` pair for a data-set folder or any of its atomic files."""
    if path.is_dir():
        inters = sorted(path.glob("*.inter"))
        if len(inters) != 1:
            found = ", ".join(p.name for p in inters) or "none"
            raise HistoryFormatError(
                f"{path} should hold exactly one RecBole '.inter' file (found: {found}); "
                "name the .inter file itself to pick one."
            )
        inter = inters[0]
    elif path.suffix in ATOMIC_SUFFIXES:
        inter = path.with_suffix(".inter")
    else:
        raise HistoryFormatError(
            f"{path} is not a RecBole atomic file; expected a folder or a {', '.join(ATOMIC_SUFFIXES)} file."
        )
    item = inter.with_suffix(".item")
    for needed, role in ((inter, "interactions"), (item, "item titles and genres")):
        if not needed.is_file():
            raise HistoryFormatError(
                f"The MovieLens data set needs {needed} ({role}), which does not exist; "
                f"put the .inter and .item files of the data set side by side."
            )
    return AtomicFiles(inter=inter, item=item)


def read_movielens(path: Path) -> list[UserHistory]:
    """One :class:`UserHistory` per user, items in file order, no target (the split picks it)."""
    files = locate(path)
    stat_inter, stat_item = files.inter.stat(), files.item.stat()
    # Parsing 100k rows takes a noticeable fraction of a second; nodes re-read the same file often.
    return list(
        _read_cached(
            str(files.inter.resolve()),
            stat_inter.st_mtime_ns,
            stat_inter.st_size,
            str(files.item.resolve()),
            stat_item.st_mtime_ns,
            stat_item.st_size,
        )
    )


def natural_user_order(user_ids: list[str]) -> list[str]:
    """Numeric ids in numeric order (1, 2, 10), then the rest alphabetically."""
    return sorted(user_ids, key=lambda uid: (0, int(uid), "") if uid.isdigit() else (1, 0, uid))


@functools.lru_cache(maxsize=4)
def _read_cached(inter: str, _inter_mtime: int, _inter_size: int, item: str, _item_mtime: int, _item_size: int):
    items = _read_items(Path(item))
    by_user: dict[str, list[Item]] = {}
    rows, header_line = _rows(Path(inter))
    columns = _columns(header_line, Path(inter), required=("user_id", "item_id"))
    user_col, item_col = columns.index("user_id"), columns.index("item_id")
    rating_col = columns.index("rating") if "rating" in columns else None
    time_col = columns.index("timestamp") if "timestamp" in columns else None
    for line_number, cells in rows:
        if len(cells) != len(columns):
            raise HistoryFormatError(
                f"{inter}, line {line_number}: {len(cells)} tab-separated fields, the header names "
                f"{len(columns)}; fix the row."
            )
        item_id = cells[item_col]
        base = items.get(item_id)
        if base is None:
            raise HistoryFormatError(
                f"{inter}, line {line_number}: item {item_id!r} is not in {Path(item).name}; add it there or drop the row."
            )
        interaction = Item(
            item_id=item_id,
            title=base.title,
            categories=base.categories,
            description=base.description,
            rating=_number(cells, rating_col, "rating", inter, line_number),
            timestamp=_number(cells, time_col, "timestamp", inter, line_number),
        )
        by_user.setdefault(cells[user_col], []).append(interaction)
    if not by_user:
        raise HistoryFormatError(f"{inter} has a header but no interactions; it needs at least one row.")
    return tuple(
        UserHistory(user_id=user_id, items=tuple(by_user[user_id]), scene="movie")
        for user_id in natural_user_order(list(by_user))
    )


def _read_items(path: Path) -> dict[str, Item]:
    rows, header_line = _rows(path)
    columns = _columns(header_line, path, required=("item_id",))
    title_field = next((f for f in _TITLE_FIELDS if f in columns), None)
    if title_field is None:
        raise HistoryFormatError(
            f"{path}, line 1: no title column; the header needs one of {', '.join(_TITLE_FIELDS)} (e.g. movie_title:token_seq)."
        )
    genre_field = next((f for f in _GENRE_FIELDS if f in columns), None)
    year_field = next((f for f in _YEAR_FIELDS if f in columns), None)
    items: dict[str, Item] = {}
    for line_number, cells in rows:
        where = f"{path}, line {line_number}"
        if len(cells) != len(columns):
            raise HistoryFormatError(f"{where}: {len(cells)} tab-separated fields, the header names {len(columns)}; fix the row.")
        row = dict(zip(columns, cells, strict=True))
        title = natural_title(row[title_field].strip())
        if not title:
            raise HistoryFormatError(f"{where}: item {row['item_id']!r} has an empty title; fill it in.")
        parse_title(title, f"item {row['item_id']!r}'s title", where)
        # 'unknown' is MovieLens' placeholder for "no genre", not a genre.
        genres = tuple(g for g in row.get(genre_field, "").split() if g != "unknown") if genre_field else ()
        year = row.get(year_field, "").strip() if year_field else ""
        items[row["item_id"]] = Item(
            item_id=row["item_id"],
            title=title,
            categories=genres,
            description=f"Released in {year}." if year else "",
        )
    return items


def natural_title(title: str) -> str:
    """``"Shawshank Redemption, The"`` -> ``"The Shawshank Redemption"`` (also before a parenthesised alias)."""
    match = _TRAILING_ARTICLE.match(title)
    if not match:
        return title
    article = match["article"]
    joiner = "" if article.endswith("'") else " "
    return f"{article}{joiner}{match['base']}{match['rest'] or ''}"


def _rows(path: Path) -> tuple[list[tuple[int, list[str]]], str]:
    lines = read_text(path, "MovieLens file").split("\n")
    header = lines[0].rstrip("\r")
    rows = [
        (number, line.rstrip("\r").split("\t"))
        for number, line in enumerate(lines[1:], start=2)
        if line.strip()
    ]
    return rows, header


def _columns(header: str, path: Path, required: tuple[str, ...]) -> list[str]:
    """Field names from an atomic header (``name:type`` cells), checking the required ones."""
    names = [cell.split(":", 1)[0].strip() for cell in header.split("\t")]
    missing = [name for name in required if name not in names]
    if missing or len(set(names)) != len(names):
        problem = f"lacks {', '.join(missing)}" if missing else "repeats a column"
        raise HistoryFormatError(
            f"{path}, line 1: the header {header[:80]!r} {problem}; a RecBole atomic header is tab-separated "
            f"'field:type' cells and must include {', '.join(required)} (e.g. 'user_id:token\\titem_id:token')."
        )
    return names


def _number(cells: list[str], column: int | None, name: str, path: str, line: int) -> float | None:
    if column is None or not cells[column]:
        return None
    try:
        number = float(cells[column])  # the fast path for 100k well-formed rows
    except ValueError:
        number = math.nan
    if not math.isfinite(number):  # let the shared parser word the error
        return parse_number(cells[column], name, f"{path}, line {line}", text_allowed=True)  # type: ignore[arg-type]
    return number
