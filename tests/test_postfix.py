"""The postfix task: every answer is the postfix of its question's parse (checked by an
independent shunting-yard parser and by evaluating both forms), splits are disjoint and
deterministic, rows load with the math task's loader, and the scorer on hand-made cases."""

from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_tools.bootstrap import bootstrap_ci
from data_tools.postfix import (
    LONG_SPLIT,
    QUESTION_PREFIX,
    SPLITS,
    Difficulty,
    main,
    make_problem,
    make_splits,
)
from data_tools.scoring import edit_distance, postfix_match, score_file
from data_tools.sources import load_examples
from generate.score import main as score_main
from methods.correction import CORRECTION_MARKER

BINDING = {"+": 1, "-": 1, "*": 2, "/": 2}  # the test's own, not the generator's
APPLY = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
}


def shunting_yard(symbols: list[str]) -> list[str]:
    """Dijkstra's conversion of infix to postfix, left-associative."""
    out: list[str] = []
    stack: list[str] = []
    for s in symbols:
        if s in BINDING:
            while stack and stack[-1] != "(" and BINDING[stack[-1]] >= BINDING[s]:
                out.append(stack.pop())
            stack.append(s)
        elif s == "(":
            stack.append(s)
        elif s == ")":
            while stack[-1] != "(":
                out.append(stack.pop())
            stack.pop()
        else:
            out.append(s)
    return out + stack[::-1]


def evaluate_infix(symbols: list[str], values: dict[str, Fraction]) -> Fraction:
    """Python's own parse of the infix (same precedence and associativity), on exact values."""
    code = " ".join(f"v[{s!r}]" if s.isalnum() else s for s in symbols)
    return eval(code, {"v": values})


def evaluate_postfix(symbols: list[str], values: dict[str, Fraction]) -> Fraction:
    stack: list[Fraction] = []
    for s in symbols:
        if s in APPLY:
            b, a = stack.pop(), stack.pop()
            stack.append(APPLY[s](a, b))
        else:
            stack.append(values[s])
    (result,) = stack
    return result


def same_value(infix: list[str], postfix: list[str], rng: random.Random) -> bool:
    """Whether both forms give the same value (or both divide by zero) for random variables."""
    values = {
        s: Fraction(int(s)) if s.isdigit() else Fraction(rng.randint(-9, 9))
        for s in infix
        if s.isalnum()
    }
    results = []
    for evaluate, symbols in ((evaluate_infix, infix), (evaluate_postfix, postfix)):
        try:
            results.append(evaluate(symbols, values))
        except ZeroDivisionError:
            results.append(None)
    return results[0] == results[1]


def check_problem(row: dict, d: Difficulty, split: str, rng: random.Random) -> None:
    assert row["question"].startswith(QUESTION_PREFIX)
    infix = row["question"].removeprefix(QUESTION_PREFIX).split(" ")
    postfix = row["answer"].split(" ")
    assert postfix == shunting_yard(infix)
    for _ in range(3):
        assert same_value(infix, postfix, rng)
    operators = [s for s in postfix if s in BINDING]
    low, high = d.operator_range(split)
    assert row["num_steps"] == len(operators) and low <= len(operators) <= high
    assert set(operators) <= set(d.operators)
    assert {s for s in postfix if s not in BINDING} <= set(d.operands)
    assert sorted(s for s in infix if s not in "()") == sorted(postfix)


def test_default_problems_are_right_and_in_range() -> None:
    d, rng = Difficulty(), random.Random(0)
    sizes = {"train": 300, "validation": 50, "test": 50, LONG_SPLIT: 100}
    for split, rows in make_splits(sizes, d, seed=3).items():
        for row in rows:
            check_problem(row, d, split, rng)


def test_deterministic_by_seed() -> None:
    sizes, d = {"train": 50, LONG_SPLIT: 10}, Difficulty()
    assert make_splits(sizes, d, seed=1) == make_splits(sizes, d, seed=1)
    assert make_splits(sizes, d, seed=1) != make_splits(sizes, d, seed=2)


