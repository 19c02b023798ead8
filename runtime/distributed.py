"""Process groups for runs started by the `deepspeed` launcher, SLURM's `srun` (through
slurm/ranks.sh, which sets the same variables), or plain `python`."""

from __future__ import annotations

import atexit
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import deepspeed
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from torch.utils.cpp_extension import get_default_build_root

from runtime.lock import exclusive


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
    _load_shm_op()
    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())
    atexit.register(_destroy)
    _unlink_shm_buffer()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if get_accelerator().device_name() != "cpu":
        get_accelerator().set_device(local_rank)
    return dist.get_rank(), dist.get_world_size()


def _load_shm_op() -> None:
    """Build (on first use) and load DeepSpeed's shared-memory all-reduce op, one process at a
    time, before `deepspeed.init_distributed` asks for it.

    DeepSpeed JIT-builds it on CPU in every rank's `init_distributed`, before any process group
    exists (deepspeed/comm/torch.py: `TorchBackend.__init__` calls `build_shm_op`, which calls
    `ShareMemCommBuilder().load()`, i.e. `torch.utils.cpp_extension.load`), so no barrier can
    order the ranks. Torch's own guard (a lock file in the build folder, `FileBaton`) covers the
    build only: a rank that waited on it loads the library as soon as the builder lets go, built
    or not (a failed build leaves none, or half of one), and a rank that gets it later runs the
    build again (ninja: a no-op only if nothing looks out of date) in the folder another rank
    is loading from. A lock held across build and load, in the extensions folder that every
    process of the node shares (on NFS, of every node), orders them: the first builds and
    loads; the others find it built, or build it themselves if that failed. DeepSpeed's own
    call then returns the op loaded here (op builders cache loaded ops per process)."""
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return  # DeepSpeed does without it too
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    with exclusive(Path(root, f"{builder.name}.lock")):
        builder.load()


def _destroy() -> None:
    """Destroy the process group at exit, while Python is still whole. Left to the interpreter's
    teardown, Gloo's worker threads can outlive it and abort the process ("terminate called
    without an active exception", status -6, which the launcher reports as the job's failure;
    pytorch/pytorch#190489): a finished run, or one stopped to resume, must exit with its own
    status. Not after an uncaught exception (the interpreter has set `sys.last_value`): other
    ranks may still be in a collective with this one, and torchtitan destroys on success only."""
    if dist.is_initialized() and getattr(sys, "last_value", None) is None:
        dist.destroy_process_group()


def _unlink_shm_buffer() -> None:
    """DeepSpeed's CPU all-reduce between local ranks maps one /dev/shm buffer per rank (about
    70 MB) and never removes it, so every run would leave its buffers in RAM. Once every rank
    has mapped every buffer (init maps them all; then the barrier), the names are not needed:
    unlinking them now frees the memory when the processes exit, also after a crash."""
    if get_accelerator().device_name() != "cpu" or dist.get_world_size() == 1:
        return
    dist.barrier()
    name = "_".join(
        [
            "deepspeed_allreduce_buffer",
            str(os.getuid()),
            os.environ.get("MASTER_ADDR", ""),
            os.environ.get("MASTER_PORT", ""),
            str(dist.get_rank()),
        ]
    )
    Path("/dev/shm", name).unlink(missing_ok=True)


def device() -> str:
    name = get_accelerator().device_name()
    return name if name == "cpu" else f"{name}:{int(os.environ.get('LOCAL_RANK', '0'))}"


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def on_main(fn: Callable[[], None]) -> None:
    """Run `fn` on rank 0 only, the others waiting; if it raises, every rank raises (the others
    with rank 0's message), rather than the others waiting for rank 0 forever."""
    _run_on(is_main(), fn, "rank 0")


def on_local_main(fn: Callable[[], None]) -> None:
    """Run `fn` on each node's local rank 0, the other ranks waiting: work whose result the
    processes of a node share through its disk (the tokenized data). If it raises on any node,
    every rank raises (the others with that node's message)."""
    _run_on(
        not dist.is_initialized() or int(os.environ.get("LOCAL_RANK", "0")) == 0,
        fn,
        "a local rank 0",
    )


def _run_on(chosen: bool, fn: Callable[[], None], who: str) -> None:
    """Run `fn` where `chosen`, every rank waiting for all; a failure anywhere is raised on every
    rank (as itself where it happened, else as a RuntimeError with its message)."""
    error, message = None, None
    if chosen:
        try:
            fn()
        except Exception as e:
            error, message = e, f"{type(e).__name__}: {e}"
    if dist.is_initialized() and dist.get_world_size() > 1:
        messages: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(messages, message)
        failed = next((m for m in messages if m is not None), None)
        if error is None and failed is not None:
            raise RuntimeError(f"{who} failed: {failed}")
    if error is not None:
        raise error
