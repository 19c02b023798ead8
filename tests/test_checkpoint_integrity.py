"""Checkpoints that prove themselves, with real `train` runs of a tiny model: each checkpoint's
manifest vouches for its files, a damaged latest checkpoint is named and passed over for the
newest one that verifies (the run then ends as the uninterrupted one), a torn last line of
metrics.jsonl is dropped, and a resume with options that change what a step means is refused."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from data_tools.atomic import write_jsonl, write_text
from data_tools.synthetic_math import Difficulty, write_splits
from tests.launch import run
from tests.models import train_config
from train.__main__ import _truncate_metrics

STEPS, SAVE_EVERY, LR = 4, 2, 3e-3
OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"
MODEL = "mp_rank_00_model_states.pt"


@pytest.fixture(scope="module")
def root(tmp_path_factory, tokenizer) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    write_splits(root / "data", {"train": 64}, Difficulty(max_steps=2), seed=1)
    train_config(
        root,
        tokenizer,
        "llama-32",
        micro_batch_size=4,
        max_steps=STEPS,
        save_every=SAVE_EVERY,
        learning_rate=LR,
        warmup_steps=1,
        export=False,  # the weights are compared in the checkpoints
    )
    return root


def train(root: Path, out: Path, *extra: str, check: bool = True):
    args = ["--config", str(root / "config.yaml"), "--output_dir", str(out), *extra]
    result = run("train", args, timeout=900, check=check)  # 2 shared cores may be busy
    return result, [json.loads(line) for line in (out / "metrics.jsonl").open()]


@pytest.fixture(scope="module")
def finished(root) -> Path:
    """One uninterrupted run: checkpoints step_2 and step_4 (latest)."""
    out = root / "finished"
    train(root, out)
    return out


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    return shutil.copytree(finished, tmp_path / "run")


def weights(out: Path) -> dict[str, torch.Tensor]:
    """The fp32 master weights of the run's last checkpoint."""
    return get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints"), f"step_{STEPS}")


def assert_same_run(out: Path, finished: Path) -> None:
    """The same losses and final weights as the uninterrupted run."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    reference = [json.loads(line) for line in (finished / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["train/loss"] for r in rows] == pytest.approx(
        [r["train/loss"] for r in reference], rel=1e-6
    )
    ours, theirs = weights(out), weights(finished)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-6, atol=1e-7)


def test_each_checkpoint_has_a_manifest_of_its_files_and_records_its_run(finished):
    for tag in ("step_2", "step_4"):
        folder = finished / "checkpoints" / tag
        files = json.loads((folder / "manifest.json").read_text())["files"]
        names = sorted(p.name for p in folder.iterdir() if p.name != "manifest.json")
        assert sorted(files) == names == sorted([MODEL, OPTIM, "rng_rank0.pt", "run_state.json"])
        for name, entry in files.items():
            data = (folder / name).read_bytes()
            assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        state = json.loads((folder / "run_state.json").read_text())
        assert state["micro_batch_size"] == 4 and state["gradient_accumulation_steps"] == 1
        assert state["run"]["learning_rate"] == LR and state["run"]["global_batch_size"] == 4


def truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def overwrite_4k(path: Path) -> None:
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(bytes(4096))


def step_4(name: str) -> Path:
    return Path("checkpoints/step_4") / name


# What is damaged in the latest checkpoint (step_4), how, and what the output must say of it.
DAMAGE: dict[str, tuple[Path, Callable[[Path], None], str]] = {
    "truncated model file": (step_4(MODEL), truncate, "bytes, its manifest says"),
    "truncated optimizer file": (step_4(OPTIM), truncate, "bytes, its manifest says"),
    "4 KB overwritten in the optimizer file": (step_4(OPTIM), overwrite_4k, "sha256 differs"),
    "missing random state": (step_4("rng_rank0.pt"), Path.unlink, "missing"),
    "latest names a missing folder": (step_4(""), shutil.rmtree, "missing"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_named_and_the_previous_one_resumed(damage, finished, copy, root):
    path, spoil, says = DAMAGE[damage]
    spoil(copy / path)
    result, _ = train(root, copy)
    assert f"{copy / path}: " in result.stderr and says in result.stderr
    assert f"resuming from {copy / 'checkpoints/step_2'}, the newest" in result.stderr
    assert "steps 2 -> 4" in result.stdout
    assert_same_run(copy, finished)


def test_with_no_checkpoint_that_verifies_the_run_says_so_and_starts_afresh(finished, copy, root):
    for tag in ("step_2", "step_4"):
        (copy / "checkpoints" / tag / "manifest.json").unlink()
    result, _ = train(root, copy)
    for tag in ("step_2", "step_4"):
        assert f"{copy / 'checkpoints' / tag / 'manifest.json'}: missing" in result.stderr
    assert "THIS RUN STARTS AFRESH FROM STEP 0" in result.stderr
    assert "steps 0 -> 4" in result.stdout
    assert_same_run(copy, finished)


def test_a_torn_last_metrics_line_is_dropped_on_resume(finished, copy, root):
    """A crash while step 4's row was written, with step_2 the latest checkpoint."""
    metrics = copy / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join(lines[:3]) + lines[3][:20])
    write_text(copy / "checkpoints/latest", "step_2")
    shutil.rmtree(copy / "checkpoints/step_4")
    result, _ = train(root, copy)
    assert f"warning: {metrics}:4: the last line was cut short" in result.stderr
    assert "steps 2 -> 4" in result.stdout
    assert_same_run(copy, finished)


