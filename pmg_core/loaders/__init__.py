"""Loading user histories from files into :class:`~pmg_core.history.UserHistory` objects.

Formats (see ``docs/HISTORY_FORMATS.md``): ``movielens`` (RecBole atomic files),
``jsonl`` (one user per line), ``csv`` (one interaction per row), ``chat``
(conversation transcripts) and ``sticker`` (a folder written by
:func:`export_sticker_dataset`). :class:`SplitRule` picks history and target.
"""

from __future__ import annotations

from .api import list_users, load_histories, load_user
from .csv_format import write_csv
from .detect import FORMATS, detect_format
from .jsonl import write_jsonl
from .split import SplitRule, sliding_windows
from .stickers import build_sticker_histories, export_sticker_dataset

__all__ = [
    "FORMATS",
    "SplitRule",
    "build_sticker_histories",
    "detect_format",
    "export_sticker_dataset",
    "list_users",
    "load_histories",
    "load_user",
    "sliding_windows",
    "write_csv",
    "write_jsonl",
]
