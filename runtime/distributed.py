"""Process groups for runs started by the `deepspeed` launcher, SLURM's `srun` (through
slurm/ranks.sh, which sets the same variables), or plain `python`."""

from __future__ import annotations

import os
import socket

import deepspeed
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init() -> tuple[int, int]:
    """Join (or, for a plain `python` run, create) the process group; return (rank, world size).

    A plain run inside a SLURM job (which sets SLURM_PROCID for its batch script too) is still
    one process: only RANK says that there are several."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if get_accelerator().device_name() != "cpu":
        get_accelerator().set_device(local_rank)
    return dist.get_rank(), dist.get_world_size()


def device() -> str:
    name = get_accelerator().device_name()
    return name if name == "cpu" else f"{name}:{int(os.environ.get('LOCAL_RANK', '0'))}"


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
