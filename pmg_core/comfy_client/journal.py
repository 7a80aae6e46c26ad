"""The prompt journal: which prompt id each user was given, on which server, written BEFORE it is queued.

A batch killed with SIGKILL leaves prompts in ComfyUI's queue that no result line
mentions. Without a record of their ids, the next run cannot tell them from prompts that
never reached the server, so it queues those users again and the server runs them twice.
The journal closes that gap: the prompt id is made here (ComfyUI's ``POST /prompt``
takes a ``prompt_id``), its line is appended and fsynced, and only then is the prompt
sent. A journal line therefore exists for every prompt a server may hold; a line whose
prompt never arrived is harmless (the server has no trace of it, the user is queued again).

One file per results file (``results.jsonl`` → ``results.journal.jsonl``), one JSON line
per submission: ``{"user_id", "prompt_id", "server", "client_id"}``. Only the process
that writes the results file writes the journal.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JournalEntry:
    """One submission: ``prompt_id`` was (about to be) queued for ``user_id`` on ``server``."""

    user_id: str
    prompt_id: str
    server: str
    client_id: str


def append_line(path: Path, record: dict) -> None:
    """Append one JSON line and flush it to disk, so a kill right after loses nothing.

    A last line cut short by an earlier kill is ended first, so the new line is never glued onto it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
        handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def read_lines(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file; a line cut short by a kill is skipped with a warning."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            log.warning("%s:%d is not a JSON line (cut short by a kill?); ignoring it", path, number)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class PromptJournal:
    """The journal file of one batch (see the module docstring)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @classmethod
    def beside(cls, out_jsonl: Path | str) -> PromptJournal:
        """The journal of a results file: ``results.jsonl`` → ``results.journal.jsonl`` in the same folder."""
        out_jsonl = Path(out_jsonl)
        return cls(out_jsonl.with_name(f"{out_jsonl.stem}.journal.jsonl"))

    def new_prompt(self, user_id: str, server: str, client_id: str) -> JournalEntry:
        """A fresh prompt id for ``user_id`` on ``server``, durably recorded; queue it only after this returns."""
        entry = JournalEntry(user_id=user_id, prompt_id=uuid.uuid4().hex, server=server.rstrip("/"),
                             client_id=client_id)
        append_line(self.path, asdict(entry))
        return entry

    def entries(self) -> list[JournalEntry]:
        """Every submission recorded so far, oldest first."""
        found = []
        for record in read_lines(self.path):
            try:
                found.append(JournalEntry(str(record["user_id"]), str(record["prompt_id"]),
                                          str(record["server"]).rstrip("/"), str(record.get("client_id", ""))))
            except (KeyError, TypeError):
                log.warning("%s has a line that is not a journal entry: %r; ignoring it", self.path, record)
        return found
