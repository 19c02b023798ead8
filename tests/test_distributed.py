"""Process groups on CPU: DeepSpeed's shared-memory all-reduce op is built once by ranks that
start together on a cold cache, and its buffers do not outlive a run."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

from runtime.distributed import free_port
from tests.launch import REPO, env

SCRIPT = """
import torch, torch.distributed as dist
from runtime import distributed
rank, world = distributed.init()
x = torch.tensor([float(rank + 1)])
dist.all_reduce(x)
assert x.item() == world * (world + 1) / 2, x
# the buffers exist: every rank's is mapped here, its name already unlinked
import os
maps = open("/proc/self/maps").read()
port = os.environ["MASTER_PORT"]
for r in range(world):
    assert f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_{r} (deleted)" in maps
"""


def test_shm_buffers_are_removed_and_ranks_exit_cleanly(tmp_path: Path) -> None:
    """DeepSpeed maps a ~70 MB /dev/shm buffer per rank and never unlinks it; `init` unlinks
    them once every rank has mapped them, so a finished run leaves none (and all-reduce works).
    A finished rank exits 0: left undestroyed, the process group aborted about one run in four
    at teardown (status -6), so four runs in a row would rarely all pass without the fix."""
    script = tmp_path / "allreduce.py"
    script.write_text(SCRIPT)
    for _ in range(4):
        port = free_port()
        launcher = ["deepspeed", "--num_gpus", "2", "--master_port", str(port), str(script)]
        result = subprocess.run(
            launcher, cwd=REPO, env=env(PYTHONPATH=str(REPO)), capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        left = list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
        assert left == []


@pytest.mark.slow
def test_ranks_build_the_shm_op_one_at_a_time(tmp_path: Path) -> None:
    """On a cold extension cache (CI's), DeepSpeed JIT-builds its shm op in every rank's
    `init_distributed`, and a CI run once failed with a rank loading a library that another
    had not finished. `init` builds and loads it under a lock beside the build folder: while
    another process holds that lock, both ranks wait and build nothing; once it is free, they
    build and load it in turn and the all-reduce runs."""
    cache = tmp_path / "torch_extensions"  # cold, and no other run's
    cache.mkdir()
    script, log = tmp_path / "allreduce.py", tmp_path / "ranks.log"
    script.write_text(SCRIPT)
    launcher = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), str(script)]
    extra = {"PYTHONPATH": str(REPO), "TORCH_EXTENSIONS_DIR": str(cache)}
    lock = cache / f"{ShareMemCommBuilder.NAME}.lock"
    ranks = None
    try:
        with lock.open("a") as held, log.open("w") as out:
            fcntl.flock(held, fcntl.LOCK_EX)
            ranks = subprocess.Popen(
                launcher,
                cwd=REPO,
                env=env(**extra),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the launcher and its ranks, stopped together on failure
            )
            deadline = time.monotonic() + 600  # imports take minutes on a busy machine
            while log.read_text().count(f"waiting for {lock}") < 2:
                assert not (cache / ShareMemCommBuilder.NAME).exists(), "a rank did not wait"
                assert ranks.poll() is None, f"the ranks did not wait:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no rank waited:\n{log.read_text()[-3000:]}"
                time.sleep(1)
            assert not (cache / ShareMemCommBuilder.NAME).exists()  # nothing built meanwhile
        # The lock is free: one rank builds and loads the op, then the other loads it.
        assert ranks.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        if ranks is not None and ranks.poll() is None:
            os.killpg(ranks.pid, signal.SIGKILL)
            ranks.wait()
    assert (cache / ShareMemCommBuilder.NAME / f"{ShareMemCommBuilder.NAME}.so").is_file()