def test_splits_disjoint_and_sized() -> None:
    """The default test sizes, 2,000 each, draw that many distinct problems."""
    sizes = {"train": 2000, "validation": 500, "test": 2000, LONG_SPLIT: 2000}
    splits = make_splits(sizes, Difficulty(), seed=0)
    assert {k: len(v) for k, v in splits.items()} == sizes
    questions = [{r["question"] for r in rows} for rows in splits.values()]
    assert sum(map(len, questions)) == sum(sizes.values())  # no repeats, within or across
    assert splits[LONG_SPLIT][0]["id"] == "postfix-test_long-000000"
    lengths = {k: [len(r["answer"].split()) for r in v] for k, v in splits.items()}
    assert (min(lengths["test"]), max(lengths["test"])) == (21, 51)  # 2n + 1 symbols
    assert (min(lengths[LONG_SPLIT]), max(lengths[LONG_SPLIT])) == (61, 81)


def matched_brackets(symbols: list[str]) -> list[tuple[int, int]]:
    opened, pairs = [], []
    for i, s in enumerate(symbols):
        if s == "(":
            opened.append(i)
        elif s == ")":
            pairs.append((opened.pop(), i))
    assert not opened
    return pairs


def test_bracket_probability() -> None:
    """At 0 every bracket is needed (dropping any pair changes the parse); at 1 every compound
    side is bracketed, so every operator but the root's."""
    rng = random.Random(0)
    for _ in range(100):
        row = make_problem(12, Difficulty(bracket_probability=0), rng)
        infix = row["question"].removeprefix(QUESTION_PREFIX).split(" ")
        for i, j in matched_brackets(infix):
            dropped = infix[:i] + infix[i + 1 : j] + infix[j + 1 :]
            assert shunting_yard(dropped) != row["answer"].split(" ")
        row = make_problem(12, Difficulty(bracket_probability=1), rng)
        assert row["question"].count("(") == 11


@st.composite
def difficulties(draw: st.DrawFn) -> Difficulty:
    low = draw(st.integers(1, 6))
    high = draw(st.integers(low, 8))
    long_low = draw(st.integers(high + 1, 12))
    return Difficulty(
        min_operators=low,
        max_operators=high,
        long_min_operators=long_low,
        long_max_operators=draw(st.integers(long_low, 14)),
        bracket_probability=draw(st.floats(0, 1)),
        operators="".join(draw(st.sets(st.sampled_from("+-*/"), min_size=1))),
        operands="".join(draw(st.sets(st.sampled_from("abcxyz0123456789"), min_size=1))),
    )


@settings(max_examples=100, deadline=None)
@given(difficulties(), st.integers(0, 2**32), st.sampled_from(SPLITS))
def test_any_difficulty_gives_right_problems(d: Difficulty, seed: int, split: str) -> None:
    rng = random.Random(seed)
    low, high = d.operator_range(split)
    for _ in range(5):
        check_problem(make_problem(rng.randint(low, high), d, rng), d, split, rng)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_operators": 0}, "min_operators <= max_operators"),
        ({"min_operators": 9, "max_operators": 8}, "min_operators <= max_operators"),
        ({"long_min_operators": 25}, "max_operators < long_min_operators"),
        ({"long_min_operators": 35, "long_max_operators": 34}, "long_min_operators <= long_max"),
        ({"bracket_probability": -0.1}, "bracket_probability must be in"),
        ({"bracket_probability": 1.5}, "bracket_probability must be in"),
        ({"bracket_probability": float("nan")}, "bracket_probability must be in"),
        ({"operators": ""}, "non-empty subset"),
        ({"operators": "+^"}, "non-empty subset"),
        ({"operands": ""}, "ASCII letters or digits"),
        ({"operands": "ab("}, "ASCII letters or digits"),
        ({"operands": "aé"}, "ASCII letters or digits"),
    ],
)
def test_difficulty_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Difficulty(**kwargs)


def test_too_few_distinct_problems() -> None:
    # One operator, one operand: "a + a" is the only question.
    d = Difficulty(min_operators=1, max_operators=1, operators="+", operands="a")
    with pytest.raises(ValueError, match="only 1 distinct train problems.*widen the difficulty"):
        make_splits({"train": 2}, d, seed=0)


