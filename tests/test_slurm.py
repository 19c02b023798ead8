"""The SLURM scripts on a real cluster of two nodes: munged, slurmctld and two slurmd daemons on
this machine (slurm/local_cluster.sh), jobs submitted with sbatch from the repository root as
users do, one rank per node (two CPU cores in all).

Skipped where SLURM is not installed (`apt-get install slurm-wlm munge`, as .ci/run does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data_tools.synthetic_math import Difficulty, write_splits
from tests import wandb_files
from tests.launch import REPO, TINY_PIPELINE, env, run
from tests.models import train_config
from tests.slurm_jobs import job, log_tails, sbatch, wait, wait_completed

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("sbatch", "slurmctld", "slurmd", "munged")),
        reason="SLURM is not installed (apt-get install slurm-wlm munge)",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="starting slurmd needs root"),
]

STEPS = 40
TWO_NODES = ["--nodes=2", "--ntasks-per-node=1"]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of jobs and SLURM commands; the cluster is stopped at the end of the
    session, whatever the tests' outcome."""
    scratch = tmp_path_factory.mktemp("slurm")
    script = str(REPO / "slurm/local_cluster.sh")
    started = subprocess.run([script, "start", scratch], capture_output=True, text=True)
    assert started.returncode == 0, f"the local cluster did not start:\n{started.stderr}"
    try:
        yield env(SLURM_CONF=str(scratch / "slurm.conf"))
    finally:
        subprocess.run([script, "stop", scratch], capture_output=True, text=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """Data, a tokenizer and a training config (1M-parameter Llama, fp32)."""
    root = tmp_path_factory.mktemp("slurm_train")
    write_splits(root / "data", {"train": 200, "test": 20}, Difficulty(max_steps=3), seed=1)
    train_config(
        root,
        tokenizer,
        "tiny-llama",
        max_length=256,
        micro_batch_size=4,
        max_steps=STEPS,
        learning_rate=2e-3,
        seed=1,
    )
    return root


def train_args(setup: Path, out: Path, stage: int) -> list[str]:
    config = ["--config", str(setup / "config.yaml"), "--output_dir", str(out)]
    return [*config, "--deepspeed_config", f"ds_configs/zero{stage}.json"]


@pytest.fixture(scope="module")
def one_process(setup: Path) -> Callable[[int], Path]:
    """`python -m train` in one process (its global batch in 2 micro-batches), per ZeRO stage."""
    outs: dict[int, Path] = {}

    def get(stage: int) -> Path:
        if stage not in outs:
            out = setup / f"one_process_zero{stage}"
            run("train", [*train_args(setup, out, stage), "--gradient_accumulation_steps", "2"])
            outs[stage] = out
        return outs[stage]

    return get


@pytest.fixture(scope="module")
def two_nodes(cluster: dict[str, str], setup: Path) -> Callable[[int], Path]:
    """slurm/train.sbatch on two nodes, one rank each, per ZeRO stage."""
    outs: dict[int, Path] = {}

    def get(stage: int) -> Path:
        if stage not in outs:
            out, logs = setup / f"two_nodes_zero{stage}", setup / "logs"
            job_id = sbatch(
                cluster, logs, *TWO_NODES, "slurm/train.sbatch", *train_args(setup, out, stage)
            )
            wait_completed(cluster, [job_id], logs)
            outs[stage] = out
        return outs[stage]

    return get


def losses(out: Path) -> list[float]:
    return [json.loads(line)["train/loss"] for line in (out / "metrics.jsonl").open()]


def assert_same_weights(a: Path, b: Path, rtol: float, atol: float) -> None:
    wa, wb = load_file(a / "export/model.safetensors"), load_file(b / "export/model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(
            wa[name], wb[name], rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_two_node_training_matches_one_process(one_process, two_nodes):
    """ZeRO-2 across nodes (every stage against plain PyTorch is in tests/test_train.py)."""
    single, multi = one_process(2), two_nodes(2)
    assert len(losses(multi)) == STEPS
    torch.testing.assert_close(
        torch.tensor(losses(multi)), torch.tensor(losses(single)), rtol=1e-4, atol=0
    )
    assert_same_weights(multi, single, rtol=1e-4, atol=1e-6)


def test_two_node_generation_matches_one_process(cluster, setup, one_process):
    args = ["--model_name_or_path", str(one_process(2) / "export")]
    args += ["--data", str(setup / "data/test.jsonl"), "--max_new_tokens", "24"]
    args += ["--batch_size", "4", "--do_sample", "true", "--temperature", "0.8", "--seed", "3"]
    run("generate", [*args, "--output", str(setup / "generated_one.jsonl")])
    logs = setup / "logs"
    output = setup / "generated_two.jsonl"
    job_id = sbatch(
        cluster, logs, *TWO_NODES, "slurm/generate.sbatch", *args, "--output", str(output)
    )
    wait_completed(cluster, [job_id], logs)
    assert output.read_bytes() == (setup / "generated_one.jsonl").read_bytes()
    assert len(output.read_text().splitlines()) == 20


@pytest.mark.parametrize("sig", ["USR1", "TERM"])
def test_signalled_training_requeues_and_resumes_as_if_uninterrupted(
    cluster, setup, two_nodes, sig
):
    """SIGUSR1 (as SLURM sends it before the time limit) or SIGTERM (`scancel --signal=TERM`)
    mid-run: a checkpoint, a requeue, a resume; the same final weights as the uninterrupted run,
    one wandb run, and a job waiting on this one (afterok) starts only after the resumed run has
    finished."""
    out, logs = setup / f"signalled_{sig}", setup / "logs"
    args = [*train_args(setup, out, 2), "--wandb_project", "tests"]
    job_id = sbatch(cluster, logs, *TWO_NODES, "slurm/train.sbatch", *args)
    after = sbatch(
        cluster,
        logs,
        f"--dependency=afterok:{job_id}",
        "--kill-on-invalid-dep=yes",
        f"--wrap=test -f {out}/export/model.safetensors",
    )
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 120
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 3:
        assert time.monotonic() < deadline, log_tails(logs, [job_id])
        time.sleep(0.1)
    subprocess.run(["scancel", f"--signal={sig}", job_id], env=cluster, check=True)
    wait_completed(cluster, [job_id, after], logs)

    assert job(cluster, job_id)["Restarts"] == "1"
    batch_log = (logs / f"train-{job_id}.out").read_text()
    assert f"requeueing job {job_id}" in batch_log
    (stopped,) = [d.name for d in (out / "checkpoints").glob("step_*") if d.name != f"step_{STEPS}"]
    stopped_at = int(stopped.removeprefix("step_"))
    assert 3 <= stopped_at < STEPS, "the signal came after the last step"
    assert [json.loads(line)["step"] for line in metrics.open()] == list(range(1, STEPS + 1))
    assert_same_weights(out, two_nodes(2), rtol=1e-6, atol=1e-7)

    # One wandb run (the same id) in two offline parts: the steps before and after the signal.
    # SIGTERM reaches wandb's service process too, which ends at once (wandb/wandb#9963): what
    # it had not yet written of the first part is lost (metrics.jsonl has every step, above).
    parts = sorted((out / "wandb").glob("offline-run-*"))
    assert len(parts) == 2 and len({p.name.split("-")[-1] for p in parts}) == 1
    before, after = (
        [r["_step"] for r in wandb_files.history(p) if "train/loss" in r] for p in parts
    )
    if sig == "USR1":
        assert before == list(range(1, stopped_at + 1))
    else:
        assert before == list(range(1, len(before) + 1)) and len(before) <= stopped_at
        assert "warning: wandb stopped logging" in (logs / f"train-{job_id}.rank0.log").read_text()
    assert after == list(range(stopped_at + 1, STEPS + 1))


def submit_pipeline(cluster: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slurm.submit_pipeline", *TINY_PIPELINE, *args],
        cwd=REPO,
        env=cluster,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pipeline_submitter_chains_stages_and_skips_finished_ones(cluster, tmp_path):
    """A failing stage cancels its dependents; the resubmission skips what is done and runs the
    rest to the report; a third submission submits nothing."""
    run_dir = tmp_path / "compare"
    # RAC covers every kind of stage (SFT, generation, building, training, evaluation); the tiny
    # pipeline with every method runs in tests/test_pipeline.py.
    options = ["--run_dir", str(run_dir), "--nodes", "2", "--gpus_per_node", "1", "--cpu"]
    options += ["--methods", "rac"]
    logs, jobs_file = run_dir / "logs/slurm", run_dir / "logs/slurm/jobs.json"

    # Held, a submission blocks the next one; released, sft_base fails on a missing config.
    first = submit_pipeline(
        cluster, *options, "--deepspeed_config", "missing.json", "--sbatch_args=--hold"
    )
    assert first.returncode == 0, first.stderr
    ids = json.loads(jobs_file.read_text())
    again = submit_pipeline(cluster, *options)
    assert again.returncode != 0 and "still queued or running: data" in again.stderr
    subprocess.run(["scontrol", "release", ",".join(ids.values())], env=cluster, check=True)
    jobs = wait(cluster, list(ids.values()), logs)
    states = {name: jobs[i]["JobState"] for name, i in ids.items()}
    assert states["data"] == states["tokenizer"] == "COMPLETED", log_tails(logs, [ids["data"]])
    assert states["sft_base"] == "FAILED"
    assert {s for name, s in states.items() if name not in ("data", "tokenizer", "sft_base")} == {
        "CANCELLED"
    }, states
    data_made = (run_dir / "data/difficulty.json").stat().st_mtime_ns

    second = submit_pipeline(cluster, *options)
    assert second.returncode == 0, second.stderr
    assert "[done before] data\n" in second.stdout and "[done before] tokenizer\n" in second.stdout
    assert "[submitted] sft_base" in second.stdout and "[submitted] report" in second.stdout
    ids = json.loads(jobs_file.read_text())
    wait_completed(cluster, list(ids.values()), logs, timeout=900)
    assert (run_dir / "data/difficulty.json").stat().st_mtime_ns == data_made
    results = {r["method"]: r for r in json.loads((run_dir / "results.json").read_text())}
    assert set(results) == {"sft_base", "rac", "rac_self_correct"}
    assert all(r["n"] == 24 and r["trained_tokens"] > 0 for r in results.values())
    assert results["rac"]["train_wall_s"] > 0  # the stage jobs' wall times

    third = submit_pipeline(cluster, *options)
    assert third.returncode == 0, third.stderr
    assert "[submitted]" not in third.stdout and "nothing to submit" in third.stdout
    assert json.loads(jobs_file.read_text()) == ids
