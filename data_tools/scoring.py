"""Scoring generations: exact match of the final number for math, ROUGE for summarization."""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from rouge_score import rouge_scorer

from data_tools.prompting import CORRECTION_MARKER, final_answer_text
from data_tools.schema import DataError
from data_tools.sources import jsonl_objects

# A minus sign only where it cannot be a hyphen or a subtraction ("3-4", "x-1"); commas only as
# thousands separators, so a list "3,4,5" is three numbers; a trailing period is not a decimal.
_NUMBER = re.compile(r"(?:(?<![\w)])-)?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
SCORED_TASKS = ("math", "summarization")


def _normalise(number: str) -> str:
    value = Decimal(number.replace(",", "").replace("$", ""))
    if value == value.to_integral_value():
        return str(int(value))  # "18.00" -> "18", "-0" -> "0"
    return format(value.normalize(), "f")  # "0.50" -> "0.5"


def extract_answer(text: str) -> str | None:
    """The final numeric answer, normalised, or None if there is none.

    The first number after the last `####` (GSM8K's answer marker) wins, even over numbers the
    model wrote after it; without a marker (or with nothing numeric after it), the last number
    in the text.
    """
    _, marker, tail = text.rpartition("####")
    if marker and (match := _NUMBER.search(tail)):
        return _normalise(match.group())
    numbers = _NUMBER.findall(text)
    return _normalise(numbers[-1]) if numbers else None


def math_exact_match(prediction: str, reference: str) -> bool:
    """Whether the prediction's final number equals that of `reference`, a GSM8K answer."""
    expected = extract_answer(reference)
    if expected is None:
        raise ValueError(f"no number in the reference {reference!r}")
    return extract_answer(prediction) == expected


def _rouge_each(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return [
        {k: s.fmeasure for k, s in scorer.score(ref, pred).items()}
        for pred, ref in zip(predictions, references, strict=True)
    ]


def _mean(rows: Sequence[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-measure with stemming, averaged over the examples."""
    if not predictions:
        raise ValueError("no predictions to score")
    each = _rouge_each(predictions, references)
    return {k: _mean(each, k) for k in ROUGE_TYPES}


def _read_generations(path: Path, task: str) -> list[dict[str, Any]]:
    rows, seen = [], {}
    for where, row in jsonl_objects(path):
        for key in ("id", "generation", "reference"):
            if not isinstance(row.get(key), str):
                raise DataError(where, key, "missing or not a string")
        if row["id"] in seen:  # e.g. a resumed run that appended: would count twice
            raise DataError(where, "id", f"duplicate id {row['id']!r}, first at {seen[row['id']]}")
        if task == "math" and extract_answer(row["reference"]) is None:
            raise DataError(where, "reference", "no number to compare with")
        seen[row["id"]] = where
        rows.append(row)
    if not rows:
        raise DataError(str(path), None, "no generations")
    return rows


def score_file(path: str | Path, task: str, marker: str = CORRECTION_MARKER) -> dict[str, Any]:
    """Score a generation jsonl (rows with "id", "generation", "reference").

    Returns {"summary": {...}, "examples": [...]}: the summary has `n` and exact_match (math) or
    rouge1/rouge2/rougeL (summarization); each example has its id and its own scores.
    """
    if task not in SCORED_TASKS:
        raise ValueError(f"no scorer for task {task!r}; scored tasks are {SCORED_TASKS}")
    rows = _read_generations(Path(path), task)
    if task == "math":
        examples = []
        for r in rows:
            # A self-correcting generation answers after its last correction marker.
            prediction = extract_answer(final_answer_text(r["generation"], marker))
            answer = extract_answer(r["reference"])
            examples.append(
                {
                    "id": r["id"],
                    "prediction": prediction,
                    "answer": answer,
                    "correct": prediction == answer,
                }
            )
        correct = sum(e["correct"] for e in examples)
        summary = {"n": len(rows), "correct": correct, "exact_match": correct / len(rows)}
    else:
        each = _rouge_each([r["generation"] for r in rows], [r["reference"] for r in rows])
        examples = [{"id": r["id"], **s} for r, s in zip(rows, each, strict=True)]
        summary = {"n": len(rows), **{k: _mean(each, k) for k in ROUGE_TYPES}}
    return {"summary": {"task": task, **summary}, "examples": examples}
