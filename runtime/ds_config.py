"""DeepSpeed configs from `ds_configs/`: their "auto" values filled from the run's own settings,
and any value that contradicts the run refused before a process touches a model."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from deepspeed.accelerator import get_accelerator

# transformers' "auto" gradient bucket is hidden_size² elements; for a small model that is smaller
# than one weight (128² against 128 x 384), so ZeRO-2 reduces, averages and copies every
# parameter on its own: 39 of each per step for the 1M tiny-llama, 7% of a step on one process
# (profiled, bench/RESULTS.md). 4M elements (16 MB in fp32, twice with overlap_comm) hold a small
# model whole; from hidden_size 2048 on, the hidden_size² rule is unchanged.
MIN_REDUCE_BUCKET = 2**22
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class ConfigError(ValueError):
    pass


def resolve_precision(requested: str) -> str:
    """ "auto" means bf16 on an accelerator that has it, else fp32 (the CPU default)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    accelerator = get_accelerator()
    if requested == "auto":
        on_gpu = accelerator.device_name() != "cpu"
        return "bf16" if on_gpu and accelerator.is_bf16_supported() else "fp32"
    if requested == "fp16" and not accelerator.is_fp16_supported():
        raise ConfigError(f"fp16 is not supported on {accelerator.device_name()}; use bf16 or fp32")
    return requested


def _settle(section: dict, key: str, value: Any, path: str, hint: str) -> None:
    """Fill an "auto" (or absent) value; refuse a given one that differs from the run's."""
    given = section.get(key, "auto")
    if given == "auto":
        section[key] = value
    elif given != value:
        raise ConfigError(f"{path}: {key} is {given!r} but the run needs {value!r}: {hint}")


def fill_ds_config(
    path: str,
    *,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    world_size: int,
    max_grad_norm: float,
    precision: str,
    hidden_size: int,
) -> dict[str, Any]:
    """Read the DeepSpeed config at `path` and settle every value that depends on the run."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read a DeepSpeed config: {e}") from e
    config = copy.deepcopy(config)
    for own in ("optimizer", "scheduler"):
        if own in config:
            raise ConfigError(
                f"{path}: remove the '{own}' section; the optimizer and learning-rate schedule "
                "come from the run's options (learning_rate, lr_scheduler, ...)"
            )
    change = f'set it to "auto" in {path}, or change the run\'s options to match'
    gbs = micro_batch_size * gradient_accumulation_steps * world_size
    _settle(
        config,
        "train_micro_batch_size_per_gpu",
        micro_batch_size,
        path,
        f"micro_batch_size is {micro_batch_size}; {change}",
    )
    _settle(
        config,
        "gradient_accumulation_steps",
        gradient_accumulation_steps,
        path,
        f"gradient_accumulation_steps is {gradient_accumulation_steps}; {change}",
    )
    _settle(
        config,
        "train_batch_size",
        gbs,
        path,
        f"micro_batch_size {micro_batch_size} x gradient_accumulation_steps {gradient_accumulation_steps} "
        f"x world size {world_size} = {gbs}; {change}",
    )
    _settle(
        config,
        "gradient_clipping",
        max_grad_norm,
        path,
        f"max_grad_norm is {max_grad_norm}; {change}",
    )
    for name in ("bf16", "fp16"):
        section = config.setdefault(name, {})
        _settle(section, "enabled", precision == name, path, f"precision is {precision}; {change}")
    zero = config.setdefault("zero_optimization", {"stage": 0})
    auto_sizes = {
        "reduce_bucket_size": max(hidden_size * hidden_size, MIN_REDUCE_BUCKET),
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "stage3_param_persistence_threshold": 10 * hidden_size,
    }
    for key, value in auto_sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value
    leftover = [k for k, v in _walk(config) if v == "auto"]
    if leftover:
        raise ConfigError(f"{path}: no run setting fills {leftover}; give them values")
    return config


def fill_for_run(args, world_size: int, precision: str, hidden_size: int) -> dict[str, Any]:
    """`fill_ds_config` with a run's own options (train/args.py)."""
    return fill_ds_config(
        args.deepspeed_config,
        micro_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        world_size=world_size,
        max_grad_norm=args.max_grad_norm,
        precision=precision,
        hidden_size=hidden_size,
    )


def _walk(config: dict, prefix: str = ""):
    for k, v in config.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def zero_stage(config: dict[str, Any]) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(config: dict[str, Any]) -> bool:
    offload = config.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") != "none"
