"""Stopping on request, with real processes and real signals: SIGTERM to `python -m train`, to
the `deepspeed` launcher and to `python -m generate` saves the work done, and a rerun ends where
an uninterrupted run ends; SIGTERM to `python -m pipeline` leaves no process of the run behind;
an output in use is refused to a second run, naming the holder.

SIGSTOP holds a run still where a test needs it (mid-run, holding its lock) for as long as the
test needs, however fast or loaded this machine is; SIGCONT lets it go on.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from data_tools.synthetic_math import Difficulty, write_splits
from tests.launch import REPO, TINY_PIPELINE, command, env, run
from tests.models import problems_and_model, train_config

STEPS = 40
STOPPED = 75
HOST = socket.gethostname()


class Started:
    """A command started in its own session, its output in a file."""

    def __init__(self, argv: list[str], log: Path):
        self.log = log
        with log.open("w") as f:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env(),
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, *signums: signal.Signals) -> None:
        for signum in signums:
            self.proc.send_signal(signum)

    def finish(self) -> int:
        return self.proc.wait(timeout=240)

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 240
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"ended ({self.proc.returncode}) before {what}:\n{self.output()}"
                )
            assert time.monotonic() < deadline, f"no {what} after 240 s:\n{self.output()}"
            time.sleep(0.05)


def processes_naming(path: Path) -> list[psutil.Process]:
    """The live processes whose command line names `path` (or a path inside it)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and str(path) in " ".join(
            p.info["cmdline"] or []
        ):
            found.append(p)
    return found


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[list[str], Path], Started]]:
    """`start(argv, folder)`; at the end of the test, also when it fails, whatever is left of
    the command and every process that names `folder` (a launcher's ranks, a pipeline's stages)
    is killed."""
    started: list[tuple[Started, Path]] = []

    def start(argv: list[str], folder: Path) -> Started:
        started.append((Started(argv, tmp_path / f"{len(started)}.log"), folder))
        return started[-1][0]

    yield start
    for run_, folder in started:
        for p in processes_naming(folder):
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        run_.proc.kill()
        run_.proc.wait()


def lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def stop_and_continue(processes: list[psutil.Process]) -> Callable[[], None]:
    """SIGSTOP to `processes`; the function that sends SIGCONT to those still there."""
    for p in processes:
        p.send_signal(signal.SIGSTOP)

    def resume() -> None:
        for p in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGCONT)

    return resume


@pytest.fixture(scope="module")
def root(tmp_path_factory, tokenizer) -> Path:
    root = tmp_path_factory.mktemp("signals")
    write_splits(root / "data", {"train": 400}, Difficulty(max_steps=2), seed=1)
    train_config(root, tokenizer, "llama-32", micro_batch_size=4, max_steps=STEPS)
    return root


