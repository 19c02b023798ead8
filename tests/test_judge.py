"""The pairwise judge: every pair judged in both orders, the verdicts and their aggregation into a
win rate, the prompt file. A tiny random model is the judge: the mechanics are what is tested."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data_tools.bootstrap import bootstrap_ci
from data_tools.schema import DataError
from data_tools.scoring import final_answer_text, score_file
from data_tools.tokenization import prompt_ids
from generate.judge import (
    DEFAULT_PROMPT,
    PairwiseJudge,
    choice_token,
    order_verdict,
    pair_outcome,
    read_template,
)
from generate.score import main
from methods.correction import CORRECTION_MARKER
from runtime.modeling import load_model

REPO = Path(__file__).resolve().parents[1]
QUESTION = "Tom has 2 apples and buys 3 more. How many apples does Tom have?"
ROWS = [
    {"id": "same", "generation": "Tom has 5 apples.", "reference": "Tom has 5 apples."},
    {"id": "terse", "generation": "5", "reference": "Tom has 2 + 3 = 5 apples."},
    {"id": "wrong", "generation": "Tom has 6 apples.", "reference": "Tom has 5 apples."},
    {
        "id": "corrected",  # judged on its text after the correction marker
        "generation": "Tom has 6.\nCorrection:\nTom has 5 apples.",
        "reference": "He has 5 apples.",
    },
    {"id": "empty", "generation": "", "reference": "Tom has 5 apples."},
]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"prompt": QUESTION, **r}) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A tiny random Llama saved as a model folder, as a user's judge would be."""
    path = tmp_path_factory.mktemp("judge") / "model"
    model = load_model(tokenizer, config_file=str(REPO / "configs/models/tiny-llama.json"), seed=0)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize(
    ("generation_first", "reference_first", "margin", "verdicts", "outcome"),
    [
        (2.0, -3.0, 0.0, ["win", "win"], "win"),
        (-1.0, 1.0, 0.0, ["loss", "loss"], "loss"),
        (2.0, 2.0, 0.0, ["win", "loss"], "tie"),  # position bias: whatever comes first wins
        (-2.0, -2.0, 0.0, ["loss", "win"], "tie"),
        (0.05, -2.0, 0.1, ["tie", "win"], "tie"),  # within the margin
        (0.0, 0.0, 0.0, ["tie", "tie"], "tie"),
    ],
)
def test_verdicts(generation_first, reference_first, margin, verdicts, outcome) -> None:
    assert [
        order_verdict(generation_first, True, margin),
        order_verdict(reference_first, False, margin),
    ] == verdicts
    assert pair_outcome(verdicts) == outcome


class ScriptedJudge(PairwiseJudge):
    """The judge's logic with preferences set by the test instead of read from a model."""

    def __init__(self, preferences: list[float], margin: float):
        self.template, self.margin = read_template(DEFAULT_PROMPT), margin
        self.info = {"model": "scripted"}
        self.scripted, self.texts = preferences, []

    def preferences(self, texts: list[str]) -> list[float]:
        self.texts = list(texts)
        return self.scripted


def test_win_rate_aggregates_both_orders(tmp_path: Path) -> None:
    # (generation first, reference first) per pair: win, loss, tie, tie (margin), win.
    preferences = [2.0, -3.0, -1.0, 1.0, 2.0, 2.0, 0.05, -2.0, 1.0, -1.0]
    judge = ScriptedJudge(preferences, margin=0.1)
    scores = score_file(
        write_rows(tmp_path / "gen.jsonl", ROWS), "qa", CORRECTION_MARKER, judge=judge
    )
    outcomes = [e["outcome"] for e in scores["examples"]]
    assert outcomes == ["win", "loss", "tie", "tie", "win"]
    assert [e["win"] for e in scores["examples"]] == [1.0, 0.0, 0.5, 0.5, 1.0]
    summary = scores["summary"]
    assert (summary["wins"], summary["ties"], summary["losses"]) == (2, 2, 1)
    assert summary["win_rate"] == (2 + 0.5 * 2) / 5
    assert summary["win_rate_ci"] == bootstrap_ci([1.0, 0.0, 0.5, 0.5, 1.0])
    assert summary["judge"] == {"model": "scripted"}
    # Each pair was shown twice, the generation first and then the reference first.
    for i, row in enumerate(ROWS):
        answer = final_answer_text(row["generation"], CORRECTION_MARKER)
        fill = dict(prompt=QUESTION)
        assert judge.texts[2 * i] == judge.template.format(
            **fill, first=answer, second=row["reference"]
        )
        assert judge.texts[2 * i + 1] == judge.template.format(
            **fill, first=row["reference"], second=answer
        )
        judged = scores["examples"][i]["judged"]
        assert [o["first"] for o in judged] == ["generation", "reference"]
        assert [o["preference"] for o in judged] == preferences[2 * i : 2 * i + 2]


