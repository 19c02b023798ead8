"""The paired bootstrap test against the textbook one: resampling the examples themselves."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from data_tools.bootstrap import paired_bootstrap, paired_bootstrap_scores


def direct(a: list[bool], b: list[bool], resamples: int, seed: int) -> tuple[list[float], float]:
    """Resample example indices with replacement, as the bootstrap is defined."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(resamples)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [lo, hi], float(np.mean(np.abs(means - d.mean()) >= abs(d.mean()) - 1e-12))


@pytest.mark.parametrize("rates", [(0.7, 0.65), (0.5, 0.5), (0.3, 0.45)])
def test_paired_bootstrap_agrees_with_resampling_the_examples(rates: tuple[float, float]) -> None:
    rng = random.Random(0)
    a = [rng.random() < rates[0] for _ in range(400)]
    b = [rng.random() < rates[1] for _ in range(400)]
    ours = paired_bootstrap(a, b, resamples=4000, seed=1)
    ci, p = direct(a, b, resamples=4000, seed=2)
    assert ours["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert ours["ci"] == pytest.approx(ci, abs=0.01)
    assert ours["p"] == pytest.approx(p, abs=0.03)


def test_no_difference_and_bad_input() -> None:
    same = [True, False, True, True]
    assert paired_bootstrap(same, same) == {"difference": 0.0, "ci": [0.0, 0.0], "p": 1.0}
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([True], [True, False])
    with pytest.raises(ValueError, match="non-empty"):
        paired_bootstrap([], [])


@pytest.mark.parametrize("shift", [0.0, 0.02, 0.08])
def test_graded_scores_agree_with_the_normal_approximation(shift: float) -> None:
    """For 2,000 examples the mean difference is close to normal: the interval is the mean
    +- 1.96 standard errors and p is the two-sided normal tail."""
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 1, 2000)
    a = np.clip(b + shift + rng.normal(0, 0.3, 2000), 0, 1)
    ours = paired_bootstrap_scores(list(a), list(b), resamples=4000, seed=1)
    d = a - b
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert ours["difference"] == pytest.approx(d.mean())
    assert ours["ci"] == pytest.approx([d.mean() - 1.96 * se, d.mean() + 1.96 * se], abs=0.002)
    assert ours["p"] == pytest.approx(math.erfc(abs(d.mean()) / se / math.sqrt(2)), abs=0.03)


def test_graded_scores_of_right_and_wrong_are_the_paired_bootstrap() -> None:
    rng = random.Random(3)
    a = [rng.random() < 0.6 for _ in range(500)]
    b = [rng.random() < 0.5 for _ in range(500)]
    ours = paired_bootstrap_scores([float(x) for x in a], [float(x) for x in b], seed=1)
    theirs = paired_bootstrap(a, b, seed=2)
    assert ours["difference"] == theirs["difference"]
    assert ours["ci"] == pytest.approx(theirs["ci"], abs=0.01)
    assert ours["p"] == pytest.approx(theirs["p"], abs=0.02)
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap_scores([0.5], [])
