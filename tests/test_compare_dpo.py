"""The paired test of bench/compare_dpo.py against values worked out by hand and against its
definition as a sign-flip test: under the null, each discordant problem is equally likely to
favour either model."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.compare_dpo import mcnemar


def test_mcnemar_counts_the_discordant_problems_and_tests_them_at_one_half() -> None:
    a = [True] * 9 + [False] + [True, False] * 5
    b = [False] * 9 + [True] + [True, False] * 5
    # 9 against 1 of 10 discordant: 2 * (C(10,0) + C(10,1)) / 2^10.
    assert mcnemar(a, b) == (9, 1, 22 / 1024)
    assert mcnemar(b, a) == (1, 9, 22 / 1024)
    assert mcnemar(a, a) == (0, 0, 1.0)
    assert mcnemar([True, False], [False, True]) == (1, 1, 1.0)


@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=40))
def test_mcnemar_is_the_exact_sign_flip_test(pairs: list[tuple[bool, bool]]) -> None:
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    only_a, only_b, p = mcnemar(a, b)
    n = only_a + only_b
    if n > 14:
        return
    observed = abs(only_a - only_b)
    flips = list(itertools.product((1, -1), repeat=n))
    as_extreme = sum(abs(sum(f)) >= observed for f in flips)
    assert p == pytest.approx(as_extreme / len(flips), rel=1e-12)
