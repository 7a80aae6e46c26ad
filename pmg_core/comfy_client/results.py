"""A batch's results file: one JSON line per user, written by one recorder for the one-server and the Ray batch.

A user's line says how its prompt ended (``status`` success/error, the keywords, scores
and images it produced, or the node and message of its error). Users whose last line is
a success are skipped by the next run; the file is append-only, so a killed run loses
nothing it had recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client import describe_node_errors, execution_error, output_files
from .journal import append_line, read_lines

log = logging.getLogger(__name__)

KEYWORDS_KEY = "pmg_keywords"  # UI output of PMGPreferenceExtractor
SCORES_KEY = "pmg_scores"  # UI output of PMGScorer
NO_NODE = {"node_id": None, "node_type": None}  # an error line's node when no node is to blame


@dataclass
class BatchSummary:
    """What a run did: users finished now, failed now, skipped (done before), and who failed."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    failed_users: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"done": self.done, "failed": self.failed, "skipped": self.skipped, "failed_users": self.failed_users}


def error_line(message: str) -> dict:
    """A result line's error that no node of the graph caused (a timeout, a lost server)."""
    return {**NO_NODE, "message": message}


def read_results(out_jsonl: Path) -> dict[str, dict]:
    """The last line of each user in a results file (unreadable lines are skipped with a warning)."""
    latest: dict[str, dict] = {}
    for record in read_lines(Path(out_jsonl)):
        if "user_id" not in record:
            log.warning("%s has a line that is not a result line: %r; ignoring it", out_jsonl, record)
            continue
        user = str(record["user_id"])
        # A success stays a success even if a later duplicate run failed.
        if latest.get(user, {}).get("status") != "success":
            latest[user] = record
    return latest


def users_to_run(users: list[str], out_jsonl: Path) -> list[str]:
    """``users`` less those the results file already has a success line for (logged)."""
    previous = read_results(out_jsonl)
    todo = [u for u in users if previous.get(u, {}).get("status") != "success"]
    if len(todo) < len(users):
        log.info("%d user(s) already done in %s; skipping them", len(users) - len(todo), out_jsonl)
    return todo


def recorded_prompt_ids(out_jsonl: Path) -> set[str]:
    """Every prompt id a line of the results file names (any status)."""
    return {str(r["prompt_id"]) for r in read_lines(Path(out_jsonl)) if r.get("prompt_id")}


def result_record(user_id: str, prompt_id: str | None, entry: dict | None, error: dict | None, elapsed: float) -> dict:
    """One results line, from a prompt's history entry (or from a refusal before it ran)."""
    keywords = scores = None
    images: list[dict] = []
    if entry is not None:
        error = error or execution_error(entry)
        keywords = _first_ui_value(entry, KEYWORDS_KEY)
        scores = _first_ui_value(entry, SCORES_KEY)
        images = output_files(entry, "images")
    return {
        "user_id": user_id,
        "prompt_id": prompt_id,
        "status": "error" if error else "success",
        "keywords": keywords,
        "selected_image": scores.get("selected_image") if isinstance(scores, dict) else None,
        "scores": scores,
        "images": images,
        "error": error,
        "elapsed_s": round(elapsed, 3),
    }


def _first_ui_value(entry: dict, key: str) -> Any:
    """The first record under ``key`` in any node's UI output (found by key, not by node id)."""
    for node_output in (entry.get("outputs") or {}).values():
        values = node_output.get(key)
        if values:
            return values[0] if isinstance(values, list) else values
    return None


class ResultRecorder:
    """The one writer of a batch's results file: a user's line appended, counted in ``summary``, progress told."""

    def __init__(self, out_jsonl: Path, summary: BatchSummary, total: int,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.out_jsonl, self.summary, self.total, self.progress = Path(out_jsonl), summary, total, progress

    def record(self, user: str, prompt_id: str | None, entry: dict | None, error: dict | None, began: float,
               **extra: Any) -> dict:
        """Append ``user``'s line (``extra`` fields added, e.g. the Ray batch's ``server``) and count it."""
        line = result_record(user, prompt_id, entry, error, time.monotonic() - began)
        line.update(extra)
        append_line(self.out_jsonl, line)
        if line["status"] == "success":
            self.summary.done += 1
        else:
            self.summary.failed += 1
            self.summary.failed_users.append(user)
            where = f" on {extra['server']}" if "server" in extra else ""
            log.warning("user %s failed%s: %s", user, where, describe_node_errors([line["error"]]))
        self.report_progress()
        return line

    def report_progress(self) -> None:
        if self.progress is not None:
            self.progress(self.summary.done + self.summary.failed, self.total)
