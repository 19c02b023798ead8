"""Exposure bias, measured: teacher-forced and free-running curves coincide for a model whose
predictions are the reference, and part where the reference leaves the model's own tokens."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from data_tools.tokenization import IGNORE_INDEX, Encoded, encode_prompts
from generate.exposure_bias import aggregate, main, measure_batch
from runtime.generation import generate_batch
from runtime.modeling import load_model
from tests.models import problems_and_model

REPO = Path(__file__).resolve().parents[1]
MAX_NEW = 20


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """12 synthetic problems and a tiny random model whose generations sometimes end."""
    return problems_and_model(tmp_path_factory.mktemp("exposure_bias"), tokenizer, 12, seed=2)


@pytest.fixture(scope="module")
def model(files: Path, tokenizer):
    return load_model(tokenizer, str(files / "model")).eval()


@pytest.fixture(scope="module")
def own(files: Path, model, tokenizer) -> list[Encoded]:
    """Each prompt with the model's own greedy generation as its reference.

    Built at the token level, as `encode_examples` lays out a training example (prompt, then the
    response with labels), because decoding the tokens of a random model to text and encoding
    the text again need not give the same tokens back."""
    questions = [json.loads(line)["question"] for line in (files / "data.jsonl").open()]
    prompts, _ = encode_prompts(tokenizer, questions, 256)
    generated = generate_batch(model, tokenizer, prompts, MAX_NEW)
    ended = [g[-1] == tokenizer.eos_token_id for g in generated]
    assert any(ended) and not all(ended)  # references with and without their EOS
    return [
        Encoded(str(i), p + g, [IGNORE_INDEX] * len(p) + g)
        for i, (p, g) in enumerate(zip(prompts, generated, strict=True))
    ]


def test_curves_coincide_when_the_model_predicts_the_reference(model, tokenizer, own) -> None:
    measured = measure_batch(model, tokenizer, own)  # one batch: padded both ways
    for m, e in zip(measured, own, strict=True):
        n = e.num_trained
        assert m.teacher_correct == m.free_correct == [True] * n
        assert len(m.free_loss) == n
        assert np.allclose(m.free_loss, m.teacher_loss, atol=1e-5)
    result = aggregate(measured)
    assert len(result["position"]) == MAX_NEW
    assert result["count"] == result["free_running"]["loss_count"]
    assert result["teacher_forced"]["accuracy"] == result["free_running"]["accuracy"]
    assert set(result["free_running"]["accuracy"]) == {1.0}
    lengths = [len(m.free_correct) for m in measured]
    assert result["free_running"]["first_divergence_mean"] == np.mean(lengths)  # never leaves
    tf_loss, free_loss = result["teacher_forced"]["loss"], result["free_running"]["loss"]
    assert np.allclose(tf_loss, free_loss, atol=1e-5)
    assert np.allclose(result["gap"]["cumulative_loss"], 0, atol=1e-4)
    assert set(result["gap"]["cumulative_accuracy"]) == {0.0}


def test_curves_part_where_the_reference_leaves_the_model(model, tokenizer, own) -> None:
    """One reference token changed at position k: both regimes miss it; before it the two see
    the same context; after it free running follows its own tokens, which the reference has."""
    k = 2
    e = next(e for e in own if e.num_trained > k + 3)
    start = len(e.input_ids) - e.num_trained
    changed = list(e.input_ids)
    changed[start + k] = (changed[start + k] + 1) % len(tokenizer)
    labels = [IGNORE_INDEX] * start + changed[start:]
    [m] = measure_batch(model, tokenizer, [Encoded(e.id, changed, labels)])
    n = e.num_trained
    assert m.free_correct == [True] * k + [False] + [True] * (n - k - 1)
    assert m.teacher_correct[: k + 1] == [True] * k + [False]
    assert np.allclose(m.free_loss[: k + 1], m.teacher_loss[: k + 1], atol=1e-5)
    assert m.free_loss[k] > m.free_loss[k - 1]  # the changed token is unlikely
    assert not np.allclose(m.free_loss[k + 1 :], m.teacher_loss[k + 1 :], atol=1e-3)
    assert aggregate([m])["free_running"]["first_divergence_mean"] == k


def test_a_generation_that_ends_early(model, tokenizer, own) -> None:
    """The reference goes on where the model put its EOS: from there free running is wrong, and
    its loss (whose context would hold the EOS) is not defined."""
    e = next(e for e in own if e.input_ids[-1] == tokenizer.eos_token_id)
    ended_at = e.num_trained - 1
    go_on = tokenizer("3 more", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = e.input_ids[:-1] + go_on
    [m] = measure_batch(model, tokenizer, [Encoded(e.id, ids, e.labels[:-1] + go_on)])
    assert m.free_correct == [True] * ended_at + [False] * len(go_on)
    assert len(m.free_loss) == ended_at + 1
    assert np.allclose(m.free_loss, m.teacher_loss[: ended_at + 1], atol=1e-5)
    result = aggregate([m])
    assert result["free_running"]["loss_count"] == [1] * (ended_at + 1) + [0] * (len(go_on) - 1)
    assert result["free_running"]["loss"][ended_at + 1 :] == [None] * (len(go_on) - 1)
    assert result["gap"]["cumulative_loss"][ended_at + 1 :] == [None] * (len(go_on) - 1)


def test_command_writes_numbers_and_plot(files: Path, tmp_path: Path) -> None:
    out = tmp_path / "exposure"
    argv = ["--model_name_or_path", str(files / "model"), "--data", str(files / "data.jsonl")]
    argv += ["--task", "math", "--output_dir", str(out), "--limit", "6", "--max_positions", "12"]
    result = main([*argv, "--batch_size", "4"])
    assert json.loads((out / "exposure_bias.json").read_text()) == result
    assert (result["examples"], result["task"], result["position"]) == (6, "math", list(range(12)))
    assert result["count"] == [6] * 12  # every synthetic answer is longer than 12 tokens
    tf, free, gap = result["teacher_forced"], result["free_running"], result["gap"]
    assert all(0 <= a <= 1 for a in tf["accuracy"] + free["accuracy"])
    assert all(0 <= c <= 6 for c in free["loss_count"])
    assert np.allclose(gap["accuracy"], np.subtract(free["accuracy"], tf["accuracy"]))
    assert np.allclose(gap["cumulative_accuracy"], np.cumsum(gap["accuracy"]))
    defined = [g for g in gap["loss"] if g is not None]
    assert np.allclose([g for g in gap["cumulative_loss"] if g is not None], np.cumsum(defined))
    image = matplotlib.image.imread(out / "exposure_bias.png")
    assert image.shape[0] > 400 and image.shape[1] > 1200  # three panels side by side
    # The same numbers whatever the batch size.
    again = main([*argv, "--batch_size", "1", "--output_dir", str(tmp_path / "again")])
    for regime in ("teacher_forced", "free_running"):
        assert again[regime]["accuracy"] == result[regime]["accuracy"]
        assert np.allclose(again[regime]["loss"], result[regime]["loss"], atol=1e-5)
