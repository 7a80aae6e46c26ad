"""What a call on one ComfyUI server came to, as the Ray driver receives it from a server's actor.

Calls of :class:`~.server_worker.ComfyServerWorker` do not raise for what a batch expects;
they return an :class:`Outcome` whose :class:`OutcomeKind` the driver branches on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class OutcomeKind(Enum):
    OK = "ok"  # the server answers
    UPLOADED = "uploaded"  # the history file is on the server, under ``name``
    LOCATED = "located"  # where the asked prompts are: ``found`` (prompt id -> recovery.Whereabouts)
    FINISHED = "finished"  # the prompt ran (successfully or not): its history ``entry``
    REFUSED = "refused"  # ComfyUI refused the prompt (validation): it never ran; ``error``
    FAILED = "failed"  # it ran past the timeout and was cancelled; ``error``
    LOST = "lost"  # the server does not answer; ``message`` (the driver moves its users)


@dataclass(frozen=True)
class Outcome:
    """One call's outcome; the fields its kind fills are named in :class:`OutcomeKind`."""

    kind: OutcomeKind
    entry: dict | None = None
    error: dict | None = None
    message: str = ""
    name: str | None = None
    found: dict[str, Any] | None = None

    @classmethod
    def lost(cls, message: str) -> Outcome:
        return cls(OutcomeKind.LOST, message=message)

    @property
    def is_lost(self) -> bool:
        return self.kind is OutcomeKind.LOST
