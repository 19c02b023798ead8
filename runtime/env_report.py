"""The environment in one block to paste into a bug report: versions, devices, DeepSpeed's
accelerator and ops, the variables that change a run.

    python -m runtime.env_report          # plain text
    python -m runtime.env_report --json

The DeepSpeed op table is `ds_report`'s own (deepspeed.env_report's probes), gathered as data.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.env_report import (
    ALL_OPS,
    accelerator_name,
    get_shm_size,
    installed_ops,
    probe_is_compatible,
)

from data_tools.config import parse_config
from data_tools.errors import run_tool

PACKAGES = ("torch", "deepspeed", "transformers", "datasets", "peft", "accelerate", "wandb")
VARIABLES = (
    *("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"),
    *("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "DS_ACCELERATOR", "NCCL_DEBUG"),
    *("OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "HF_HOME", "HF_HUB_OFFLINE"),
    *("WANDB_MODE", "WANDB_PROJECT", "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS"),
)


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def devices() -> list[dict[str, Any]]:
    """The CUDA/ROCm devices torch sees, with their memory; none on a CPU-only machine."""
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append(
            {"index": i, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}
        )
    return out


def report() -> dict[str, Any]:
    accelerator = get_accelerator()
    return {
        "python": sys.version.split()[0],
        "packages": {p: _version(p) for p in PACKAGES},
        "backend": (
            f"ROCm {torch.version.hip}"
            if torch.version.hip
            else f"CUDA {torch.version.cuda}"
            if torch.version.cuda
            else "CPU"
        ),
        "devices": devices(),
        "deepspeed_accelerator": accelerator._name,
        "communication_backend": accelerator.communication_backend_name(),
        "deepspeed_ops": {
            name: {
                "installed": bool(installed_ops.get(name))
                and accelerator_name == accelerator._name,
                "compatible": bool(probe_is_compatible(builder, False)),
            }
            for name, builder in ALL_OPS.items()
        },
        "os": platform.platform(),
        "cpus": os.cpu_count(),
        "shm": str(get_shm_size()[0]),
        "environment": {v: os.environ[v] for v in VARIABLES if v in os.environ},
    }


def as_text(r: dict[str, Any]) -> str:
    lines = [f"python {r['python']}"]
    lines += [f"{p} {v or 'not installed'}" for p, v in r["packages"].items()]
    lines.append(
        f"backend {r['backend']}; DeepSpeed accelerator {r['deepspeed_accelerator']} "
        f"({r['communication_backend']})"
    )
    lines += [f"device {d['index']}: {d['name']}, {d['memory_gib']} GiB" for d in r["devices"]]
    ops = r["deepspeed_ops"]
    lines.append(
        "DeepSpeed ops installed: " + (", ".join(n for n in ops if ops[n]["installed"]) or "none")
    )
    lines.append(
        "DeepSpeed ops compatible (JIT-buildable): "
        + (", ".join(n for n in ops if ops[n]["compatible"]) or "none")
    )
    lines.append(f"os {r['os']}, {r['cpus']} CPUs, /dev/shm {r['shm']}")
    lines += [f"{k}={v}" for k, v in r["environment"].items()]
    return "\n".join(lines)


@dataclass
class EnvReportArgs:
    json: bool = field(default=False, metadata={"help": "print JSON instead of text"})


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((EnvReportArgs,), argv)
    r = report()
    print(json.dumps(r, indent=2) if args.json else as_text(r))


if __name__ == "__main__":
    run_tool(main)
