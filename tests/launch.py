"""Start an entrypoint the way users do: `python -m X` for one process, the `deepspeed` launcher
for several. Each process gets one thread so that two of them share this machine's two cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runtime.distributed import free_port

REPO = Path(__file__).resolve().parents[1]
# The comparison pipeline in a few minutes: every stage, tiny data, few steps, short answers.
TINY_PIPELINE = [
    *("--config", "configs/compare_demo.yaml"),
    *("--synthetic_sizes", "train=300,validation=24,test=24"),
    *("--micro_batch_size", "8", "--sft_steps", "20", "--method_steps", "6"),
    *("--rac_prompts", "32", "--max_new_tokens", "32"),
]


def command(module: str, args: list[str], nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", module, *args]
    launcher = ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(free_port())]
    return [*launcher, "--module", module, *args]


def env(**extra: str) -> dict[str, str]:
    """This environment, without process-group variables, one thread per process, wandb offline
    and without this process's wandb service (a run started here, as in tests/test_wandb.py,
    sets WANDB_SERVICE; children would log through it instead of a service of their own, which
    hides how a job's own service behaves, e.g. on SIGTERM); an empty value unsets a variable."""
    base = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "offline",
    }
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "WANDB_SERVICE"):
        base.pop(name, None)
    merged = {**base, **extra}
    return {k: v for k, v in merged.items() if v != ""}


def run(
    module: str,
    args: list[str],
    nproc: int = 1,
    timeout: int = 300,
    check: bool = True,
    **extra_env: str,
) -> subprocess.CompletedProcess:
    """Run to the end; on failure (if `check`), raise with the output, which names what went wrong."""
    result = subprocess.run(
        command(module, args, nproc),
        cwd=REPO,
        env=env(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{module} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result
