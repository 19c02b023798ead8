"""BASH and SCS through the real entrypoints: tokens from `generate --teacher_forced true` are the
ones SCS computes online with the same weights, and tokens from other weights are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data_tools.atomic import write_jsonl
from data_tools.schema import DataError, Example
from data_tools.sources import load_examples
from data_tools.synthetic_math import Difficulty, make_splits
from data_tools.tokenization import encode_examples
from methods.scheduled_sampling import load_predictions
from runtime.fingerprint import model_fingerprint, tokenizer_fingerprint
from runtime.modeling import load_model
from tests.launch import run
from tests.models import save_tiny_model

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """64 problems, two different random models, and model A's teacher-forced tokens."""
    root = tmp_path_factory.mktemp("scheduled_sampling")
    write_jsonl(root / "data.jsonl", make_splits({"train": 64}, Difficulty(), seed=2)["train"])
    save_tiny_model(tokenizer, root / "model_a", seed=0)
    save_tiny_model(tokenizer, root / "model_b", seed=1)
    run(
        "generate",
        ["--model_name_or_path", str(root / "model_a"), "--data", str(root / "data.jsonl")]
        + ["--task", "math", "--teacher_forced", "true", "--output", str(root / "pred_a.jsonl")],
    )
    return root


def first_step(setup: Path, name: str, mode: str, model: str = "model_a") -> dict:
    """Step 1 of a run from `model` at a constant p = 0.5, with the learning rate at zero."""
    out = setup / name
    extra = ["--predictions", str(setup / "pred_a.jsonl")] if mode == "bash" else []
    run(
        "train",
        ["--model_name_or_path", str(setup / model), "--data", str(setup / "data.jsonl")]
        + ["--task", "math", "--output_dir", str(out), "--mode", mode, *extra]
        + ["--ss_schedule", "constant", "--ss_p_max", "0.5", "--max_steps", "1"]
        + ["--micro_batch_size", "8", "--gradient_accumulation_steps", "2"]
        + ["--deepspeed_config", "ds_configs/zero0.json", "--export", "false", "--seed", "5"],
        nproc=2,
    )
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])


def test_scs_step0_batch_is_bash_batch_from_same_weights(setup: Path) -> None:
    bash, scs = first_step(setup, "bash", "bash"), first_step(setup, "scs", "scs")
    sft = first_step(setup, "sft", "sft")
    # The same positions replaced by the same tokens give the same loss; SFT's batch differs.
    assert bash["train/replaced_fraction"] == scs["train/replaced_fraction"]
    assert 0.4 < bash["train/replaced_fraction"] < 0.6
    # A random model's tokens: changed where they differ from the reference, the same in both.
    assert bash["train/changed_fraction"] == scs["train/changed_fraction"]
    assert 0 < bash["train/changed_fraction"] <= bash["train/replaced_fraction"]
    assert "train/changed_fraction" not in sft
    assert scs["train/loss"] == pytest.approx(bash["train/loss"], rel=1e-6)
    assert abs(sft["train/loss"] - bash["train/loss"]) > 1e-3


def test_predictions_equal_online_ones(setup: Path, tokenizer) -> None:
    """The stored tokens are the argmax of one forward pass over each example alone."""
    from methods.scheduled_sampling import teacher_forced_predictions

    examples = load_examples(str(setup / "data.jsonl"), task="math")[0]
    encoded = encode_examples(tokenizer, examples, 512)[0]
    model = load_model(tokenizer, str(setup / "model_a")).eval()
    stored = {r["id"]: r["predictions"] for r in map(json.loads, (setup / "pred_a.jsonl").open())}
    for e in encoded[:8]:
        with torch.no_grad():
            assert teacher_forced_predictions(model, [e], tokenizer.pad_token_id)[0] == stored[e.id]


def test_tokens_of_other_weights_are_refused(setup: Path) -> None:
    result = run(
        "train",
        ["--model_name_or_path", str(setup / "model_b"), "--data", str(setup / "data.jsonl")]
        + ["--task", "math", "--output_dir", str(setup / "refused"), "--mode", "bash"]
        + ["--predictions", str(setup / "pred_a.jsonl"), "--max_steps", "1"],
        check=False,
    )
    assert result.returncode != 0
    assert "pred_a.jsonl:1" in result.stderr and "model_fingerprint" in result.stderr
    assert not (setup / "refused" / "checkpoints").exists()


def test_fingerprint_checks(setup: Path, tokenizer) -> None:
    examples = load_examples(str(setup / "data.jsonl"), task="math")[0]
    encoded = encode_examples(tokenizer, examples, 512)[0]
    path = str(setup / "pred_a.jsonl")
    fp_tok, fp_a = tokenizer_fingerprint(tokenizer), model_fingerprint(str(setup / "model_a"))
    assert fp_a != model_fingerprint(str(setup / "model_b"))
    assert len(load_predictions(path, encoded, fp_tok, fp_a, len(tokenizer))) == len(encoded)
    with pytest.raises(DataError, match="tokenizer_fingerprint"):
        load_predictions(path, encoded, "another", fp_a, len(tokenizer))
    # A training example without predictions is an error, not a silent SFT sample.
    extra = encode_examples(tokenizer, [Example("new", "q", "r", "math")], 64)[0]
    with pytest.raises(DataError, match="no predictions for 1"):
        load_predictions(path, encoded + extra, fp_tok, fp_a, len(tokenizer))