def train_args(root: Path, out: Path, nproc: int) -> list[str]:
    """A global batch of 8 sequences, whatever the number of processes; the weights are read
    from the last checkpoint (an export and its check would only add time here)."""
    args = ["--config", str(root / "config.yaml"), "--output_dir", str(out), "--export", "false"]
    return [*args, "--gradient_accumulation_steps", str(2 // nproc)]


@pytest.fixture(scope="module")
def uninterrupted(root) -> Path:
    """The run folder of an uninterrupted run, one process."""
    out = root / "uninterrupted"
    run("train", train_args(root, out, 1))
    return out


def stopped_at(out: Path) -> int:
    """The step of the checkpoint a stopped run saved, asserted to be mid-run."""
    step = int((out / "checkpoints/latest").read_text().removeprefix("step_"))
    assert 2 <= step < STEPS
    return step


def assert_ends_as(out: Path, reference: Path, rtol: float, atol: float) -> None:
    """Every step logged once, and the reference run's final weights (fp32, from ZeRO)."""
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()]
    assert steps == list(range(1, STEPS + 1))
    weights, expected = (
        get_fp32_state_dict_from_zero_checkpoint(str(o / "checkpoints"), f"step_{STEPS}")
        for o in (out, reference)
    )
    assert weights.keys() == expected.keys()
    for name in weights:
        torch.testing.assert_close(weights[name], expected[name], rtol=rtol, atol=atol)


def test_sigterm_to_train_saves_a_checkpoint_and_a_second_trainer_is_refused(
    root, uninterrupted, start
):
    out = root / "sigterm_one"
    first = start(command("train", train_args(root, out, 1)), out)
    first.wait_for(lambda: lines(out / "metrics.jsonl") >= 2, "two steps")
    first.signal(signal.SIGSTOP)  # mid-run, holding the folder

    second = run("train", train_args(root, out, 1), check=False)
    assert second.returncode != 0
    assert f"error: {out} is in use by pid {first.pid} on {HOST}" in second.stderr

    first.signal(signal.SIGTERM, signal.SIGCONT)
    assert first.finish() == STOPPED, first.output()[-3000:]
    step = stopped_at(out)
    assert f"SIGTERM: checkpoint step_{step} saved; exiting with 75" in first.output()
    assert not (out / ".lock").exists()  # removed at exit

    run("train", train_args(root, out, 1))
    assert_ends_as(out, uninterrupted, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_sigterm_to_the_deepspeed_launcher_stops_its_ranks_with_a_checkpoint(
    root, uninterrupted, start
):
    """SIGTERM to `deepspeed` alone, as `kill <pid>` sends it: the launcher passes nothing on;
    its ranks, seeing it gone, checkpoint and exit, and none is left running."""
    out = root / "sigterm_launcher"
    launcher = start(command("train", train_args(root, out, 2), nproc=2), out)
    launcher.wait_for(lambda: lines(out / "metrics.jsonl") >= 2, "two steps")
    ranks = [p for p in processes_naming(out) if "--local_rank=" in " ".join(p.cmdline())]
    assert len(ranks) == 2
    resume = stop_and_continue(ranks)
    launcher.signal(signal.SIGTERM)
    assert launcher.finish() == -signal.SIGTERM
    resume()
    _, alive = psutil.wait_procs(ranks, timeout=240)
    assert not alive
    step = stopped_at(out)
    assert f"checkpoint step_{step} saved; exiting with 75" in launcher.output()

    run("train", train_args(root, out, 2), nproc=2)
    # Against one process: the same global batches, summed in another order.
    assert_ends_as(out, uninterrupted, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_sigterm_to_the_pipeline_reaches_its_stage_and_leaves_no_process(tmp_path, start):
    """SIGTERM to the pipeline alone, mid-training under the `deepspeed` launcher."""
    run_dir = tmp_path / "compare"
    argv = [sys.executable, "-m", "pipeline", *TINY_PIPELINE, "--nproc", "2"]
    argv += ["--run_dir", str(run_dir)]
    pipeline = start(argv, run_dir)
    pipeline.wait_for(lambda: lines(run_dir / "sft_base/metrics.jsonl") >= 1, "a step of sft_base")
    resume = stop_and_continue(psutil.Process(pipeline.pid).children(recursive=True))

    second = subprocess.run(argv, cwd=REPO, env=env(), capture_output=True, text=True)
    assert second.returncode != 0
    assert f"error: {run_dir} is in use by pid {pipeline.pid} on {HOST}" in second.stderr

    pipeline.signal(signal.SIGTERM)
    resume()
    # The launcher was killed by the signal; its status is the stage's.
    assert pipeline.finish() == 128 + signal.SIGTERM, pipeline.output()[-3000:]
    assert "[stopped] sft_base on SIGTERM (exit -15); rerun to resume" in pipeline.output()
    assert processes_naming(run_dir) == []
    # The ranks had the signal too: they saved a checkpoint before they ended.
    assert 1 <= int((run_dir / "sft_base/checkpoints/latest").read_text().split("_")[1]) < 20
    assert not (run_dir / "sft_base/export").exists()


@pytest.fixture(scope="module")
def generation(tmp_path_factory, tokenizer) -> tuple[Path, Callable[[Path], list[str]]]:
    """40 problems, a tiny model, the options of a sampled generation in batches of 2, and its
    uninterrupted output (reference.jsonl)."""
    files = problems_and_model(tmp_path_factory.mktemp("generate"), tokenizer, 40, seed=1)

    def args(output: Path) -> list[str]:
        return [
            *("--model_name_or_path", str(files / "model"), "--data", str(files / "data.jsonl")),
            *("--output", str(output), "--max_new_tokens", "16", "--batch_size", "2"),
            *("--do_sample", "true", "--temperature", "0.8", "--seed", "3"),
        ]

    run("generate", args(files / "reference.jsonl"))
    return files, args


def test_sigterm_to_generate_keeps_its_parts_and_a_rerun_completes_them(generation, start):
    files, args = generation
    out = files / "stopped.jsonl"
    part = Path(f"{out}.parts/part-0.jsonl")
    first = start(command("generate", args(out)), out)
    first.wait_for(lambda: lines(part) >= 2, "two generations")
    first.signal(signal.SIGSTOP)

    second = run("generate", args(out), check=False)
    assert second.returncode != 0
    assert f"error: {out} is in use by pid {first.pid} on {HOST}" in second.stderr

    first.signal(signal.SIGTERM, signal.SIGCONT)
    assert first.finish() == STOPPED, first.output()[-3000:]
    assert "SIGTERM: rank 0 stopped between batches" in first.output()
    assert not out.exists()
    text = part.read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert text.endswith("\n") and 2 <= len(rows) < 40 and len(rows) % 2 == 0  # whole batches

    rerun = run("generate", args(out))
    assert f"{len(rows)} done before, {40 - len(rows)} to generate" in rerun.stdout + rerun.stderr
    assert out.read_bytes() == (files / "reference.jsonl").read_bytes()
