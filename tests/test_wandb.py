"""wandb, read back from the offline run files of the real entrypoints: every stage in one group
with its job type; the scores as summary metrics and a table of sample generations; the exported
model and the generation files as artifacts, checked against the files' own MD5s; the
exposure-bias plot and curve; the pipeline report; and the plan passing the group to every
stage that logs."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path

import matplotlib.image
import pytest

from data_tools.config import parse_config
from data_tools.synthetic_math import Difficulty, write_splits
from generate.exposure_bias import main as exposure_bias
from generate.score import main as score
from pipeline.args import PipelineArgs
from pipeline.plan import build_plan
from pipeline.report import report, track
from runtime.tracking import Tracker
from tests import wandb_files
from tests.launch import REPO, command, env
from tests.models import save_tiny_model

PROJECT, GROUP, SAMPLES = "tests", "wandb-test-group", 5


def md5(path: Path) -> str:
    """A file's digest as wandb's manifests write it: base64 of its MD5."""
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def offline_run(id_file: Path) -> Path:
    """The offline run folder of the run whose id is kept in `id_file`."""
    (folder,) = id_file.parent.glob(f"wandb/offline-run-*-{id_file.read_text().strip()}")
    return folder


def logging(name: str) -> list[str]:
    return ["--wandb_project", PROJECT, "--wandb_group", GROUP, "--run_name", name]


def png(path: Path) -> tuple[int, ...]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    return matplotlib.image.imread(path).shape


def finish(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, f"{process.args}:\n{out[-3000:]}\n{err[-5000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A run folder as the pipeline lays it out, every stage logging offline: train (4 steps) runs
    while a tiny random model is asked 8 validation problems (generate), the answers scored and
    its exposure bias measured on 4 of them; then the report."""
    root = tmp_path_factory.mktemp("wandb")
    write_splits(root / "data", {"train": 48, "validation": 8}, Difficulty(max_steps=2), seed=4)
    tokenizer.save_pretrained(root / "tokenizer")
    model = save_tiny_model(tokenizer, root / "model", eos_boost=6)
    run_dir, validation = root / "run", str(root / "data/validation.jsonl")
    generations = run_dir / "eval/test/sft.jsonl"
    # wandb's own files (staged table artifacts) in the test's folder, not in the home folder.
    wandb_env = {f"WANDB_{d}_DIR": str(root / d.lower()) for d in ("DATA", "CACHE", "CONFIG")}
    train_args = [
        *("--model_config", "configs/models/tiny-llama.json"),
        *("--tokenizer", str(root / "tokenizer"), "--output_dir", str(run_dir / "sft")),
        *("--data", str(root / "data/train.jsonl"), "--eval_data", validation),
        *("--max_steps", "4", "--eval_every", "2", "--micro_batch_size", "4"),
        *("--max_length", "128", "--precision", "fp32", "--learning_rate", "1e-3"),
        *logging("sft"),
    ]
    generate_args = [
        *("--model_name_or_path", str(model), "--data", validation),
        *("--output", str(generations), "--max_new_tokens", "16", "--precision", "fp32"),
        *logging("eval_test_sft"),
    ]
    started = [
        subprocess.Popen(
            command(module, args),
            cwd=REPO,
            env=env(**wandb_env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for module, args in (("train", train_args), ("generate", generate_args))
    ]
    try:
        finish(started[1])
        with pytest.MonkeyPatch.context() as patch:
            for k, v in {**wandb_env, "WANDB_MODE": "offline", "WANDB_CONSOLE": "off"}.items():
                patch.setenv(k, v)
            score(
                ["--generations", str(generations), "--task", "math"]
                + ["--wandb_samples", str(SAMPLES)]
                + logging("score_test_sft")
            )
            exposure_bias(
                [
                    *("--model_name_or_path", str(model), "--data", validation, "--limit", "4"),
                    *("--output_dir", str(run_dir / "exposure_bias"), "--max_positions", "12"),
                    *logging("exposure_bias_sft"),
                ]
            )
            finish(started[0])
            rows = report(run_dir, run_dir, {"sft": generations}, ["sft"], {"sft": 1.0})
            with Tracker(PROJECT, str(run_dir), {}, "report", "report", GROUP) as tracker:
                track(rows, run_dir, tracker)
    finally:  # a failure above leaves no process behind
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()
    return run_dir


def test_train_logs_its_group_job_type_and_exported_model(runs: Path) -> None:
    folder = offline_run(runs / "sft/wandb_run_id")
    record = wandb_files.run_record(folder)
    assert (record.project, record.run_group, record.job_type) == (PROJECT, GROUP, "train")
    assert record.display_name == "sft"
    # The export by reference: every file of it, with its own MD5, nothing copied.
    (model,) = wandb_files.artifacts(folder)
    export = runs / "sft/export"
    assert model["type"] == "model" and model["name"] == f"model-{GROUP}-sft"
    assert model["files"] == {
        f"export/{f.name}": {
            "digest": md5(f),
            "ref": f.resolve().as_uri(),
            "size": f.stat().st_size,
        }
        for f in export.iterdir()
    }
    assert "model.safetensors" in {f.name for f in export.iterdir()}
    local = [json.loads(line) for line in (runs / "sft/metrics.jsonl").open()]
    logged = [r for r in wandb_files.history(folder) if "train/loss" in r]
    assert [r["train/loss"] for r in logged] == pytest.approx([r["train/loss"] for r in local])
    assert png(runs / "sft/learning_curve.png")[0] > 300


def test_generate_logs_its_file(runs: Path) -> None:
    generations = runs / "eval/test/sft.jsonl"
    folder = offline_run(Path(f"{generations}.wandb_run_id"))
    record = wandb_files.run_record(folder)
    assert (record.run_group, record.job_type, record.display_name) == (
        GROUP,
        "generate",
        "eval_test_sft",
    )
    (artifact,) = wandb_files.artifacts(folder)
    assert artifact["type"] == "generations"
    assert {p: f["digest"] for p, f in artifact["files"].items()} == {"sft.jsonl": md5(generations)}
    assert wandb_files.summary(folder)["examples"] == 8


def test_score_logs_summary_metrics_samples_and_files(runs: Path) -> None:
    generations = runs / "eval/test/sft.jsonl"
    summary_file = runs / "eval/test/sft.summary.json"
    folder = offline_run(Path(f"{summary_file}.wandb_run_id"))
    record = wandb_files.run_record(folder)
    assert (record.run_group, record.job_type) == (GROUP, "score")
    expected = json.loads(summary_file.read_text())
    logged = wandb_files.summary(folder)
    assert logged["exact_match"] == expected["exact_match"]
    assert [logged["exact_match_ci_low"], logged["exact_match_ci_high"]] == expected[
        "exact_match_ci"
    ]
    assert (logged["n"], logged["correct"]) == (8, expected["correct"])
    # The table: the first rows of the generation file, with each one's score.
    table = wandb_files.table(folder, "samples")
    rows = [json.loads(line) for line in generations.open()][:SAMPLES]
    scored = [json.loads(line) for line in summary_file.with_suffix(".examples.jsonl").open()]
    assert table["columns"] == [
        "id",
        "prompt",
        "reference",
        "generation",
        "prediction",
        "answer",
        "correct",
    ]
    assert table["data"] == [
        [
            r["id"],
            r["prompt"],
            r["reference"],
            r["generation"],
            s["prediction"],
            s["answer"],
            s["correct"],
        ]
        for r, s in zip(rows, scored, strict=False)
    ]
    (artifact,) = [a for a in wandb_files.artifacts(folder) if a["type"] == "generations"]
    files = [generations, summary_file, summary_file.with_suffix(".examples.jsonl")]
    assert {p: f["digest"] for p, f in artifact["files"].items()} == {f.name: md5(f) for f in files}


def test_exposure_bias_logs_its_plot_curve_and_table(runs: Path) -> None:
    out = runs / "exposure_bias"
    folder = offline_run(out / "wandb_run_id")
    assert wandb_files.run_record(folder).job_type == "exposure_bias"
    result = json.loads((out / "exposure_bias.json").read_text())
    kind, image = wandb_files.media(folder, "exposure_bias/plot")
    assert kind == "image-file" and image.read_bytes() == (out / "exposure_bias.png").read_bytes()
    table = wandb_files.table(folder, "exposure_bias/table")
    by_column = dict(zip(table["columns"], zip(*table["data"], strict=True), strict=True))
    assert list(by_column["position"]) == result["position"]
    assert list(by_column["free_running_accuracy"]) == result["free_running"]["accuracy"]
    assert list(by_column["gap_cumulative_loss"]) == result["gap"]["cumulative_loss"]
    # The line plot's table: one (position, regime, accuracy) row per point.
    curve = wandb_files.table(folder, "exposure_bias/accuracy_table")
    assert sorted(curve["data"]) == sorted(
        [x, regime, y]
        for regime in ("teacher_forced", "free_running")
        for x, y in zip(result["position"], result[regime]["accuracy"], strict=True)
    )
    logged = wandb_files.summary(folder)
    assert logged["cumulative_accuracy_gap"] == result["gap"]["cumulative_accuracy"][-1]


def test_report_logs_results_and_plots(runs: Path) -> None:
    folder = offline_run(runs / "wandb_run_id")
    assert wandb_files.run_record(folder).job_type == "report"
    (row,) = json.loads((runs / "results.json").read_text())
    assert wandb_files.summary(folder)["sft/exact_match"] == row["exact_match"]
    table = wandb_files.table(folder, "results/table")
    logged = dict(zip(table["columns"], table["data"][0], strict=True))
    assert [logged["exact_match_ci_low"], logged["exact_match_ci_high"]] == row["exact_match_ci"]
    assert logged["trained_tokens"] == row["trained_tokens"]
    for key, png_file in (
        ("results/plot", "results.png"),
        ("learning_curves", "learning_curves.png"),
    ):
        kind, image = wandb_files.media(folder, key)
        assert image.read_bytes() == (runs / png_file).read_bytes()
        assert png(image)[0] > 300


def test_the_plan_gives_every_logging_stage_the_group(tmp_path) -> None:
    argv = ["--config", "configs/compare_demo.yaml", "--run_dir", str(tmp_path / "cmp")]
    (quiet,) = parse_config((PipelineArgs,), argv)
    assert not any("--wandb_project" in s.args for s in build_plan(quiet).stages)
    (args,) = parse_config((PipelineArgs,), [*argv, "--wandb_project", "p"])
    plan = build_plan(args)
    logging_modules = {"train", "generate", "generate.score"}
    for stage in plan.stages:
        if stage.module in logging_modules:
            i = stage.args.index("--wandb_project")
            expected = ("--wandb_project", "p", "--wandb_group", "cmp", "--run_name", stage.name)
            assert stage.args[i : i + 6] == expected, stage.name
        else:
            assert "--wandb_project" not in stage.args
    # Every evaluation is scored by its own stage.
    scores = {s.name: s.output for s in plan.stages if s.module == "generate.score"}
    assert scores == {
        f"score_test_{m}": p.with_suffix(".summary.json") for m, p in plan.evaluations.items()
    }
