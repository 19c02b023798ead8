"""Answer extraction, exact match, ROUGE, and scoring a generation file (library and CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from data_tools.schema import DataError
from data_tools.scoring import extract_answer, math_exact_match, rouge, score_file
from generate.score import main


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
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


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
    assert scores["summary"] == {"task": "math", "n": 4, "correct": 2, "exact_match": 0.5}
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
    expected = rouge([r["generation"] for r in rows], [r["reference"] for r in rows])
    assert scores["summary"] == {"task": "summarization", "n": 2, **expected}
    assert [e["id"] for e in scores["examples"]] == ["a", "b"]
    assert scores["examples"][0]["rouge1"] == pytest.approx(2 * 3 / (3 + 6))


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
    with pytest.raises(ValueError, match="no scorer for task 'qa'"):
        score_file(write_generations(tmp_path / "gen.jsonl", MATH_ROWS), "qa")


def test_cli_writes_summary_and_examples(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    generations = write_generations(tmp_path / "gen.jsonl", MATH_ROWS)
    main([str(generations), "--task", "math"])
    assert capsys.readouterr().out.strip() == "exact_match: 0.5000 (2/4)"
    summary = json.loads((tmp_path / "gen.summary.json").read_text())
    assert summary["exact_match"] == 0.5
    examples = (tmp_path / "gen.summary.examples.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in examples] == ["a", "b", "c", "d"]
    main([str(generations), "--task", "math", "--out", str(tmp_path / "out/summary.json")])
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
    assert [e["correct"] for e in score_file(path, "math")["examples"]] == [True, False, True]
