"""Plan mode, the memory estimate against a measurement, and the environment report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_tools.atomic import write_jsonl
from data_tools.config import parse_config
from data_tools.synthetic_math import Difficulty, make_splits
from generate.__main__ import main as generate_main
from runtime import env_report
from runtime.args import DataArgs, ModelArgs
from runtime.ds_config import ConfigError
from runtime.memory import model_states
from runtime.modeling import load_tokenizer
from runtime.planning import count_parameters, model_config
from tests.launch import run
from tests.models import MODELS
from train.args import TrainArgs
from train.dry_run import plan_train

# ~7M parameters with the 512-token vocabulary: model states dominate what the engine holds.
SMALL = {**MODELS["llama-64"], "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 8}


@pytest.fixture(scope="module")
def root(tmp_path_factory, tokenizer) -> Path:
    root = tmp_path_factory.mktemp("dry_run")
    write_jsonl(root / "train.jsonl", make_splits({"train": 40}, Difficulty(), seed=2)["train"])
    tokenizer.save_pretrained(root / "tokenizer")
    (root / "tiny.json").write_text(json.dumps(MODELS["llama-64"]))
    (root / "small.json").write_text(json.dumps(SMALL))
    return root


def common(root: Path) -> list[str]:
    return [
        *("--model_config", str(root / "tiny.json"), "--tokenizer", str(root / "tokenizer")),
        *("--data", str(root / "train.jsonl"), "--max_length", "200"),
    ]


def test_train_dry_run_prints_the_plan_and_writes_nothing(root):
    out = root / "run"
    args = [*common(root), "--output_dir", str(out), "--deepspeed_config", "ds_configs/zero2.json"]
    args += ["--micro_batch_size", "4", "--gradient_accumulation_steps", "2", "--num_epochs", "2"]
    result = run("train", [*args, "--save_every", "2", "--dry_run", "true"], WORLD_SIZE="2")
    text = result.stdout
    assert not out.exists()
    assert '"train_batch_size": 16' in text and '"reduce_bucket_size": 4194304' in text
    assert "global batch: micro 4 x accumulation 2 x world 2 = 16 sequences" in text
    assert "steps: 2 per epoch, 4 in all" in text  # 40 examples // 16, over 2 epochs
    for path in (
        "tokenized/",
        "checkpoints/step_2/",
        "checkpoints/step_4/",
        "export/",
        "metrics.jsonl",
    ):
        assert f"{out}/{path}" in text
    assert "wandb" not in text  # no wandb_project
    assert "model states per rank:" in text and "master" in text

    # A DeepSpeed config that contradicts the run is refused, still without a file written.
    bad = root / "bad.json"
    bad.write_text(json.dumps({"train_batch_size": 64, "zero_optimization": {"stage": 2}}))
    parsed = parse_config((ModelArgs, DataArgs, TrainArgs), [*args, "--deepspeed_config", str(bad)])
    with pytest.raises(ConfigError, match="train_batch_size is 64"):
        plan_train(*parsed)
    assert not out.exists()


def test_generate_dry_run_writes_nothing(root, capsys):
    output = root / "gen" / "out.jsonl"
    args = [*common(root), "--output", str(output), "--batch_size", "8", "--max_new_tokens", "32"]
    args += ["--max_prompt_length", "128"]
    generate_main([*args, "--dry_run", "true"])
    text = capsys.readouterr().out
    assert not output.parent.exists()
    assert "40 to do: 5 batches of 8 per rank" in text
    assert f"{output}.parts/" in text
    with pytest.raises(SystemExit, match="exceed the model's 256 positions"):
        generate_main([*args, "--max_new_tokens", "256", "--dry_run", "true"])


# (stage, precision, processes): ZeRO-2 over 2 ranks checks the partitioning; ZeRO-3 in bf16 the
# mixed-precision master copy.
CASES = [(2, "fp32", 2), (3, "bf16", 1)]


@pytest.mark.parametrize(("stage", "precision", "nproc"), CASES)
def test_memory_estimate_matches_a_measured_engine(
    root, tokenizer, tmp_path, stage, precision, nproc
):
    """Measured: in real processes (tests/measure_memory.py), the DeepSpeed engine that `train`
    builds for a 7M-parameter model, after one optimizer step and the next backward pass (Adam
    states and gradients both exist), as the bytes of every distinct tensor storage alive on
    rank 0 (gc.get_objects(), deduplicated by storage address) that were not alive before the
    model was built. Estimated: runtime/memory.py from the meta-device parameter count, as the
    dry run does. They must agree within 20%."""
    out = tmp_path / "measured.json"
    args = [*("--model_config", str(root / "small.json"), "--tokenizer", str(root / "tokenizer"))]
    args += [*("--deepspeed_config", f"ds_configs/zero{stage}.json", "--precision", precision)]
    run("tests.measure_memory", [*args, "--output", str(out)], nproc)
    measured = json.loads(out.read_text())

    model_args = ModelArgs(model_config=str(root / "small.json"), tokenizer=str(root / "tokenizer"))
    num_params, trainable = count_parameters(
        model_config(load_tokenizer(str(root / "tokenizer")), model_args)
    )
    assert num_params == trainable == measured["num_params"]
    estimate = model_states(
        num_params, trainable, stage=stage, precision=precision, world_size=nproc
    ).device_total
    assert abs(estimate - measured["bytes"]) <= 0.2 * measured["bytes"], (estimate, measured)


def test_memory_table_by_stage():
    """The bytes per parameter of the table in runtime/memory.py, whole-model (W = 1) and over
    4 ranks; offload moves master, Adam and fp32 gradients to CPU memory."""
    per_param = {
        (0, "fp32"): 16,
        (0, "bf16"): 16,
        (1, "fp32"): 4 + 4 / 4 + 12 / 4,
        (2, "bf16"): 2 + 2 / 4 + 12 / 4,
        (3, "fp32"): 16 / 4 + 4 / 4,
        (3, "bf16"): 4 / 4 + 12 / 4,
    }
    for (stage, precision), expected in per_param.items():
        got = model_states(100, 100, stage=stage, precision=precision, world_size=4).device_total
        assert got == pytest.approx(100 * expected), (stage, precision)
    offloaded = model_states(
        100, 100, stage=3, precision="bf16", world_size=4, offload_optimizer=True
    )
    assert offloaded.device_total == pytest.approx(100 * 2 / 4)
    assert offloaded.host_total == pytest.approx(100 * (12 + 4 + 2) / 4)


def test_env_report_names_the_versions(capsys):
    import deepspeed
    import torch
    import transformers

    env_report.main(["--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["packages"]["torch"] == torch.__version__
    assert report["packages"]["deepspeed"] == deepspeed.__version__
    assert report["packages"]["transformers"] == transformers.__version__
    assert report["deepspeed_accelerator"] == "cpu" and "cpu_adam" in report["deepspeed_ops"]
    env_report.main([])
    text = capsys.readouterr().out
    assert f"deepspeed {deepspeed.__version__}" in text and "DeepSpeed ops compatible" in text
