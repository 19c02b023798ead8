"""The whole comparison on a tiny configuration, every method and DPO after RAC, every diagnostic,
one process a stage: killed once its first generation stage is done, then rerun, it redoes nothing that was
finished and completes the report; a third run has nothing to do. (Stages under the `deepspeed`
launcher: tests/test_signals.py and, on two nodes, tests/test_slurm.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline.__main__ import last_progress
from tests.launch import REPO, TINY_PIPELINE, env, run

pytestmark = pytest.mark.slow

TINY = [
    *(*TINY_PIPELINE, "--nproc", "1", "--dpo_after", "rac", "--dpo_steps", "4"),
    *("--rac_rounds", "2"),  # the second round's drafts by the first round's model
    # A length-shifted split of 8 problems, every model evaluated on it too (a report column).
    *("--synthetic_sizes", "train=300,validation=24,test=24,shifted_size=8"),
    *("--shifted_steps", "6-7", "--eval_splits", "test_6to7"),
    # Every diagnostic a stage of every evaluated model.
    *("--diagnostics", "exposure_bias,error_propagation,error_injection"),
    *("--diagnostic_examples", "4"),
]
FINISHED_BEFORE_KILL = {
    "data": "data/difficulty.json",
    "tokenizer": "tokenizer/tokenizer.json",
    "sft_base": "sft_base/export/model.safetensors",
    "bash_predictions_1": "bash/round1_predictions.jsonl",
}


def start(run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *TINY, "--run_dir", str(run_dir)],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_pipeline_resumes_after_kill(tmp_path: Path) -> None:
    run_dir = tmp_path / "compare"
    first = start(run_dir)
    timings = run_dir / "timings.json"
    deadline = time.monotonic() + 600
    # The generation stage is done when the pipeline has recorded its time.
    while not timings.exists() or "bash_predictions_1" not in json.loads(timings.read_text()):
        assert first.poll() is None, f"pipeline ended early:\n{first.stdout.read()}"
        assert time.monotonic() < deadline, "the generation stage did not finish in time"
        time.sleep(0.2)
    # A crash of everything: the pipeline and its stage's processes (each stage has a session
    # of its own). Stopped first, the pipeline starts no stage while they are found.
    os.killpg(first.pid, signal.SIGSTOP)
    for p in psutil.Process(first.pid).children(recursive=True):
        p.kill()
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = {name: (run_dir / f).stat().st_mtime_ns for name, f in FINISHED_BEFORE_KILL.items()}

    second = subprocess.run(
        [sys.executable, "-m", "pipeline", *TINY, "--run_dir", str(run_dir)],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for name, file in FINISHED_BEFORE_KILL.items():
        assert f"[done before] {name}\n" in second.stdout
        assert (run_dir / file).stat().st_mtime_ns == before[name], f"{name} was redone"
    assert "[running] bash_round1" in second.stdout
    # The bar on stderr: the running stage's own progress (train's loss), and every stage done.
    assert "loss=" in second.stderr
    assert re.search(r"\| (\d+)/\1 \[", second.stderr), second.stderr[-2000:]

    results = {r["method"]: r for r in json.loads((run_dir / "results.json").read_text())}
    assert list(results) == ["sft_base", "sft", "bash", "rac", "scs", "rac+dpo", "rac_self_correct"]
    for r in results.values():
        assert r["n"] == 24 and 0 <= r["exact_match"] <= 1 and r["trained_tokens"] > 0
        low, high = r["exact_match_ci"]
        assert low <= r["exact_match"] <= high
        shifted = r["splits"]["test_6to7"]
        assert shifted["n"] == 8 and set(shifted["by_steps"]) <= {"6", "7"}
    assert (run_dir / "results.png").stat().st_size > 10_000
    table = (run_dir / "results.md").read_text()
    assert "| bash |" in table and "| rac+dpo |" in table
    assert table.startswith("| method | exact match | test_6to7 | trained tokens |")
    # Every stage ran exactly once over the two runs: its time was recorded once and kept.
    assert set(FINISHED_BEFORE_KILL) <= set(json.loads(timings.read_text()))

    # The diagnostics: of every model on every split, from the report split's first 4 problems.
    for split in ("test", "test_6to7"):
        for model in results:
            out = run_dir / "diagnostics" / split / model / "error_propagation"
            propagation = json.loads((out / "error_propagation.json").read_text())
            assert propagation["generations"] == str(run_dir / "eval" / split / f"{model}.jsonl")
    for model in set(results) - {"rac_self_correct"}:
        out = run_dir / "diagnostics/test" / model
        curve = json.loads((out / "exposure_bias/exposure_bias.json").read_text())
        assert curve["examples"] == 4
        injection = json.loads((out / "error_injection/error_injection.json").read_text())
        assert [s["step"] for s in injection["per_step"]] == [1, 2, 3]

    # DPO's cost from the SFT base: RAC's, then the pairs, the reference and DPO's own steps.
    dpo, rac = results["rac+dpo"], results["rac"]
    assert dpo["trained_tokens"] > rac["trained_tokens"]
    assert dpo["forward_sequences"] > rac["forward_sequences"]
    assert dpo["train_wall_s"] > rac["train_wall_s"] > 0
    assert 0 <= dpo["preference_accuracy"] <= 1  # on the held-out pairs, at the end
    # RAC's two rounds: the second drafted by the first's model, each trained half the steps.
    drafts = [
        json.loads((run_dir / f"rac/round{r}_drafts.jsonl").open().readline()) for r in (1, 2)
    ]
    assert drafts[0]["model_fingerprint"] != drafts[1]["model_fingerprint"]
    for r in (1, 2):
        rows = [json.loads(line) for line in (run_dir / f"rac/round{r}/metrics.jsonl").open()]
        assert [row["step"] for row in rows if "train/loss" in row] == [1, 2, 3]
    steps = [json.loads(line) for line in (run_dir / "rac+dpo/metrics.jsonl").open()]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and "train/reward_margin" in steps[0]

    third = run("pipeline", [*TINY, "--run_dir", str(run_dir)], timeout=300)
    assert "[running]" not in third.stdout
    for stage in ("dpo_samples", "dpo_pairs", "dpo_reference_rac", "rac+dpo", "eval_test_rac+dpo"):
        assert f"[done before] {stage}\n" in third.stdout


def test_last_progress_is_the_last_redrawn_line(tmp_path: Path) -> None:
    log = tmp_path / "stage.log"
    log.write_text("loading\n 0%|  | 0/60 [00:00<?]\r 53%|#####3    | 32/60 [01:35<01:23]\r\n\n")
    assert last_progress(log) == "53%|#####3    | 32/60 [01:35<01:23]"
    log.write_text("x" * 5000)
    assert last_progress(log, width=10) == "..." + "x" * 10
    log.write_text("")
    assert last_progress(log) == ""
