"""Bootstrap confidence intervals for a mean over examples (exact match, ROUGE, win rate), and
the paired bootstrap test of two models scored right or wrong on the same examples."""

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


def paired_bootstrap(
    a: Sequence[bool], b: Sequence[bool], resamples: int = 10_000, seed: int = SEED
) -> dict[str, float | list[float]]:
    """`a`'s accuracy minus `b`'s on the same examples, its percentile interval (LEVEL) and the
    two-sided p-value of no difference, over `resamples` resamples of the examples.

    Each example's difference is -1, 0 or 1, so a resample is fixed by how many of each it
    draws: one multinomial draw each, whatever the number of examples. The p-value is the
    share of resampled differences, centred on the observed one, at least as far from 0 as
    the observed difference (the bootstrap distribution shifted to the null)."""
    _check_pairs(a, b)
    d = np.asarray(a, dtype=np.int64) - np.asarray(b, dtype=np.int64)
    n = len(d)
    counts = [np.sum(d == 1), np.sum(d == 0), np.sum(d == -1)]
    draws = np.random.default_rng(seed).multinomial(n, np.asarray(counts) / n, size=resamples)
    return _test((draws[:, 0] - draws[:, 2]) / n, float(d.mean()))


def paired_bootstrap_scores(
    a: Sequence[float], b: Sequence[float], resamples: int = 10_000, seed: int = SEED
) -> dict[str, float | list[float]]:
    """`paired_bootstrap` for graded scores (edit similarity): `a`'s mean minus `b`'s on the same
    examples, resampling the examples' differences one resample at a time."""
    _check_pairs(a, b)
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(resamples)])
    return _test(means, float(d.mean()))


def _check_pairs(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty lists, got {len(a)} and {len(b)}")


def _test(means: np.ndarray, observed: float) -> dict[str, float | list[float]]:
    """The percentile interval of the resampled differences and the two-sided p-value of none:
    the share of them, centred on the observed one, at least as far from 0 as it."""
    tail = (1 - LEVEL) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    p = float(np.mean(np.abs(means - observed) >= abs(observed) - 1e-12))
    return {"difference": observed, "ci": [float(lo), float(hi)], "p": p}
