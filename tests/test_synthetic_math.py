"""The synthetic task: deterministic, arithmetically right, one chained line per step."""

from __future__ import annotations

import json
import operator
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_tools.scoring import extract_answer
from data_tools.synthetic_math import Difficulty, main, make_problem, make_splits

OPS = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}  # exact: 7/2 != 3
STEP = re.compile(r"(\w+) now has (\d+)([-+*/])(\d+) = <<(\d+)([-+*/])(\d+)=(\d+)>>(\d+) (\w+)\.")
START = re.compile(r"^(\w+) has (\d+) (\w+)\.")


def check_problem(row: dict, d: Difficulty) -> None:
    """Every annotation is right, every step starts from the previous result, and the final
    `#### N` is the last result."""
    name, x, item = START.match(row["question"]).groups()
    x = int(x)
    assert 2 <= x <= d.max_start
    *steps, final = row["answer"].split("\n")
    assert len(steps) == row["num_steps"] <= d.max_steps
    for line in steps:
        m = STEP.fullmatch(line)
        assert m, line
        who, a, op, b, a2, op2, b2, c, shown, what = m.groups()
        assert (who, what) == (name, item) and (a, op, b) == (a2, op2, b2) and c == shown
        a, b, c = int(a), int(b), int(c)
        assert a == x, "each step starts from the previous result"
        assert op in d.operations
        assert 1 <= b <= d.max_operand if op in "+-" else b in (2, 3)  # fixed factors for * and /
        assert OPS[op](a, b) == c and 1 <= c <= d.max_value
        x = c
    assert final == f"#### {x}"
    assert extract_answer(row["answer"]) == str(x)
    assert row["question"].endswith(f"How many {item} does {name} have now?")


def test_deterministic_by_seed() -> None:
    sizes, d = {"train": 50, "test": 10}, Difficulty()
    assert make_splits(sizes, d, seed=1) == make_splits(sizes, d, seed=1)
    assert make_splits(sizes, d, seed=1) != make_splits(sizes, d, seed=2)


def test_splits_disjoint_and_sized() -> None:
    sizes = {"train": 300, "validation": 50, "test": 50}
    splits = make_splits(sizes, Difficulty(), seed=0)
    assert {k: len(v) for k, v in splits.items()} == sizes
    questions = [{r["question"] for r in rows} for rows in splits.values()]
    assert sum(map(len, questions)) == sum(sizes.values())  # no repeats, within or across
    assert splits["test"][0]["id"] == "synth-test-000000"


def test_default_problems_are_right() -> None:
    d = Difficulty()
    for row in make_splits({"train": 500}, d, seed=3)["train"]:
        check_problem(row, d)


@st.composite
def difficulties(draw: st.DrawFn) -> Difficulty:
    min_steps = draw(st.integers(1, 6))
    max_value = draw(st.integers(2, 500))
    return Difficulty(
        min_steps=min_steps,
        max_steps=draw(st.integers(min_steps, 8)),
        max_start=draw(st.integers(2, max_value)),
        max_operand=draw(st.integers(1, 50)),
        max_value=max_value,
        operations="".join(draw(st.sets(st.sampled_from("+-*/"), min_size=1))),
    )


@settings(max_examples=200, deadline=None)
@given(difficulties(), st.integers(0, 2**32))
def test_any_difficulty_gives_right_problems(d: Difficulty, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(5):
        check_problem(make_problem(d, rng), d)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_steps": 0}, "min_steps <= max_steps"),
        ({"min_steps": 4, "max_steps": 3}, "min_steps <= max_steps"),
        ({"max_start": 1}, "max_start <= max_value"),
        ({"max_start": 50, "max_value": 40}, "max_start <= max_value"),
        ({"max_operand": 0}, "max_operand must be at least 1"),
        ({"operations": ""}, "non-empty subset"),
        ({"operations": "+%"}, "non-empty subset"),
    ],
)
def test_difficulty_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Difficulty(**kwargs)


def test_too_few_distinct_problems() -> None:
    # One step of "+1" from 2: only names x items x phrasings = 160 distinct questions.
    d = Difficulty(min_steps=1, max_steps=1, max_start=2, max_operand=1, operations="+")
    with pytest.raises(ValueError, match="widen the difficulty"):
        make_splits({"train": 200}, d, seed=0)


def test_command_line_writes_the_splits_as_the_library_makes_them(tmp_path: Path) -> None:
    """The dataclass options: snake_case (the kebab spelling too), sizes and difficulty knobs."""
    argv = ["--output_dir", str(tmp_path), "--train", "5", "--validation", "2", "--test", "0"]
    main([*argv, "--seed", "3", "--max_steps", "3", "--max-value", "50"])
    d = Difficulty(max_steps=3, max_value=50)
    expected = make_splits({"train": 5, "validation": 2, "test": 0}, d, seed=3)
    for split, rows in expected.items():
        lines = (tmp_path / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == rows
    recorded = json.loads((tmp_path / "difficulty.json").read_text(encoding="utf-8"))
    assert (recorded["seed"], recorded["max_steps"], recorded["max_value"]) == (3, 3, 50)
    with pytest.raises(ValueError, match="min_steps <= max_steps"):
        main(["--output_dir", str(tmp_path), "--min_steps", "4", "--max_steps", "3"])
    with pytest.raises(ValueError, match="train must be 0 or more problems"):
        main(["--output_dir", str(tmp_path), "--train", "-1"])
