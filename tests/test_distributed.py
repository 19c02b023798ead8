"""Process groups on CPU: DeepSpeed's shared-memory all-reduce buffers must not outlive a run."""

from __future__ import annotations

import subprocess
from pathlib import Path

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


def test_shm_buffers_are_removed(tmp_path: Path) -> None:
    """DeepSpeed maps a ~70 MB /dev/shm buffer per rank and never unlinks it; `init` unlinks
    them once every rank has mapped them, so a finished run leaves none (and all-reduce works)."""
    script, port = tmp_path / "allreduce.py", free_port()
    script.write_text(SCRIPT)
    launcher = ["deepspeed", "--num_gpus", "2", "--master_port", str(port), str(script)]
    result = subprocess.run(
        launcher, cwd=REPO, env=env(PYTHONPATH=str(REPO)), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    left = list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    assert left == []