def test_a_malformed_metrics_line_before_the_last_is_an_error_naming_it(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(ValueError, match=f"{metrics}:2: not a metrics row"):
        _truncate_metrics(metrics, 3)
    write_jsonl(metrics, [{"step": 1}, {"step": 2}])
    _truncate_metrics(metrics, 1)
    assert metrics.read_text() == '{"step": 1}\n'


def files(folder: Path) -> dict[Path, bytes]:
    """Every file's content; not the dot-files a run holds while it lives (its lock)."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name[0] != "."}


def test_a_resume_with_other_options_is_refused_with_what_differs(copy, root):
    """Another learning rate, mode and data at once (one process): each is named, nothing is
    written."""
    fewer = root / "fewer.jsonl"
    fewer.write_text("".join((root / "data/train.jsonl").open().readlines()[:-1]))
    before = files(copy)
    other = ["--learning_rate", "0.001", "--mode", "scs", "--data", str(fewer)]
    result, _ = train(root, copy, *other, check=False)
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {copy / 'checkpoints/step_4'} was saved by a run with other")
    for difference in [
        "learning_rate 0.003 -> 0.001",
        "mode 'sft' -> 'scs'",
        "data 'sha256 ",
        "training_examples 64 -> 63",
    ]:
        assert difference in error
    assert "new output_dir" in error
    assert files(copy) == before


def test_a_full_disk_is_named_and_the_run_resumes_once_space_is_freed(finished, root, small_disk):
    """Room for the first checkpoint but not for the second beside it: the save fails with the
    path named, `latest` stays on step_2, and with room again the rerun ends as the
    uninterrupted run."""
    checkpoint = sum(p.stat().st_size for p in (finished / "checkpoints/step_2").rglob("*"))
    small_disk.resize(int(1.5 * checkpoint) + (128 << 10))  # + metrics, DeepSpeed's scripts
    out = small_disk.path / "run"
    result, _ = train(root, out, check=False)
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {out / 'checkpoints/step_4'}: the checkpoint could not be")
    assert "the disk is full" in error and "Traceback" not in result.stderr, result.stderr
    assert (out / "checkpoints/latest").read_text().strip() == "step_2"
    small_disk.resize(4 * checkpoint + (4 << 20))
    result, _ = train(root, out)
    assert "steps 2 -> 4" in result.stdout
    assert_same_run(out, finished)
