"""Answer extraction, exact match, ROUGE, bootstrap intervals, and scoring a generation file
(library and CLI). The judge's win rate is tested in test_judge.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from data_tools.bootstrap import bootstrap_ci
from data_tools.schema import DataError
from data_tools.scoring import (
    CONFIRMATION,
    extract_answer,
    is_right,
    math_exact_match,
    rouge,
    score_file,
)
from generate.score import main
from methods.correction import CORRECTION_MARKER


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She pays 2*900 = <<2*900=1800>>1800.\n#### 1,800", "1800"),
        ("The answer is $18.", "18"),
        ("18.00", "18"),
        ("18.0 apples", "18"),
        ("0.50", "0.5"),
        ("It drops by -3", "-3"),
        ("-$4 overall", "-4"),
        ("16-3-4=9", "9"),  # hyphens between numbers are not minus signs
        ("from 3-4 days", "4"),
        ("no number here", None),
        ("", None),
        ("1, 2 and finally 3", "3"),  # the last number without a marker
        ("3,4,5", "5"),  # commas group thousands only
        ("1,234,567.250", "1234567.25"),
        ("#### 18\nThen 20 more for the road", "18"),  # after the last #### wins
        ("#### 5\n#### 7 ducks, 9 geese", "7"),
        ("so 12 in all\n####", "12"),  # an empty marker falls back to the last number
        ("#### -0.0", "0"),
        # The formats models write; numbers after the chosen marker do not count.
        ("#### 18", "18"),
        ("#### 18 dollars, 2 more than 16", "18"),
        ("The answer is 18.", "18"),
        ("So the answer is 18 apples, 2 more than Tom's 16.", "18"),
        ("The final answer is: $1,800.00 per month for 12 months", "1800"),
        ("**Answer:** 18 ducks", "18"),
        ("Q: How many?\nA: 18", "18"),
        ("A: 18 eggs\nQ: And 3 more?", "18"),
        ("A: Tom has 5 apples and buys 3, so 8.", "8"),  # no number right after A: - no marker
        ("Plan A: 5 rows of 4", "4"),  # "A:" marks an answer at the start of a line only
        ("$1,800", "1800"),
        ("\\boxed{18}", "18"),
        ("so $\\boxed{18}$ eggs, 4 left over", "18"),
        ("\\boxed{\\text{18 apples}} since 20 - 2", "18"),  # nested braces
        ("\\boxed{1{,}800}", "1800"),  # LaTeX's thousands separator
        ("\\boxed{-3} degrees", "-3"),
        ("The answer is $\\boxed{18}$.", "18"),
        ("\\boxed{18", "18"),  # cut short before the brace closed
        ("The answer is unclear; 3 + 4 = 7", "3"),  # the first number after the marker
        ("The answer is\n#### 18", "18"),  # a marker without a number gives way
        # Several answers: the last one counts.
        ("The answer is 12.\nWait, I forgot the 6 eggs. The answer is 18.", "18"),
        ("#### 12\n\\boxed{18}", "18"),
        ("\\boxed{12} or \\boxed{18}", "18"),
        ("answers: 3 of them", "3"),  # "answers" is not a marker: the last number
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "first", "last"),
    [
        ("#### 5\n#### 7", "5", "7"),
        ("The answer is 12. Wait, no: the answer is 18.", "12", "18"),
        ("A: 3\nA: 4\n\\boxed{5}", "3", "5"),
        ("4 and 6, so 10", "10", "10"),  # without a marker, the last number either way
    ],
)
def test_extract_answer_pick(text: str, first: str, last: str) -> None:
    assert extract_answer(text, pick="first") == first
    assert extract_answer(text, pick="last") == extract_answer(text) == last
    with pytest.raises(ValueError, match="pick must be one of"):
        extract_answer(text, pick="middle")


def test_math_exact_match() -> None:
    reference = (
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
    )
    assert math_exact_match("She makes $18.00 a day.", reference)
    assert math_exact_match("9 * 2 = 18\n#### 18", reference)
    assert not math_exact_match("#### 17", reference)
    assert not math_exact_match("I do not know.", reference)
    with pytest.raises(ValueError, match="no number in the reference"):
        math_exact_match("#### 18", "unanswerable")


def test_is_right_by_the_tasks_scorer() -> None:
    """Math: the final number, whatever the words; postfix: the symbols, whatever the spacing,
    nothing written after them. Tasks without a right answer, and unreadable references, raise."""
    assert is_right("math", "Tom has 8 coins.\n#### 8", "5+3 = <<5+3=8>>8 apples.\n#### 8")
    assert not is_right("math", "#### 9", "#### 8")
    assert is_right("postfix", " a  b +\nc * ", "a b + c *")
    assert not is_right("postfix", "a b + c * d", "a b + c *")
    assert not is_right("postfix", "a b c * +", "a b + c *")
    for task in ("qa", "summarization"):
        with pytest.raises(ValueError, match=f"task '{task}' has no right answer"):
            is_right(task, "a", "a")
    with pytest.raises(ValueError, match="no number in the reference"):
        is_right("math", "#### 8", "unanswerable")
    with pytest.raises(ValueError, match="no symbols in the reference"):
        is_right("postfix", "a", " ")


def test_bootstrap_ci() -> None:
    values = [1.0] * 200 + [0.0] * 200
    lo, hi = bootstrap_ci(values)
    assert bootstrap_ci(values) == [lo, hi]  # seeded: the same interval every time
    # The normal approximation: 0.5 +- 1.96 * sqrt(0.25 / 400) = 0.5 +- 0.049.
    assert lo == pytest.approx(0.451, abs=0.01) and hi == pytest.approx(0.549, abs=0.01)
    assert bootstrap_ci([0.25] * 7) == [0.25, 0.25]
    assert bootstrap_ci([0.0, 1.0], level=0.5, seed=3) != bootstrap_ci([0.0, 1.0], level=0.99)
    with pytest.raises(ValueError, match="no values"):
        bootstrap_ci([])


def test_rouge_matches_rouge_score() -> None:
    predictions = ["the cats were sitting on the mat", "a quick brown fox", "nothing alike"]
    references = ["the cat sat on the mat", "the quick brown fox jumps", "entirely different words"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = [scorer.score(r, p) for p, r in zip(predictions, references, strict=True)]
    scores = rouge(predictions, references)
    assert set(scores) == {"rouge1", "rouge2", "rougeL"}
    for key, value in scores.items():
        assert value == pytest.approx(sum(d[key].fmeasure for d in direct) / len(direct))
    assert rouge(["the cat sat"], ["the cat sat"]) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge(["a", "b"], ["a"])


def write_generations(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


MATH_ROWS = [
    {"id": "a", "generation": "3+4 = 7\n#### 7", "reference": "3+4=<<3+4=7>>7\n#### 7"},
    {"id": "b", "generation": "So 1,800 in total.", "reference": "#### 1800"},
    {"id": "c", "generation": "#### 5", "reference": "#### 6"},
    {"id": "d", "generation": "", "reference": "#### 2"},
]


def test_score_file_math(tmp_path: Path) -> None:
    scores = score_file(write_generations(tmp_path / "gen.jsonl", MATH_ROWS), "math")
    assert scores["summary"] == {
        "task": "math",
        "n": 4,
        "correct": 2,
        "exact_match": 0.5,
        "exact_match_ci": bootstrap_ci([1.0, 1.0, 0.0, 0.0]),
        "bootstrap": {"resamples": 1000, "level": 0.95, "seed": 0},
    }
    assert [e["correct"] for e in scores["examples"]] == [True, True, False, False]
    assert scores["examples"][1] == {
        "id": "b",
        "prediction": "1800",
        "answer": "1800",
        "correct": True,
    }
    assert scores["examples"][3]["prediction"] is None


def test_score_file_summarization(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "generation": "the cat sat", "reference": "the cat sat on the mat"},
        {"id": "b", "generation": "dogs bark", "reference": "a dog barked loudly"},
    ]
    scores = score_file(write_generations(tmp_path / "gen.jsonl", rows), "summarization")
    summary = scores["summary"]
    expected = rouge([r["generation"] for r in rows], [r["reference"] for r in rows])
    assert {k: summary[k] for k in expected} == expected
    assert [e["id"] for e in scores["examples"]] == ["a", "b"]
    assert scores["examples"][0]["rouge1"] == pytest.approx(2 * 3 / (3 + 6))
    # Each ROUGE score by rouge-score itself, and its interval over the per-example scores.
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for e, r in zip(scores["examples"], rows, strict=True):
        direct = scorer.score(r["reference"], r["generation"])
        assert {k: e[k] for k in expected} == {k: direct[k].fmeasure for k in expected}
    for key in expected:
        assert summary[f"{key}_ci"] == bootstrap_ci([e[key] for e in scores["examples"]])
        assert summary[f"{key}_ci"][0] <= summary[key] <= summary[f"{key}_ci"][1]


@pytest.mark.parametrize(
    ("line", "field", "problem"),
    [
        ('{"id": "x", "generation": "1"', None, "malformed JSON"),
        ({"id": "x", "reference": "#### 1"}, "generation", "missing or not a string"),
        ({"id": "a", "generation": "1", "reference": "#### 1"}, "id", "duplicate id 'a'"),
        ({"id": "x", "generation": "1", "reference": "none"}, "reference", "no number"),
    ],
)
def test_score_file_bad_rows(tmp_path: Path, line, field: str | None, problem: str) -> None:
    path = tmp_path / "gen.jsonl"
    text = line if isinstance(line, str) else json.dumps(line)
    path.write_text(json.dumps(MATH_ROWS[0]) + "\n" + text + "\n")
    with pytest.raises(DataError, match=problem) as e:
        score_file(path, "math")
    assert (e.value.where, e.value.field_name) == (f"{path}:2", field)


def test_score_file_refuses_unscored_task(tmp_path: Path) -> None:
    path = write_generations(tmp_path / "gen.jsonl", MATH_ROWS)
    with pytest.raises(ValueError, match="no scorer for task 'code'"):
        score_file(path, "code")
    with pytest.raises(ValueError, match="'qa' is scored by a judge only"):
        score_file(path, "qa")
    with pytest.raises(ValueError, match="qa is scored by a judge only: give --judge MODEL"):
        main(["--generations", str(path), "--task", "qa"])
    with pytest.raises(ValueError, match="math is scored by exact match"):
        main(["--generations", str(path), "--task", "math", "--judge", "never/loaded"])
    with pytest.raises(ValueError, match="task must be one of math, summarization, qa"):
        main(["--generations", str(path), "--task", "code"])


def test_cli_writes_summary_and_examples(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    generations = write_generations(tmp_path / "gen.jsonl", MATH_ROWS)
    main(["--generations", str(generations), "--task", "math"])
    lo, hi = bootstrap_ci([1.0, 1.0, 0.0, 0.0])
    assert capsys.readouterr().out.strip() == f"exact_match: 0.5000 [{lo:.4f}, {hi:.4f}] (2/4)"
    summary = json.loads((tmp_path / "gen.summary.json").read_text())
    assert summary["exact_match"] == 0.5
    examples = (tmp_path / "gen.summary.examples.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in examples] == ["a", "b", "c", "d"]
    out = tmp_path / "out/summary.json"
    main(["--generations", str(generations), "--task", "math", "--output", str(out)])
    assert (tmp_path / "out/summary.json").is_file()
    assert (tmp_path / "out/summary.examples.jsonl").is_file()


def test_a_self_corrected_generation_is_scored_on_its_last_answer(tmp_path):
    rows = [
        {
            "id": "a",
            "generation": "x = 3\n#### 3\nCorrection:\nx = 4\n#### 4",
            "reference": "#### 4",
        },
        {"id": "b", "generation": "#### 5\nCorrection:\n#### 6", "reference": "#### 5"},
        {"id": "c", "generation": "#### 7", "reference": "#### 7"},
    ]
    path = tmp_path / "gen.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [e["correct"] for e in score_file(path, "math", CORRECTION_MARKER)["examples"]] == [
        True,
        False,
        True,
    ]
    row = {"id": "s", "generation": "a dog\nCorrection:\nthe cat", "reference": "the cat"}
    path.write_text(json.dumps(row) + "\n")
    assert score_file(path, "summarization", CORRECTION_MARKER)["examples"][0]["rouge1"] == 1.0
    assert score_file(path, "summarization")["examples"][0]["rouge1"] < 1.0  # no marker: all


def test_self_correction_passes_and_flips(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The draft (before the first marker) and the final answer (after the last) scored alike,
    and the flips between them; a row without the marker is its own two passes."""
    m = CORRECTION_MARKER
    rows = [
        {"id": "a", "generation": f"x = 3\n#### 3{m}x = 4\n#### 4", "reference": "#### 4"},
        {"id": "b", "generation": f"#### 5{m}#### 6", "reference": "#### 5"},
        {"id": "c", "generation": "#### 7", "reference": "#### 7"},
        {"id": "d", "generation": f"Tom has 8 coins.\n#### 8{m}#### 8", "reference": "#### 8"},
        {"id": "e", "generation": f"#### 1{m}#### 2{m}#### 3", "reference": "#### 9"},
        {"id": "f", "generation": f"#### 5{m}{CONFIRMATION}", "reference": "#### 5"},  # kept
    ]
    path = write_generations(tmp_path / "gen.jsonl", rows)
    main(["--generations", str(path), "--task", "math"])
    summary = json.loads((tmp_path / "gen.summary.json").read_text())
    first = [0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    assert summary["correct"] == 4 and summary["first_pass_correct"] == 4
    assert summary["first_pass_exact_match"] == 4 / 6
    assert summary["first_pass_exact_match_ci"] == bootstrap_ci(first)
    assert (summary["right_to_wrong"], summary["wrong_to_right"]) == (1, 1)
    examples = [json.loads(x) for x in (tmp_path / "gen.summary.examples.jsonl").open()]
    assert [(e["first_pass_correct"], e["correct"]) for e in examples] == [
        (False, True),
        (True, False),
        (True, True),
        (True, True),
        (False, False),
        (True, True),
    ]
    lo, hi = bootstrap_ci(first)
    assert capsys.readouterr().out.splitlines()[1] == (
        f"first_pass_exact_match: 0.6667 [{lo:.4f}, {hi:.4f}] (4/6; exact_match is the second "
        "pass's), flips: 1 right->wrong, 1 wrong->right"
    )

    # Direct answers (no marker anywhere): no passes to tell apart.
    main(["--generations", str(write_generations(path, MATH_ROWS)), "--task", "math"])
    assert "first_pass_exact_match" not in json.loads((tmp_path / "gen.summary.json").read_text())

    # postfix: its own exact match on both passes.
    postfix = [
        {"id": "p", "generation": f"a +{m}a b +", "reference": "a b +"},
        {"id": "q", "generation": f"a b +{m}b a +", "reference": "a b +"},
    ]
    main(["--generations", str(write_generations(path, postfix)), "--task", "postfix"])
    summary = json.loads((tmp_path / "gen.summary.json").read_text())
    assert (summary["first_pass_correct"], summary["correct"]) == (1, 1)
    assert (summary["right_to_wrong"], summary["wrong_to_right"]) == (1, 1)
