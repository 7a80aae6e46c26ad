"""Progress of a keyword extraction: several LLM stages mapped onto one growing (done, total) scale."""

from __future__ import annotations

import math
from collections.abc import Callable

Progress = Callable[[int, int], None]


class StageProgress:
    """Maps the progress of several generate() calls onto one growing (done, total) scale."""

    def __init__(self, progress: Progress | None):
        self.progress = progress
        self.done = 0
        self.total = 0

    def reserve(self, prompts: int, batch_size: int, steps: int) -> ReservedStage:
        """Count a later stage of at most ``prompts`` prompts in the total now (see :class:`ReservedStage`)."""
        size = math.ceil(prompts / batch_size) * steps
        self.total += size
        return ReservedStage(self, size)

    def stage(self, prompts: int, batch_size: int, steps: int, reserved: int = 0) -> Progress | None:
        if self.progress is None:
            return None
        offset = self.done
        size = math.ceil(prompts / batch_size) * steps
        self.total += size - reserved  # a reserved stage is counted already (cache hits make it smaller)
        self.done += size

        def report(done: int, total: int) -> None:
            self.progress(offset + done * size // max(total, 1), self.total)

        return report

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(max(self.total, 1), max(self.total, 1))


class ReservedStage:
    """A stage of a :class:`StageProgress` whose size was added to the total ahead of time."""

    def __init__(self, tracker: StageProgress, size: int):
        self.tracker, self.size = tracker, size

    def stage(self, prompts: int, batch_size: int, steps: int) -> Progress | None:
        return self.tracker.stage(prompts, batch_size, steps, reserved=self.size)
