"""Bootstrap confidence intervals over users, with a fixed seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A mean and its 95% bootstrap interval."""

    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": [self.low, self.high]}


def bootstrap_mean(values, seed: int = 0, resamples: int = 2000) -> Estimate:
    """Mean of ``values`` (one per user) with a percentile bootstrap 95% interval."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    return Estimate(float(data.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def bootstrap_relative_change(method, baseline, seed: int = 0, resamples: int = 2000) -> Estimate:
    """(mean(method) - mean(baseline)) / mean(baseline), paired by user, with its 95% interval."""
    a, b = np.asarray(method, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("Relative change needs one value per user for both methods, in the same order.")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, a.size, size=(resamples, a.size))
    changes = a[rows].mean(axis=1) / b[rows].mean(axis=1) - 1
    return Estimate(float(a.mean() / b.mean() - 1), float(np.percentile(changes, 2.5)), float(np.percentile(changes, 97.5)))
