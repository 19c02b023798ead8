"""BASH's sampling schedules: values at chosen steps worked out by hand, warmup, and refusals."""

from __future__ import annotations

import math

import pytest

from methods.scheduled_sampling import SamplingSchedule
from train.args import TrainArgs


def test_constant_after_warmup() -> None:
    s = SamplingSchedule("constant", p_max=0.3, warmup_steps=5)
    assert [s.p(step) for step in (0, 4, 5, 6, 10_000)] == [0.0, 0.0, 0.3, 0.3, 0.3]


def test_linear_ramp() -> None:
    s = SamplingSchedule("linear", p_max=0.5, warmup_steps=10, ramp_steps=100)
    assert s.p(0) == s.p(9) == 0.0
    assert s.p(10) == 0.0  # the ramp starts from 0
    assert s.p(35) == pytest.approx(0.5 * 25 / 100)
    assert s.p(60) == pytest.approx(0.25)
    assert s.p(110) == s.p(5000) == 0.5


def test_inverse_sigmoid() -> None:
    s = SamplingSchedule("inverse_sigmoid", p_max=0.5, warmup_steps=3, k=10)
    assert s.p(2) == 0.0
    # i = 0: eps = 10 / (10 + 1), so p starts at p_max / 11, not at 0.
    assert s.p(3) == pytest.approx(0.5 / 11)
    assert s.p(23) == pytest.approx(0.5 * (1 - 10 / (10 + math.exp(2))))
    # Centre of the sigmoid: i = k ln k (14.78 for k = e^2), eps = 1/2.
    centre = SamplingSchedule("inverse_sigmoid", p_max=1.0, k=math.e**2)
    assert centre.p(14) < 0.5 < centre.p(15)
    # Far out it reaches p_max without overflowing.
    assert s.p(10**9) == 0.5


def test_exponential() -> None:
    s = SamplingSchedule("exponential", p_max=0.4, warmup_steps=2, decay=0.9)
    assert s.p(1) == 0.0
    assert s.p(2) == 0.0  # eps = 0.9**0 = 1
    assert s.p(3) == pytest.approx(0.4 * 0.1)
    assert s.p(4) == pytest.approx(0.4 * (1 - 0.81))
    assert s.p(10**6) == pytest.approx(0.4)


def test_default_p_max_and_monotone() -> None:
    for kind in ("linear", "inverse_sigmoid", "exponential"):
        s = SamplingSchedule(kind, warmup_steps=7)
        values = [s.p(step) for step in range(0, 20_000, 37)]
        assert values == sorted(values)
        assert values[0] >= 0 and values[-1] <= s.p_max == 0.25


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "cosine"}, "kind must be one of"),
        ({"kind": "constant", "p_max": 1.5}, "p_max"),
        ({"kind": "constant", "p_max": -0.1}, "p_max"),
        ({"kind": "constant", "p_max": float("nan")}, "p_max"),
        ({"kind": "linear", "warmup_steps": -1}, "warmup_steps"),
        ({"kind": "linear", "warmup_steps": 2.5}, "warmup_steps"),
        ({"kind": "linear", "ramp_steps": 0}, "ramp_steps"),
        ({"kind": "inverse_sigmoid", "k": 0.5}, "k must be"),
        ({"kind": "exponential", "decay": 1.0}, "decay"),
        ({"kind": "exponential", "decay": 0}, "decay"),
        ({"kind": "constant", "p_max": True}, "p_max"),
        ({"kind": "constant", "position_ramp": -1}, "position_ramp"),
        ({"kind": "linear", "position_ramp": 2.5}, "position_ramp"),
    ],
)
def test_invalid(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SamplingSchedule(**kwargs)


def test_bad_step() -> None:
    s = SamplingSchedule("constant")
    with pytest.raises(ValueError, match="step"):
        s.p(-1)
    with pytest.raises(ValueError, match="step"):
        s.p(1.5)


def test_from_args_reads_the_position_ramp() -> None:
    args = TrainArgs("out", mode="scs", ss_schedule="linear", ss_position_ramp=12)
    assert SamplingSchedule.from_args(args) == SamplingSchedule("linear", position_ramp=12)
    assert SamplingSchedule.from_args(TrainArgs("out", mode="scs")).position_ramp == 0
