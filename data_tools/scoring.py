"""Scoring generations: exact match of the final answer for math, of the symbol sequence (with an
edit-distance similarity) for postfix, ROUGE for summarization, a judge's pairwise win rate
against the reference for qa and summarization; every score with a bootstrap confidence
interval."""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from rouge_score import rouge_scorer

from data_tools.bootstrap import LEVEL, RESAMPLES, SEED, bootstrap_ci
from data_tools.schema import DataError
from data_tools.sources import jsonl_objects

# A minus sign only where it cannot be a hyphen or a subtraction ("3-4", "x-1"); commas only as
# thousands separators, so a list "3,4,5" is three numbers; a trailing period is not a decimal.
_NUMBER = re.compile(r"(?:(?<![\w)])-)?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
# What models write before a final answer: GSM8K's "####", LaTeX's \boxed{...}, "The answer is",
# "Answer:", and "A:" at the start of a line when a number follows (Q/A few-shot prompts).
_MARKER = re.compile(
    r"####|\\boxed\s*\{|(?i:\banswer\b\s*(?:is\b|:))|^[ \t]*A:(?=[ \t]*-?\$?\d)", re.MULTILINE
)
PICKS = ("last", "first")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
SCORED_TASKS = ("math", "summarization", "qa", "postfix")
RIGHT_OR_WRONG = ("math", "postfix")  # the tasks whose scorer says right or wrong
JUDGED_TASKS = ("qa", "summarization")
# What RAC with `right_drafts` "confirm" is trained to write after the marker when its draft is
# right: a few fixed tokens instead of the draft again (methods/correction.py says why).
CONFIRMATION = "No correction."


def _normalise(number: str) -> str:
    value = Decimal(number.replace(",", "").replace("$", ""))
    if value == value.to_integral_value():
        return str(int(value))  # "18.00" -> "18", "-0" -> "0"
    return format(value.normalize(), "f")  # "0.50" -> "0.5"


def _box(text: str, start: int) -> str:
    """The text inside the braces opened just before `start`, nested braces included (to the end
    of the text when they never close, as in a generation cut short)."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return text[start:]


def marked_answers(text: str) -> list[str]:
    """The answer after each answer marker, in order: the first number after the marker (inside
    the braces for \\boxed), before the next marker. Markers with no number are left out."""
    marks = list(_MARKER.finditer(text))
    answers = []
    for k, mark in enumerate(marks):
        if mark.group().startswith("\\boxed"):
            scope = _box(text, mark.end())
        else:
            scope = text[mark.end() : marks[k + 1].start() if k + 1 < len(marks) else len(text)]
        if number := _NUMBER.search(scope):
            answers.append(_normalise(number.group()))
    return answers


def extract_answer(text: str, pick: str = "last") -> str | None:
    """The final numeric answer, normalised, or None if there is none.

    A marked answer wins (see `marked_answers`): the last one by default, since a model that
    answers twice has usually corrected itself, or the first (`pick="first"`). Numbers written
    after the chosen marker (units, remarks, "20 more for the road") do not count. Without any
    marked answer, the last number in the text, where a chain of reasoning ends.
    """
    if pick not in PICKS:
        raise ValueError(f"pick must be one of {PICKS}, got {pick!r}")
    text = text.replace("{,}", ",")  # LaTeX's thousands separator, 1{,}800
    if answers := marked_answers(text):
        return answers[-1] if pick == "last" else answers[0]
    numbers = _NUMBER.findall(text)
    return _normalise(numbers[-1]) if numbers else None


def math_exact_match(prediction: str, reference: str) -> bool:
    """Whether the prediction's final number equals that of `reference`, a GSM8K answer."""
    expected = extract_answer(reference)
    if expected is None:
        raise ValueError(f"no number in the reference {reference!r}")
    return extract_answer(prediction) == expected


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between two symbol sequences: insertions, deletions, substitutions."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def postfix_match(prediction: str, reference: str) -> dict[str, Any]:
    """`correct`: whether the prediction's symbols, split on whitespace, are the reference's
    (anything written after the answer counts against it: not stopping is an error too); and
    `edit_similarity`: 1 - their edit distance / the longer one's length, partial credit that
    tells a slip from a derailment."""
    expected = reference.split()
    if not expected:
        raise ValueError(f"no symbols in the reference {reference!r}")
    predicted = prediction.split()
    distance = edit_distance(predicted, expected)
    return {
        "correct": predicted == expected,
        "edit_similarity": 1 - distance / max(len(predicted), len(expected)),
    }


def is_right(task: str, text: str, reference: str) -> bool:
    """Whether `text` is a right answer, by the task's scorer: math, its final number
    (`math_exact_match`); postfix, its symbols (`postfix_match`). A task without a right answer
    (summarization, qa), and a reference the scorer cannot read, are a ValueError."""
    if task == "math":
        return math_exact_match(text, reference)
    if task == "postfix":
        return postfix_match(text, reference)["correct"]
    raise ValueError(f"task {task!r} has no right answer; the tasks that have: {RIGHT_OR_WRONG}")


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


class Judge(Protocol):
    """A pairwise judge (`generate.judge.PairwiseJudge`). `compare` returns, per example, the
    record of its verdicts in both orders and `win`: the generation's score against the
    reference, 1 (win), 0.5 (tie) or 0 (loss). `info` says which judge, for the summary."""

    info: dict[str, Any]

    def compare(
        self, prompts: Sequence[str], generations: Sequence[str], references: Sequence[str]
    ) -> list[dict[str, Any]]: ...


def _mean_ci(name: str, values: Sequence[float]) -> dict[str, Any]:
    return {name: sum(values) / len(values), f"{name}_ci": bootstrap_ci(values)}


def _read_generations(path: Path, task: str, fields: Sequence[str]) -> list[dict[str, Any]]:
    rows, seen = [], {}
    for where, row in jsonl_objects(path):
        for key in fields:
            if not isinstance(row.get(key), str):
                raise DataError(where, key, "missing or not a string")
            if key != "generation" and not row[key].strip():  # a model may generate nothing
                raise DataError(where, key, "empty or whitespace only")
        if row["id"] in seen:  # e.g. a resumed run that appended: would count twice
            raise DataError(where, "id", f"duplicate id {row['id']!r}, first at {seen[row['id']]}")
        if task == "math" and extract_answer(row["reference"]) is None:
            raise DataError(where, "reference", "no number to compare with")
        seen[row["id"]] = where
        rows.append(row)
    if not rows:
        raise DataError(str(path), None, "no generations")
    return rows


def final_answer_text(text: str, marker: str) -> str:
    """The answer of a self-correcting generation: the text after the last marker, or all of it
    when there is none (a direct answer). A `CONFIRMATION` after the marker (RAC's "the draft
    stands") makes the answer the one before that marker."""
    if not marker:
        raise ValueError("the correction marker must not be empty")
    before, found, after = text.rpartition(marker)
    if found and after.strip() == CONFIRMATION:
        return final_answer_text(before, marker)
    return after


def _passes(
    task: str, examples: list[dict[str, Any]], drafts: list[str], references: list[str], pick: str
) -> dict[str, Any]:
    """Self-correction's first pass scored as the final answers are (see `score_file`)."""
    for e, draft, reference in zip(examples, drafts, references, strict=True):
        if task == "math":  # the reference's answer, read once by score_file
            e["first_pass_correct"] = extract_answer(draft, pick) == e["answer"]
        else:
            e["first_pass_correct"] = postfix_match(draft, reference)["correct"]
    first = [e["first_pass_correct"] for e in examples]
    pairs = [(e["first_pass_correct"], e["correct"]) for e in examples]
    return {
        "first_pass_correct": sum(first),
        **_mean_ci("first_pass_exact_match", [float(x) for x in first]),
        "right_to_wrong": sum(a and not b for a, b in pairs),
        "wrong_to_right": sum(b and not a for a, b in pairs),
    }


def score_file(
    path: str | Path,
    task: str,
    marker: str | None = None,
    *,
    pick: str = "last",
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Score a generation jsonl (rows with "id", "generation", "reference"; "prompt" too when
    judged).

    Returns {"summary": {...}, "examples": [...]}. The summary has `n` and, each with a 95%
    bootstrap interval `<score>_ci`: exact_match (math, postfix), edit_similarity (postfix),
    rouge1/rouge2/rougeL (summarization), win_rate (qa, and summarization when a judge is
    given). Each example has its id and its own scores. With a `marker` (RAC's), a
    self-correcting generation is scored on its text after the last marker; for math and postfix,
    when any generation has the marker, its draft (the text before the first) is scored too:
    each example's `first_pass_correct`, and in the summary first_pass_correct (a count),
    first_pass_exact_match with its interval, and the flips from draft to final answer,
    right_to_wrong and wrong_to_right, which tell repairs from breakages. A generation without
    the marker is both passes.
    """
    if task not in SCORED_TASKS:
        raise ValueError(f"no scorer for task {task!r}; scored tasks are {SCORED_TASKS}")
    if judge is None and task == "qa":
        raise ValueError("task 'qa' is scored by a judge only; give one (generate.score --judge)")
    if judge is not None and task not in JUDGED_TASKS:
        raise ValueError(f"the judge scores {JUDGED_TASKS}; {task!r} is scored by exact match")
    fields = ("id", "generation", "reference") + (("prompt",) if judge is not None else ())
    rows = _read_generations(Path(path), task, fields)
    answers = [
        final_answer_text(r["generation"], marker) if marker else r["generation"] for r in rows
    ]
    references = [r["reference"] for r in rows]
    examples: list[dict[str, Any]] = [{"id": r["id"]} for r in rows]
    summary: dict[str, Any] = {"task": task, "n": len(rows)}
    if task == "math":
        for e, answer, reference in zip(examples, answers, references, strict=True):
            prediction, expected = extract_answer(answer, pick), extract_answer(reference)
            e.update(prediction=prediction, answer=expected, correct=prediction == expected)
    if task == "postfix":
        for e, answer, reference in zip(examples, answers, references, strict=True):
            e.update(postfix_match(answer, reference))
        summary.update(_mean_ci("edit_similarity", [e["edit_similarity"] for e in examples]))
    if task in RIGHT_OR_WRONG:
        summary["correct"] = sum(e["correct"] for e in examples)
        summary.update(_mean_ci("exact_match", [float(e["correct"]) for e in examples]))
        if marker and any(marker in r["generation"] for r in rows):
            drafts = [r["generation"].partition(marker)[0] for r in rows]
            summary.update(_passes(task, examples, drafts, references, pick))
    if task == "summarization":
        for e, s in zip(examples, _rouge_each(answers, references), strict=True):
            e.update(s)
        for key in ROUGE_TYPES:
            summary.update(_mean_ci(key, [e[key] for e in examples]))
    if judge is not None:
        records = judge.compare([r["prompt"] for r in rows], answers, references)
        for e, record in zip(examples, records, strict=True):
            e.update(record)
        wins = [e["win"] for e in examples]
        summary.update(wins=wins.count(1.0), ties=wins.count(0.5), losses=wins.count(0.0))
        summary.update(_mean_ci("win_rate", wins), judge=judge.info)
    summary["bootstrap"] = {"resamples": RESAMPLES, "level": LEVEL, "seed": SEED}
    return {"summary": summary, "examples": examples}
