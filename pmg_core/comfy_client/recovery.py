"""On resume: find the prompts a killed batch left on its servers, and where each one stands.

A prompt of the journal is *unsettled* when its user still has to run and no result line
names its id: the killed run sent it (or was about to) and never recorded it. Each
server is then asked about its unsettled prompts (:func:`locate`):

* ``finished``: its ``/history`` entry is there: record it, do not run the user again;
* ``waiting``: it is still queued or running: wait for it, do not queue the user again;
* ``unknown``: the server has no trace of it (it never arrived, or the server restarted
  and forgot it): only then is the user queued again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from .journal import JournalEntry

log = logging.getLogger(__name__)

FINISHED, WAITING, UNKNOWN = "finished", "waiting", "unknown"


@dataclass(frozen=True)
class Whereabouts:
    """Where one prompt stands on its server; ``entry`` is its /history entry when ``finished``."""

    state: str
    entry: dict | None = None


def unsettled(entries: Iterable[JournalEntry], recorded_prompt_ids: set[str], todo: Iterable[str]) -> list[JournalEntry]:
    """The journal entries of users in ``todo`` whose prompt id no result line names (oldest first)."""
    todo = set(todo)
    return [e for e in entries if e.user_id in todo and e.prompt_id not in recorded_prompt_ids]


def locate(client, prompt_ids: Iterable[str]) -> dict[str, Whereabouts]:
    """Ask ``client``'s server where each prompt is.

    ``/queue`` is read BEFORE ``/history``: a prompt only moves queue → running → history,
    so one absent from the queue at the first look and from the history at the second
    was in neither at the first look, and the server has no trace of it. (The other order
    could miss a prompt finishing between the two looks, and run its user twice.)
    """
    prompt_ids = list(dict.fromkeys(prompt_ids))
    if not prompt_ids:
        return {}
    queue = client.queue()
    live = {str(item[1]) for key in ("queue_running", "queue_pending") for item in queue.get(key) or []
            if isinstance(item, (list, tuple)) and len(item) > 1}
    found: dict[str, Whereabouts] = {}
    for prompt_id in prompt_ids:
        if prompt_id in live:
            found[prompt_id] = Whereabouts(WAITING)
            continue
        entry = client.history(prompt_id)
        found[prompt_id] = Whereabouts(FINISHED, entry) if entry is not None else Whereabouts(UNKNOWN)
    return found


def choose(entries: list[JournalEntry], found: dict[str, Whereabouts]) -> tuple[dict[str, JournalEntry], list[JournalEntry]]:
    """Per user, the one prompt to take over (a finished one first, else a waiting one), and the
    other waiting prompts of those users, which would run them a second time (to cancel)."""
    chosen: dict[str, JournalEntry] = {}
    for state in (FINISHED, WAITING):
        for entry in entries:
            if found.get(entry.prompt_id, Whereabouts(UNKNOWN)).state == state:
                chosen.setdefault(entry.user_id, entry)
    extra = [e for e in entries if found.get(e.prompt_id, Whereabouts(UNKNOWN)).state == WAITING
             and chosen.get(e.user_id) is not e]
    return chosen, extra