def test_command_line_writes_splits_the_math_loader_reads(tmp_path: Path) -> None:
    """The CLI writes what the library makes, records the options, and the rows load as the
    math task's examples with the operators as `num_steps`."""
    sizes = {"train": 5, "validation": 2, "test": 3, LONG_SPLIT: 4}
    argv = ["--output_dir", str(tmp_path), *(f"--{k}={n}" for k, n in sizes.items())]
    main([*argv, "--seed", "3", "--max_operators", "12", "--operands", "0123456789"])
    d = Difficulty(max_operators=12, operands="0123456789")
    expected = make_splits(sizes, d, seed=3)
    for split, rows in expected.items():
        lines = (tmp_path / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == rows
    examples, skipped = load_examples(str(tmp_path / f"{LONG_SPLIT}.jsonl"), task="math")
    assert skipped == 0
    assert [(e.id, e.prompt, e.response, e.meta) for e in examples] == [
        (r["id"], r["question"], r["answer"], {"num_steps": r["num_steps"]})
        for r in expected[LONG_SPLIT]
    ]
    recorded = json.loads((tmp_path / "difficulty.json").read_text(encoding="utf-8"))
    assert recorded == {"seed": 3, "sizes": sizes, **vars(d)}
    with pytest.raises(ValueError, match="bracket_probability must be in"):
        main(["--output_dir", str(tmp_path), "--bracket_probability", "2"])
    with pytest.raises(ValueError, match="test_long must be 0 or more problems"):
        main(["--output_dir", str(tmp_path), "--test_long", "-1"])


@pytest.mark.parametrize(
    ("prediction", "correct", "similarity"),
    [
        ("a b + c *", True, 1.0),
        ("  a  b\t+\nc *  \n", True, 1.0),  # whitespace is not a symbol
        ("a b c + *", False, 1 - 2 / 5),  # two symbols swapped: two substitutions
        ("a b + *", False, 1 - 1 / 5),  # one missing
        ("", False, 0.0),
        ("a b + c * The answer is above.", False, 1 - 4 / 9),  # not stopping is an error too
        ("ab + c *", False, 1 - 2 / 5),  # "ab" is one symbol
    ],
)
def test_postfix_match(prediction: str, correct: bool, similarity: float) -> None:
    assert postfix_match(prediction, "a b + c *") == {
        "correct": correct,
        "edit_similarity": pytest.approx(similarity),
    }


def test_postfix_match_needs_a_reference() -> None:
    with pytest.raises(ValueError, match="no symbols in the reference"):
        postfix_match("a", " \n")


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [("", "", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3), ("abc", "abc", 0)],
)
def test_edit_distance(a: str, b: str, distance: int) -> None:
    assert edit_distance(list(a), list(b)) == distance == edit_distance(list(b), list(a))


def test_score_file_postfix(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = [
        {"id": "a", "generation": "a b +\n", "reference": "a b +"},
        {"id": "b", "generation": f"a +\n{CORRECTION_MARKER}\na b +", "reference": "a b +"},
        {"id": "c", "generation": "b a +", "reference": "a b +"},
        {"id": "d", "generation": "", "reference": "a b +"},
    ]
    path = tmp_path / "gen.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = score_file(path, "postfix", CORRECTION_MARKER)
    assert [e["correct"] for e in scores["examples"]] == [True, True, False, False]
    similarities = [1.0, 1.0, 1 - 2 / 3, 0.0]
    assert [e["edit_similarity"] for e in scores["examples"]] == pytest.approx(similarities)
    summary = scores["summary"]
    assert (summary["task"], summary["n"], summary["correct"], summary["exact_match"]) == (
        "postfix",
        4,
        2,
        0.5,
    )
    assert summary["exact_match_ci"] == bootstrap_ci([1.0, 1.0, 0.0, 0.0])
    assert summary["edit_similarity"] == pytest.approx(sum(similarities) / 4)
    assert summary["edit_similarity_ci"] == bootstrap_ci(
        [e["edit_similarity"] for e in scores["examples"]]
    )
    assert score_file(path, "postfix")["examples"][1]["correct"] is False  # no marker: all of it
    score_main(["--generations", str(path), "--task", "postfix"])
    assert capsys.readouterr().out.startswith("exact_match: 0.5000")
    assert json.loads((tmp_path / "gen.summary.json").read_text())["correct"] == 2
