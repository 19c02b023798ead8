"""`train` under the deepspeed launcher against an independent plain PyTorch loop.

The reference loop sees each global batch whole, in one process, with HF's own mean loss: the
engine's split over ranks, micro-batches and ZeRO partitions must not change the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, get_scheduler

from data_tools.collate import pad_right
from data_tools.sources import load_examples
from data_tools.synthetic_math import Difficulty, write_splits
from data_tools.tokenization import encode_examples
from runtime.modeling import load_model, load_tokenizer
from tests import wandb_files
from tests.launch import run
from tests.models import train_config
from train.batches import BatchPlan

STEPS, MICRO, ACCUM, WORLD, SEED, LR, MAX_LEN = 20, 4, 2, 2, 3, 2e-3, 160


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer) -> dict:
    root = tmp_path_factory.mktemp("train")
    write_splits(root / "data", {"train": 400, "validation": 16}, Difficulty(max_steps=3), seed=1)
    config = train_config(
        root,
        tokenizer,
        "llama-64",
        eval_data=str(root / "data/validation.jsonl"),
        max_length=MAX_LEN,
        micro_batch_size=MICRO,
        gradient_accumulation_steps=ACCUM,
        max_steps=STEPS,
        learning_rate=LR,
        warmup_steps=3,
        lr_scheduler="cosine",
        weight_decay=0.1,
        seed=SEED,
    )
    return {"root": root, "config": config}


def train(setup: dict, out: Path, nproc: int, *extra: str) -> list[dict]:
    run(
        "train",
        ["--config", str(setup["root"] / "config.yaml"), "--output_dir", str(out), *extra],
        nproc,
    )
    return [json.loads(line) for line in (out / "metrics.jsonl").open()]


@pytest.fixture(scope="module")
def reference(setup: dict) -> dict:
    """Per-step losses and final model of a plain PyTorch loop over the same global batches."""
    c = setup["config"]
    tokenizer = load_tokenizer(c["tokenizer"])
    examples, _ = load_examples(c["data"], task="math")
    data, _ = encode_examples(tokenizer, examples, MAX_LEN)
    plan = BatchPlan(len(data), MICRO, ACCUM, WORLD, SEED)
    model = load_model(tokenizer, config_file=c["model_config"], seed=SEED)
    params = dict(model.named_parameters())
    groups = [
        {"params": [p for p in params.values() if p.ndim >= 2], "weight_decay": c["weight_decay"]},
        {"params": [p for p in params.values() if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.95))
    scheduler = get_scheduler("cosine", optimizer, c["warmup_steps"], STEPS)
    losses, lrs = [], []
    for step in range(STEPS):
        lrs.append(scheduler.get_last_lr()[0])  # the rate this step runs at
        batch = pad_right([data[i] for i in plan.global_indices(step)], tokenizer.pad_token_id)
        loss = model(**batch).loss  # the mean over every trained token of the global batch
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    probe = pad_right(data[:8], tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model.eval()(**probe).logits
    return {"losses": losses, "lrs": lrs, "probe": probe, "logits": logits}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_matches_plain_pytorch(setup, reference, tmp_path, stage):
    out = tmp_path / f"zero{stage}"
    rows = train(setup, out, WORLD, "--deepspeed_config", f"ds_configs/zero{stage}.json")
    losses = [r["train/loss"] for r in rows]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    torch.testing.assert_close(
        torch.tensor(losses), torch.tensor(reference["losses"]), rtol=1e-4, atol=0
    )
    assert losses[-1] < losses[0] * 0.8, "the model should learn something in 20 steps"
    # The logged rate is the one each step ran at (0 in the first warmup step), not the next's.
    assert [r["train/lr"] for r in rows] == pytest.approx(reference["lrs"], rel=1e-12)

    # The export, consolidated from the ZeRO checkpoint, is the reference's model.
    check = json.loads((out / "export_check.json").read_text())
    assert check["max_abs_logit_diff"] <= check["tolerance"]
    exported = AutoModelForCausalLM.from_pretrained(out / "export").eval()
    with torch.no_grad():
        logits = exported(**reference["probe"]).logits
    mask = reference["probe"]["attention_mask"].bool()
    torch.testing.assert_close(logits[mask], reference["logits"][mask], rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_resumed_run_continues_as_the_uninterrupted_one(setup, tmp_path):
    steps = ["--max_steps", "10", "--deepspeed_config", "ds_configs/zero2.json"]
    whole = train(setup, tmp_path / "whole", WORLD, *steps)
    first = train(
        setup, tmp_path / "split", WORLD, *steps, "--save_every", "5", "--stop_at_step", "5"
    )
    assert [r["step"] for r in first] == [1, 2, 3, 4, 5]
    assert not (tmp_path / "split/export").exists()
    assert (tmp_path / "split/checkpoints/latest").read_text() == "step_5"
    resumed = train(setup, tmp_path / "split", WORLD, *steps)
    assert [r["step"] for r in resumed] == list(range(1, 11))
    for a, b in zip(whole[5:], resumed[5:], strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-6)
        assert a["train/lr"] == b["train/lr"]
    w1 = load_file(tmp_path / "whole/export/model.safetensors")
    w2 = load_file(tmp_path / "split/export/model.safetensors")
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-6, atol=1e-7)


def test_a_config_that_contradicts_the_run_is_refused_before_loading(setup, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 64, "zero_optimization": {"stage": 2}}))
    args = ["--config", str(setup["root"] / "config.yaml"), "--output_dir", str(tmp_path / "out")]
    result = run(
        "train", [*args, "--deepspeed_config", str(ds), "--data", "missing.jsonl"], check=False
    )
    assert result.returncode != 0
    assert "train_batch_size is 64" in result.stderr and "world size 1 = 8" in result.stderr
    assert "missing.jsonl" not in result.stderr  # refused before the data was read
    assert not (tmp_path / "out/checkpoints").exists()


def test_bad_data_is_reported_with_file_line_and_field(setup, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q2"}\n')
    args = ["--config", str(setup["root"] / "config.yaml"), "--output_dir", str(tmp_path / "out")]
    result = run("train", [*args, "--data", str(bad)], check=False)
    assert result.returncode != 0
    assert f"{bad}:2: field 'answer': missing" in result.stderr


def test_wandb_logs_offline_without_an_api_key(setup, tmp_path):
    out = tmp_path / "out"
    extra = [
        "--max_steps",
        "4",
        "--eval_every",
        "2",
        "--wandb_project",
        "tests",
        "--export",
        "false",
    ]
    train_args = ["--config", str(setup["root"] / "config.yaml"), "--output_dir", str(out), *extra]
    run("train", train_args, WANDB_MODE="", WANDB_API_KEY="")
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    logged = [r for r in wandb_files.history(run_dir) if "train/loss" in r]
    local = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [r["_step"] for r in logged] == [1, 2, 3, 4]
    assert [r["train/loss"] for r in logged] == pytest.approx([r["train/loss"] for r in local])
    assert all({"train/lr", "train/grad_norm", "train/tokens_per_s"} <= r.keys() for r in logged)
    assert [r["_step"] for r in logged if "eval/loss" in r] == [2, 4]
    assert wandb_files.config(run_dir)["learning_rate"] == LR


@pytest.mark.slow
def test_zero3_fine_tunes_a_pretrained_model_like_plain_pytorch(setup, reference, tmp_path):
    """From a local pretrained folder, ZeRO-3 loads each weight straight into its partition."""
    c = dict(setup["config"])
    tokenizer = load_tokenizer(c["tokenizer"])
    pretrained = load_model(
        tokenizer, config_file=c.pop("model_config"), seed=SEED
    )  # = the reference's start
    pretrained.save_pretrained(tmp_path / "pretrained")
    tokenizer.save_pretrained(tmp_path / "pretrained")
    c.update(model_name_or_path=str(tmp_path / "pretrained"), tokenizer=None)
    (tmp_path / "config.yaml").write_text(json.dumps(c))
    out = tmp_path / "out"
    args = ["--config", str(tmp_path / "config.yaml"), "--output_dir", str(out)]
    run("train", [*args, "--deepspeed_config", "ds_configs/zero3.json"], WORLD)
    losses = [json.loads(line)["train/loss"] for line in (out / "metrics.jsonl").open()]
    torch.testing.assert_close(
        torch.tensor(losses), torch.tensor(reference["losses"]), rtol=1e-4, atol=0
    )
