"""The synthetic task: deterministic, arithmetically right, one chained line per step."""

from __future__ import annotations

import json
import operator
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_tools.scoring import extract_answer
from data_tools.synthetic_math import Difficulty, main, make_problem, make_splits, step_ranges

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


SIZES = {"train": 200, "validation": 30, "test": 30}
LONG = {"test_6to8": replace(Difficulty(), min_steps=6, max_steps=8)}


def questions(splits: dict[str, list[dict]]) -> list[set[str]]:
    return [{r["question"] for r in rows} for rows in splits.values()]


def steps_of(row: dict) -> int:
    """The steps the answer works through, counted from its calculator annotations."""
    assert row["answer"].count("<<") == row["num_steps"]
    return row["num_steps"]


def test_shifted_splits_leave_the_others_as_they_were() -> None:
    shifted = {**LONG, "test_10": replace(Difficulty(), min_steps=10, max_steps=10)}
    splits = make_splits({**SIZES, "test_6to8": 40, "test_10": 40}, Difficulty(), 5, shifted)
    assert {k: splits[k] for k in SIZES} == make_splits(SIZES, Difficulty(), 5)
    assert sum(map(len, questions(splits))) == sum(SIZES.values()) + 80  # disjoint, all of them
    assert splits["test_10"][0]["id"] == "synth-test_10-000000"
    assert {steps_of(r) for r in splits["test_6to8"]} == {6, 7, 8}
    assert {steps_of(r) for r in splits["test_10"]} == {10}


def test_shifted_splits_are_deterministic_and_each_its_own_stream() -> None:
    sizes = {**SIZES, "test_6to8": 40}
    assert make_splits(sizes, Difficulty(), 1, LONG) == make_splits(sizes, Difficulty(), 1, LONG)
    assert make_splits(sizes, Difficulty(), 1, LONG) != make_splits(sizes, Difficulty(), 2, LONG)
    # Another shifted split, or other sizes for the others, do not redraw this one.
    more = {**LONG, "test_10": replace(Difficulty(), min_steps=10, max_steps=10)}
    alone = make_splits(sizes, Difficulty(), 1, LONG)["test_6to8"]
    bigger = {"train": 500, "test_6to8": 40, "test_10": 40}
    assert make_splits(bigger, Difficulty(), 1, more)["test_6to8"] == alone


def test_default_knobs_give_2000_problems_of_6_to_8_and_of_10_steps() -> None:
    """Long chains stay within max_value 99 without dying out: every value keeps + or - open."""
    shifted = {**LONG, "test_10": replace(Difficulty(), min_steps=10, max_steps=10)}
    splits = make_splits({"test_6to8": 2000, "test_10": 2000}, Difficulty(), 0, shifted)
    for split, rows in splits.items():
        assert len({r["question"] for r in rows}) == 2000
        for row in rows:
            check_problem(row, shifted[split])
            assert shifted[split].min_steps <= steps_of(row)
        assert len({r["answer"].rsplit("#### ", 1)[1] for r in rows}) > 90  # not degenerate


def test_shifted_problems_that_end_early_are_drawn_again() -> None:
    # Doubling or tripling from up to 20 passes 99 within a few steps: chains end early.
    d = Difficulty(min_steps=4, max_steps=6, operations="*")
    rng = random.Random(0)
    assert any(make_problem(d, rng)["num_steps"] < 4 for _ in range(100))
    rows = make_splits({"test_4to6": 50}, d, 0, {"test_4to6": d})["test_4to6"]
    assert all(steps_of(r) >= 4 for r in rows)
    with pytest.raises(ValueError, match="test_10 problems of at least 10 steps.*widen"):
        make_splits({"test_10": 5}, d, 0, {"test_10": replace(d, min_steps=10, max_steps=10)})


def test_a_shifted_split_shares_no_question_with_the_others_even_on_the_same_steps() -> None:
    # 1,920 questions in all: two draws of 300 would share some if nothing kept them apart.
    d = Difficulty(min_steps=1, max_steps=1, max_start=5, max_operand=3, operations="+")
    splits = make_splits({"train": 300, "test_1": 300}, d, 0, {"test_1": d})
    assert sum(map(len, questions(splits))) == 600


def test_command_line_writes_shifted_splits_beside_the_others(tmp_path: Path) -> None:
    """Without the options nothing changes, not even difficulty.json; with them (on the command
    line or in a YAML config, where `10` is a number) the others' files stay byte for byte."""
    base = ["--train", "20", "--validation", "5", "--test", "5", "--seed", "4"]
    main(["--output_dir", str(tmp_path / "plain"), *base])
    plain = json.loads((tmp_path / "plain" / "difficulty.json").read_text(encoding="utf-8"))
    assert list(plain) == ["seed", "sizes", *Difficulty.__dataclass_fields__]
    config = tmp_path / "long.yaml"
    config.write_text("shifted_steps: [6-8, 10]\nshifted_size: 30\n", encoding="utf-8")
    sizes = {"train": 20, "validation": 5, "test": 5, "test_6to8": 30, "test_10": 30}
    shifted = {
        "test_6to8": replace(Difficulty(), min_steps=6, max_steps=8),
        "test_10": replace(Difficulty(), min_steps=10, max_steps=10),
    }
    expected = make_splits(sizes, Difficulty(), 4, shifted)
    flags = ["--shifted-steps", "6-8", "10", "--shifted_size", "30"]
    for out, extra in (("flags", flags), ("yaml", ["--config", str(config)])):
        main([*extra, "--output_dir", str(tmp_path / out), *base])
        for split, rows in expected.items():
            lines = (tmp_path / out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
            assert [json.loads(line) for line in lines] == rows
        for split in ("train", "validation", "test"):
            same = (tmp_path / "plain" / f"{split}.jsonl").read_bytes()
            assert (tmp_path / out / f"{split}.jsonl").read_bytes() == same
        recorded = json.loads((tmp_path / out / "difficulty.json").read_text(encoding="utf-8"))
        assert recorded["sizes"] == sizes
        assert recorded["shifted"]["test_10"]["min_steps"] == 10
        assert recorded["shifted"]["test_6to8"] == recorded["shifted"]["test_10"] | {
            "min_steps": 6,
            "max_steps": 8,
        }


def test_step_ranges_name_the_splits() -> None:
    assert step_ranges(["6-8", "10", "3-3"]) == {
        "test_6to8": (6, 8),
        "test_10": (10, 10),
        "test_3": (3, 3),
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shifted_steps", "6to8"], "expected a count or range like 10 or 6-8, got '6to8'"),
        (["--shifted_steps", "-3"], "expected a count or range"),
        (["--shifted_steps", "0-3"], "need 1 <= first <= last, got '0-3'"),
        (["--shifted_steps", "8-6"], "need 1 <= first <= last, got '8-6'"),
        (["--shifted_steps", "10", "10-10"], "'10-10' repeats test_10"),
        (["--shifted_steps", "6-8", "--shifted_size", "-1"], "shifted_size must be 0 or more"),
    ],
)
def test_bad_shifted_options(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        main(["--output_dir", str(tmp_path), *argv])
    assert not list(tmp_path.iterdir())


def test_a_shifted_split_needs_a_size() -> None:
    with pytest.raises(ValueError, match=r"shifted splits \['test_10'\] have no size"):
        make_splits({"train": 5}, Difficulty(), 0, {"test_10": Difficulty()})
