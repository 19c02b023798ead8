"""Checkpoints: the export checked in a fresh process, rotation, and resume on another number of
processes (DeepSpeed universal checkpoints), with real `train` runs of a tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from data_tools.atomic import write_json, write_text
from data_tools.synthetic_math import Difficulty, write_splits
from runtime.modeling import load_model, load_tokenizer
from tests.launch import run
from tests.models import train_config
from train import check_export
from train.checkpoint import rotate

STEPS, STOP, GLOBAL_BATCH = 10, 5, 16


@pytest.fixture(scope="module")
def root(tmp_path_factory, tokenizer) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    write_splits(root / "data", {"train": 200, "validation": 16}, Difficulty(max_steps=2), seed=1)
    train_config(
        root, tokenizer, "llama-32", eval_data=str(root / "data/validation.jsonl"), max_steps=STEPS
    )
    return root


def train(root: Path, out: Path, nproc: int, micro: int, *extra: str) -> list[dict]:
    """A run of global batch GLOBAL_BATCH: micro x accumulation x processes."""
    accum = GLOBAL_BATCH // (micro * nproc)
    args = ["--config", str(root / "config.yaml"), "--output_dir", str(out)]
    args += ["--micro_batch_size", str(micro), "--gradient_accumulation_steps", str(accum)]
    run("train", [*args, *extra], nproc)
    return [json.loads(line) for line in (out / "metrics.jsonl").open()]


@pytest.fixture(scope="module")
def whole(root) -> Path:
    """One process, uninterrupted, a checkpoint and an evaluation every step, 2 kept + the best."""
    out = root / "whole"
    extra = ["--save_every", "1", "--eval_every", "1", "--keep_best_checkpoint", "true"]
    train(root, out, 1, 4, *extra, "--keep_last_checkpoints", "2")
    return out


@pytest.fixture(scope="module")
def saved_by_two(root) -> Path:
    """Two processes (ZeRO-2), stopped after STOP steps with a checkpoint."""
    out = root / "saved_by_two"
    train(root, out, 2, 4, "--stop_at_step", str(STOP))
    return out


def checkpoint_folders(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())


def test_rotation_keeps_the_newest_checkpoints_and_the_best(whole):
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").open()]
    best = min(rows, key=lambda r: r["eval/loss"])["step"]
    expected = {f"step_{STEPS - 1}", f"step_{STEPS}", f"step_{best}"}
    assert checkpoint_folders(whole) == sorted(expected)
    assert (whole / "checkpoints/latest").read_text() == f"step_{STEPS}"
    for tag in expected:
        state = json.loads((whole / "checkpoints" / tag / "run_state.json").read_text())
        step = int(tag.removeprefix("step_"))
        assert state["step"] == step and state["world_size"] == 1
        assert state["eval_loss"] == rows[step - 1]["eval/loss"]


def test_rotation_spares_latest_and_the_best_and_clears_leftovers(tmp_path):
    """The best is old here; leftovers: a save past `latest` that never completed, a stale
    universal conversion, a folder an interrupted rotation had renamed away and the temporary
    folder of an interrupted conversion."""
    for step, loss in [(1, 2.0), (2, 1.0), (3, 1.5), (4, None), (5, 1.2), (6, None)]:
        write_json(tmp_path / f"step_{step}/run_state.json", {"step": step, "eval_loss": loss})
    (tmp_path / "step_3_universal").mkdir()
    (tmp_path / ".step_0.deleting").mkdir()
    (tmp_path / ".step_3_universal.x1y2.tmp").mkdir()
    write_text(tmp_path / "latest", "step_5")
    deleted = rotate(tmp_path, keep_last=2, keep_best=True)
    assert sorted(deleted) == ["step_1", "step_3", "step_3_universal", "step_6"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_2", "step_4", "step_5"]
    rotate(tmp_path, keep_last=1, keep_best=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_5"]


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_on_four(root, whole, saved_by_two, tmp_path):
    """Same global batch (2 x 4 x 2 -> 4 x 2 x 2): the uninterrupted run's curve. Four ranks
    split each saved partition; fewer ranks merge them by the same universal conversion."""
    out = tmp_path / "run"
    shutil.copytree(saved_by_two, out)
    rows = train(root, out, 4, 2)
    reference = [json.loads(line) for line in (whole / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    torch.testing.assert_close(
        torch.tensor([r["train/loss"] for r in rows]),
        torch.tensor([r["train/loss"] for r in reference]),
        rtol=1e-4,
        atol=0,
    )
    assert [r["train/lr"] for r in rows] == pytest.approx([r["train/lr"] for r in reference])
    # The conversion served its purpose and is gone once a checkpoint of this world size exists.
    assert checkpoint_folders(out) == sorted([f"step_{STOP}", f"step_{STEPS}"])
    report = json.loads((out / "export_check.json").read_text())
    assert report["max_abs_logit_diff"] <= report["tolerance"]


@pytest.fixture(scope="module")
def probe(root, whole, tmp_path_factory) -> Path:
    """Two validation prompts and the logits of the exported model, computed here."""
    tokenizer = load_tokenizer(str(root / "tokenizer"))
    batch = tokenizer(["Ann has 3 cats.", "Bo has 12 pens. Then Bo buys 4."], padding=True)
    batch = {k: torch.tensor(v) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    model = AutoModelForCausalLM.from_pretrained(whole / "export").eval()
    with torch.no_grad():
        logits = model(**batch).logits[batch["attention_mask"].bool()]
    path = tmp_path_factory.mktemp("probe") / "probe.pt"
    torch.save({**batch, "logits": logits, "precision": "fp32"}, path)
    return path


def check(export: Path, *extra: str):
    return run("train.check_export", ["--export_dir", str(export), *extra], check=False)


def test_the_run_checked_its_export_with_the_live_parameter_count(root, whole):
    tokenizer = load_tokenizer(str(root / "tokenizer"))
    expected = load_model(tokenizer, config_file=str(root / "tiny.json")).num_parameters()
    report = json.loads((whole / "export_check.json").read_text())
    assert report["num_parameters"] == expected
    assert report["max_abs_logit_diff"] <= report["tolerance"]


def test_the_checker_passes_a_healthy_export_and_catches_a_truncated_file(whole, probe, tmp_path):
    healthy = check(whole / "export", "--probe", str(probe))
    assert healthy.returncode == 0, healthy.stderr[-2000:]
    assert json.loads(healthy.stdout.strip().splitlines()[-1])["max_abs_logit_diff"] == 0.0

    cut = shutil.copytree(whole / "export", tmp_path / "cut")
    weights = cut / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as f:
        f.truncate(size - 1000)
    result = check(cut)
    assert result.returncode != 0
    assert f"{weights}: {size - 1000} bytes, but its" in result.stderr
    assert f"need {size}: truncated" in result.stderr


def test_the_checker_catches_perturbed_weights_by_their_logits(whole, probe, tmp_path):
    perturbed = shutil.copytree(whole / "export", tmp_path / "perturbed")
    weights = load_file(perturbed / "model.safetensors")
    weights["lm_head.weight"] += 0.01 * torch.randn_like(weights["lm_head.weight"])
    save_file(weights, perturbed / "model.safetensors", metadata={"format": "pt"})
    result = check(perturbed, "--probe", str(probe))
    assert result.returncode != 0
    assert (
        "logits on the probe batch" in result.stderr and "more than the tolerance" in result.stderr
    )


def test_the_checker_catches_empty_partitions_and_a_wrong_parameter_count(whole, tmp_path):
    with pytest.raises(check_export.ExportError, match="parameters, the trained model has 7"):
        check_export.check(whole / "export", num_params=7)
    empty = shutil.copytree(whole / "export", tmp_path / "empty")
    weights = load_file(empty / "model.safetensors")
    weights["model.norm.weight"] = torch.empty(0)  # what an unconsolidated ZeRO-3 module saves
    save_file(weights, empty / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(check_export.ExportError, match="model.norm.weight has shape \\[0\\]"):
        check_export.check(empty)
