"""``loss.csv``: one row per optimizer step, shared by every trainer of the project.

A resumed run first drops the rows past its checkpoint's step, so the file always
describes one uninterrupted loss curve.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


class LossLog:
    """Appends one row of ``fields`` per step to ``path``; rows after ``keep_until`` are dropped first."""

    def __init__(self, path: Path, fields: tuple[str, ...], keep_until: int):
        self.path = Path(path)
        self.fields = fields
        rows = [r for r in read_loss_csv(self.path) if int(r["step"]) <= keep_until]
        if keep_until and len(rows) != keep_until:
            logger.warning("loss.csv holds %d of the %d steps before the checkpoint", len(rows), keep_until)
        with open(self.path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(fields)
            for row in rows:
                writer.writerow([_format(row[name]) for name in fields])

    def append(self, record: dict) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow([_format(record[name]) for name in self.fields])


def read_loss_csv(path: str | Path) -> list[dict]:
    """Rows of a ``loss.csv`` as dicts of numbers (``step`` as int)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: (int(v) if k == "step" else float(v)) for k, v in row.items()} for row in csv.DictReader(handle)]


def _format(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return format(float(value), ".9g")
