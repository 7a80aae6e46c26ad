"""A small on-disk JSON cache: one file per entry, written atomically.

Each entry lives in its own file ``<folder>/<key[:2]>/<key>.json`` where ``key``
is a sha256 of the key parts. One file per entry makes concurrent writers safe
without locks: each writes a private temp file and ``os.replace``-s it into
place, so readers see either the old entry, the new one or none, never half a
file, and two processes never overwrite each other's *other* entries (which a
single shared JSON file would). :attr:`JsonCache.stats` counts hits and misses,
so a test or a ComfyUI node can prove that a second run did no LLM work.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class CacheStats:
    """Hit, miss and write counters of a JsonCache (the nodes show them)."""

    hits: int = 0
    misses: int = 0
    writes: int = 0

    def reset(self) -> None:
        self.hits = self.misses = self.writes = 0


def cache_key(*parts: Any) -> str:
    """A sha256 over JSON-encoded ``parts`` (strings, numbers, lists, dicts)."""
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()


class JsonCache:
    """JSON values stored under ``folder``, keyed by :func:`cache_key` of the parts given."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.stats = CacheStats()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, *parts: Any) -> Any | None:
        """The stored value, or ``None`` on a miss (a corrupt entry counts as a miss and is logged)."""
        path = self._path(cache_key(*parts))
        try:
            with open(path, encoding="utf-8") as handle:
                record = json.load(handle)
            value = record["value"]
        except FileNotFoundError:
            self.stats.misses += 1
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("Ignoring the unreadable cache entry %s (%s); it will be recomputed.", path, exc)
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return value

    def set(self, value: Any, *parts: Any) -> None:
        """Store ``value`` (JSON-serialisable) under ``parts``, atomically."""
        # The parts are stored too, so a person reading the cache knows what an entry is.
        record = {"parts": parts, "value": value}
        write_text_atomic(self._path(cache_key(*parts)), json.dumps(record, ensure_ascii=False, default=str))
        self.stats.writes += 1

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*/*.json"))
