"""Measure what a DeepSpeed engine really holds, independently of runtime/memory.py's arithmetic.

    python -m tests.measure_memory --model_config M.json --tokenizer T --deepspeed_config D \\
        --precision fp32 --output result.json       (or under `deepspeed --num_gpus 2 --module`)

Builds the engine as `train` does (the model from a config, AdamW with train's parameter
groups, the filled DeepSpeed config), takes one full optimizer step so that the optimizer states
exist, then runs the next forward and backward (so that the gradients exist, at the accumulation
boundary) and sums the bytes of every distinct tensor storage alive on this rank: every tensor
the garbage collector can see, deduplicated by its storage's address, less those alive before
the model was built. Rank 0 writes {"bytes", "num_params", "world_size"} to --output.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass, field
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from data_tools.config import parse_config
from runtime import distributed
from runtime.ds_config import fill_ds_config
from runtime.modeling import load_model, load_tokenizer
from train.optimizer import param_groups


def storages() -> dict[int, int]:
    """Bytes of every distinct tensor storage the garbage collector can see, by address."""
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
            storage = obj.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    seen.pop(0, None)  # empty storages
    return seen


@dataclass
class MeasureArgs:
    model_config: str = field(metadata={"help": "the model's config (JSON)"})
    tokenizer: str = field(metadata={"help": "the tokenizer folder"})
    deepspeed_config: str = field(metadata={"help": "a file from ds_configs/"})
    output: str = field(metadata={"help": "JSON file for the result (written by rank 0)"})
    precision: str = field(default="fp32", metadata={"help": "fp32, bf16 or fp16"})


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((MeasureArgs,), argv)  # drops the launcher's --local_rank
    _, world = distributed.init()
    tokenizer = load_tokenizer(args.tokenizer)
    gc.collect()
    before = storages()
    model = load_model(tokenizer, config_file=args.model_config)
    num_params = sum(p.numel() for p in model.parameters())
    config = fill_ds_config(
        args.deepspeed_config,
        micro_batch_size=2,
        gradient_accumulation_steps=1,
        world_size=world,
        max_grad_norm=1.0,
        precision=args.precision,
        hidden_size=model.config.hidden_size,
    )
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    ids = torch.randint(0, len(tokenizer), (2, 32), generator=torch.Generator().manual_seed(0))
    for step in range(2):
        loss = engine(input_ids=ids.to(engine.device), labels=ids.to(engine.device)).loss
        engine.backward(loss)
        del loss
        if step == 0:
            engine.step()
    gc.collect()
    alive = storages()
    held = sum(n for ptr, n in alive.items() if before.get(ptr) != n)
    dist.barrier()
    if dist.get_rank() == 0:
        result = {"bytes": held, "num_params": num_params, "world_size": world}
        Path(args.output).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
