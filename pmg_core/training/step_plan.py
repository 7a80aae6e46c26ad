"""Which examples each optimizer step uses, and how often a run checkpoints.

Everything follows from the step number and the seed, so resuming a run needs no
data-loader state.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["StepPlan", "checkpoint_interval"]

# A checkpoint at least every 50 steps bounds the work a crash loses on long runs;
# short runs checkpoint every quarter so a cancel keeps something.
_MAX_CHECKPOINT_INTERVAL = 50


def checkpoint_interval(total_steps: int) -> int:
    """The default steps between checkpoints: a quarter of the run, at most 50, at least 1."""
    return max(1, min(_MAX_CHECKPOINT_INTERVAL, total_steps // 4))


class StepPlan:
    """A stream of per-epoch permutations cut into optimizer steps.

    Step ``s`` consumes stream positions ``[s*S, (s+1)*S)`` with ``S = batch * grad_accum``;
    position ``p`` is example ``perm(epoch = p // N)[p % N]``.
    """

    def __init__(self, count: int, config):
        self.count = count
        self.seed = config.seed
        self.batch = config.batch_size
        self.per_step = config.batch_size * config.grad_accum
        if config.max_steps is not None:
            self.total_steps = config.max_steps
            self.end = config.max_steps * self.per_step
        else:
            self.end = config.epochs * count
            self.total_steps = math.ceil(self.end / self.per_step)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.count)
        return self._perms[epoch]

    def micro_batches(self, step: int) -> list[list[int]]:
        start = step * self.per_step
        stop = min(start + self.per_step, self.end)
        positions = list(range(start, stop))
        indices = [int(self._perm(p // self.count)[p % self.count]) for p in positions]
        return [indices[i : i + self.batch] for i in range(0, len(indices), self.batch)]

    def epoch_at(self, step: int) -> float:
        return min((step + 1) * self.per_step, self.end) / self.count
