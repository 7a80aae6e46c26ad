"""The public loading functions: read any supported format, split, truncate, check."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..errors import EmptyHistoryError, HistoryFormatError, InvalidSettingError, MissingFileError, UnknownUserError
from ..history import SCENES, UserHistory
from .chat import read_chat
from .csv_format import read_csv
from .detect import check_format, detect_format
from .jsonl import read_jsonl
from .movielens import read_movielens
from .split import SplitRule, truncate
from .textfile import read_text

logger = logging.getLogger(__name__)

# Formats whose files carry no target of their own: without a split they get the reference one.
_SPLIT_BY_DEFAULT = {"movielens": SplitRule.reference()}


def load_histories(
    path: Path | str,
    fmt: str = "auto",
    scene: str | None = None,
    split: SplitRule | None = None,
    *,
    max_items: int | None = None,
    image_root: Path | str | None = None,
) -> dict[str, UserHistory]:
    """Every user's history in ``path``, keyed by user id, in the file's user order.

    ``fmt``: ``"auto"`` (see :func:`detect_format`) or one of ``movielens``,
    ``jsonl``, ``csv``, ``chat``, ``sticker``. ``scene`` overrides the scene the
    file gives. ``split``: how to pick history and target (:class:`SplitRule`);
    without one, a file's own target (``role=target``) is used, and MovieLens,
    which has none, gets the reference split. ``max_items`` keeps the most
    relevant history items per the ordering. ``image_root``: when given, every
    image the file names must lie inside it (a ComfyUI input folder).

    Users left with no history after the split are skipped with a warning naming
    them; if none is left, :class:`EmptyHistoryError` is raised.
    """
    path = Path(path)
    fmt, raw = _read(path, fmt, image_root)
    rule = split if split is not None else _SPLIT_BY_DEFAULT.get(fmt)
    histories: dict[str, UserHistory] = {}
    empty: list[str] = []
    for history in raw:
        try:
            histories[history.user_id] = _finish(history, rule, scene, max_items, path)
        except EmptyHistoryError:
            empty.append(history.user_id)
    if empty:
        why = f"no history left after the split ({rule.describe()})" if rule else "no history items and no conversation"
        logger.warning(
            "%s: skipped %d of %d users with %s: %s%s",
            path,
            len(empty),
            len(raw),
            why,
            ", ".join(empty[:10]),
            ", ..." if len(empty) > 10 else "",
        )
    if not histories:
        how = f"the split ({rule.describe()})" if rule else "loading"
        raise EmptyHistoryError(
            f"No user in {path} has any history left after {how}; "
            "relax the split (e.g. SplitRule(min_rating=None)) or add items to the file."
        )
    return histories


def load_user(
    path: Path | str,
    user_id: str | int,
    fmt: str = "auto",
    scene: str | None = None,
    max_items: int | None = None,
    split: SplitRule | None = None,
    *,
    image_root: Path | str | None = None,
) -> UserHistory:
    """One user's history (see :func:`load_histories` for the options).

    Raises :class:`UnknownUserError` (naming a few known ids) for a user not in
    the file and :class:`EmptyHistoryError` when nothing is left after the split.
    """
    path = Path(path)
    fmt, raw = _read(path, fmt, image_root)
    wanted = str(user_id).strip()
    found = next((history for history in raw if history.user_id == wanted), None)
    if found is None:
        known = [history.user_id for history in raw]
        examples = ", ".join(repr(uid) for uid in known[:5])
        raise UnknownUserError(
            f"User {wanted!r} is not in {path}, which has {len(known)} user(s), e.g. {examples}; "
            "pick one of those (list_users(path) lists them all)."
        )
    rule = split if split is not None else _SPLIT_BY_DEFAULT.get(fmt)
    return _finish(found, rule, scene, max_items, path)


def list_users(path: Path | str, fmt: str = "auto") -> list[str]:
    """The user ids in ``path``, in the file's order (MovieLens: numeric order)."""
    _, raw = _read(Path(path), fmt, None)
    return [history.user_id for history in raw]


def _read(path: Path, fmt: str, image_root: Path | str | None) -> tuple[str, list[UserHistory]]:
    check_format(fmt)
    if not path.exists():
        raise MissingFileError(f"The history path {path} does not exist; check the path.")
    if fmt == "auto":
        fmt = detect_format(path)
    root = Path(image_root) if image_root is not None else None
    if fmt == "movielens":
        return fmt, read_movielens(path)
    if fmt == "jsonl":
        return fmt, read_jsonl(path, root)
    if fmt == "csv":
        return fmt, read_csv(path, read_text(path), root)
    if fmt == "chat":
        return fmt, read_chat(path, root)
    return fmt, _read_stickers(path, root)


def _read_stickers(path: Path, root: Path | None) -> list[UserHistory]:
    """A sticker set (e.g. one written by ``export_sticker_dataset``): JSONL whose items all have images."""
    histories = read_jsonl(path, root, default_scene="sticker")
    for history in histories:
        for item in history.items:
            if item.image_path is None:
                raise HistoryFormatError(
                    f"{path}: sticker {item.item_id!r} of user {history.user_id!r} has no image_path; "
                    "every sticker in a sticker set needs its image."
                )
    return histories


def _finish(
    history: UserHistory,
    rule: SplitRule | None,
    scene: str | None,
    max_items: int | None,
    source: Path,
) -> UserHistory:
    """Split, set the scene, truncate, and refuse a history with nothing left."""
    pool = history.items + ((history.target,) if history.target is not None else ())
    if rule is not None:
        history = rule.apply(history)
    if scene is not None:
        if scene not in SCENES:
            raise InvalidSettingError(f"Unknown scene {scene!r}; use one of {', '.join(SCENES)}.")
        history = dataclasses.replace(history, scene=scene)
    newest_last = rule is None or rule.order == "chronological"
    history = truncate(history, max_items, newest_last=newest_last)
    if not history.items and not history.conversation:
        if rule is None:
            raise EmptyHistoryError(
                f"User {history.user_id!r} in {source} has no history items and no conversation; "
                "add the items the user interacted with."
            )
        raise EmptyHistoryError(
            f"User {history.user_id!r} in {source} has no history left after the split ({rule.describe()}): "
            f"{len(pool)} interaction(s), {len(rule.kept(pool))} passing the rating filter. "
            "Relax the split (e.g. SplitRule(min_rating=None)) or pick another user."
        )
    return history
