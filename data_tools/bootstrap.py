"""Bootstrap confidence intervals for a mean over examples (exact match, ROUGE, win rate)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0


def bootstrap_ci(
    values: Sequence[float], resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED
) -> list[float]:
    """The percentile interval of the mean of `values` over `resamples` resamples with
    replacement. The seed is fixed so that scoring a file twice gives the same interval."""
    if not values:
        raise ValueError("no values to resample")
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    # One resample at a time: memory stays O(n) on large evaluation sets.
    means = [data[rng.integers(0, len(data), len(data))].mean() for _ in range(resamples)]
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return [float(lo), float(hi)]