def test_judged_rows_need_a_prompt(tmp_path: Path) -> None:
    path = tmp_path / "gen.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n")
    with pytest.raises(DataError, match="missing or not a string") as e:
        score_file(path, "qa", judge=ScriptedJudge([1.0, -1.0], 0.0))
    assert (e.value.where, e.value.field_name) == (f"{path}:1", "prompt")
    with pytest.raises(ValueError, match="scored by exact match"):
        score_file(path, "math", judge=ScriptedJudge([1.0, -1.0], 0.0))


def test_tiny_model_judges_every_pair_in_both_orders(
    tmp_path: Path, judge_dir: Path, tokenizer, capsys: pytest.CaptureFixture
) -> None:
    path = write_rows(tmp_path / "gen.jsonl", ROWS)
    argv = ["--generations", str(path), "--task", "qa", "--judge", str(judge_dir)]
    main([*argv, "--judge_batch_size", "3"])
    summary = json.loads((tmp_path / "gen.summary.json").read_text())
    lines = (tmp_path / "gen.summary.examples.jsonl").read_text().splitlines()
    examples = [json.loads(line) for line in lines]
    assert [e["id"] for e in examples] == [r["id"] for r in ROWS]

    # Every recorded preference is the judge's own, in the order the record says: recomputed
    # here one prompt at a time, without padding.
    template = read_template(DEFAULT_PROMPT)
    model = load_model(tokenizer, str(judge_dir)).eval()
    one, two = choice_token(tokenizer, "1"), choice_token(tokenizer, "2")
    for row, e in zip(ROWS, examples, strict=True):
        answer = final_answer_text(row["generation"], CORRECTION_MARKER)
        assert [o["first"] for o in e["judged"]] == ["generation", "reference"]
        shown = [(answer, row["reference"]), (row["reference"], answer)]
        for order, (first, second) in zip(e["judged"], shown, strict=True):
            text = template.format(prompt=QUESTION, first=first, second=second)
            with torch.no_grad():
                logits = model(torch.tensor(prompt_ids(tokenizer, [text]))).logits[0, -1]
            expected = (logits[one] - logits[two]).item()
            assert order["preference"] == pytest.approx(expected, abs=1e-4)
            assert order["verdict"] == order_verdict(
                order["preference"], order["first"] == "generation", 0.0
            )
        assert e["outcome"] == pair_outcome([o["verdict"] for o in e["judged"]])
        assert e["win"] == {"win": 1.0, "tie": 0.5, "loss": 0.0}[e["outcome"]]

    # The summary, by hand from the records.
    wins = [e["win"] for e in examples]
    counts = (wins.count(1.0), wins.count(0.5), wins.count(0.0))
    assert (summary["wins"], summary["ties"], summary["losses"]) == counts
    assert summary["win_rate"] == pytest.approx((counts[0] + 0.5 * counts[1]) / len(wins))
    assert summary["win_rate_ci"] == bootstrap_ci(wins)
    assert summary["judge"] == {
        "model": str(judge_dir),
        "prompt": str(DEFAULT_PROMPT),
        "margin": 0.0,
    }
    assert f"({counts[0]} wins, {counts[1]} ties, {counts[2]} losses" in capsys.readouterr().out
    # A generation equal to its reference: both orders show the same text, so they disagree.
    same = examples[0]["judged"]
    assert same[0]["preference"] == pytest.approx(same[1]["preference"], abs=1e-5)
    assert examples[0]["outcome"] == "tie"


def test_summaries_judged_with_own_prompt_and_margin(tmp_path: Path, judge_dir: Path) -> None:
    prompt = tmp_path / "judge.txt"
    prompt.write_text("Text: {prompt}\n1: {first}\n2: {second}\nBetter ({{1 or 2}}):\n")
    path = write_rows(tmp_path / "gen.jsonl", ROWS[:3])
    out = tmp_path / "scores/summary.json"
    argv = ["--generations", str(path), "--task", "summarization", "--output", str(out)]
    argv += ["--judge", str(judge_dir)]
    main([*argv, "--judge_prompt", str(prompt), "--judge_margin", "1e6"])
    summary = json.loads(out.read_text())
    assert {"rouge1", "rouge2", "rougeL", "win_rate"} <= set(summary)
    assert summary["judge"] == {"model": str(judge_dir), "prompt": str(prompt), "margin": 1e6}
    assert (summary["win_rate"], summary["ties"]) == (0.5, 3)  # everything within the margin
    examples = [json.loads(line) for line in out.with_suffix(".examples.jsonl").open()]
    assert all({"rouge1", "judged", "outcome", "win"} <= set(e) for e in examples)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{prompt} {first}", r"exactly the fields \['first', 'prompt', 'second'\]"),
        ("{prompt} {first} {second} {answer}", r"it uses \['answer', 'first'"),
        ("{prompt} {first} {second} {}", "exactly the fields"),
        ("{prompt} {first} {second} {", "not a valid template"),
    ],
)
def test_bad_prompt_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "judge.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=problem) as e:
        read_template(path)
    assert e.value.where == str(path)


def test_choices_are_single_tokens(tokenizer) -> None:
    assert len({choice_token(tokenizer, "1"), choice_token(tokenizer, "2")}) == 2
    with pytest.raises(ValueError, match="not a single token"):
        choice_token(tokenizer, "1 apple or 2 apples")
