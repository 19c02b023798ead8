"""Plan mode of `train` (`--dry_run true`): everything the run settles before its first step,
checked and printed, without a process group, a GPU, weights or a written file.

The DeepSpeed config is filled (or refused) as the run fills it, the data is built by the run's
own setup (with its guard rails, and BASH's predictions checked against the run's fingerprints),
the model is built on the meta device to count its parameters, and runtime/memory.py says what
its states take per rank.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from data_tools.preferences import sequences
from data_tools.tokenization import Encoded
from runtime import lora
from runtime.args import DataArgs, ModelArgs
from runtime.ds_config import fill_for_run, offloads_optimizer, resolve_precision, zero_stage
from runtime.memory import gib, model_states
from runtime.modeling import load_tokenizer
from runtime.planning import count_parameters, model_config, print_on_main, wandb_paths, world_size
from train.setup import setup

FINGERPRINT_LIMIT = 2**31  # weights hashed for the predictions' check only below 2 GiB


def _lengths(encoded: Sequence[Encoded]) -> tuple[float, int]:
    lengths = [len(e.input_ids) for e in encoded]
    return mean(lengths), max(lengths)


def _weights_bytes(path: str | None) -> int:
    folder = Path(path) if path else None
    if folder is None or not folder.is_dir():
        return 0 if path is None else FINGERPRINT_LIMIT  # a hub model: not downloaded here
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def plan_train(model_args: ModelArgs, data_args: DataArgs, args: Any) -> dict[str, Any]:
    """Check and print `train`'s plan: the data is built (and refused) by train's own setup.
    Returns the plan's numbers."""
    world, precision = world_size(), resolve_precision(args.precision)
    config = model_config(load_tokenizer(model_args.tokenizer_path()), model_args)
    ds_config = fill_for_run(args, world, precision, config.hidden_size)
    weights = _weights_bytes(model_args.model_name_or_path)
    check = weights < FINGERPRINT_LIMIT
    run = setup(model_args, data_args, args, world, check_fingerprints=check)
    train_set, plan, total = run.train_set, run.plan, run.total_steps
    notes = []
    offline = {  # self-generated data the run checks against its tokenizer and weights
        "bash": (f"predictions {args.predictions}", "lengths"),
        "dpo": (f"reference log-probabilities {args.reference_logps}", "inputs"),
    }.get(args.mode)
    if offline:
        what, also = offline
        notes.append(
            f"{what}: fingerprints and {also} checked"
            if check
            else f"{what}: not checked (weights of {gib(weights)})"
        )
    if run.schedule:
        notes.append(
            f"p: {run.schedule.p(0):.3g} at step 0, {run.schedule.p(total - 1):.3g} at the last"
        )

    def add(model):
        return lora.from_args(model, args, model_args.model_name_or_path)

    num_params, trainable = count_parameters(config, add if args.lora_rank else None)
    offload_param = (ds_config["zero_optimization"].get("offload_param") or {}).get("device")
    memory = model_states(
        num_params,
        trainable,
        stage=zero_stage(ds_config),
        precision=precision,
        world_size=world,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        offload_optimizer=offloads_optimizer(ds_config),
        offload_param=offload_param not in (None, "none"),
    )

    out = Path(args.output_dir)
    ckpt = out / "checkpoints"
    saves = sorted({*range(args.save_every, total + 1, args.save_every or total + 1), total})
    latest = ckpt / "latest"
    start = 0
    if args.resume and latest.exists():
        start = int(latest.read_text().strip().removeprefix("step_"))
        notes.append(f"resumes from {ckpt / latest.read_text().strip()}")
    paths = [f"{out / 'tokenized'}/"]  # the examples as token arrays, kept for a restart
    paths += [f"{ckpt}/step_{s}/" for s in saves if s > start] + [str(latest)]
    if args.keep_last_checkpoints:
        notes.append(f"checkpoints older than the newest {args.keep_last_checkpoints} are deleted")
    if args.export:
        paths += [f"{out / 'export'}/", str(out / "export_check.json")]
    if args.log_file:
        paths += [str(out / "metrics.jsonl"), str(out / "learning_curve.png")]
    paths += wandb_paths(args.wandb_project, out, out / "wandb_run_id")

    mean_len, max_len = _lengths(sequences(train_set))
    positions = getattr(config, "max_position_embeddings", None)
    if positions and max_len > positions:
        raise ValueError(
            f"sequences of up to {max_len} tokens exceed the model's {positions} positions"
        )
    batch = plan.global_batch_size
    per_step = batch * (2 if args.mode == "dpo" else 1)  # sequences: a pair is two
    trained = mean(e.num_trained for e in train_set) * batch
    result = {
        "world_size": world,
        "precision": precision,
        "zero_stage": zero_stage(ds_config),
        "global_batch_size": batch,
        "tokens_per_step_mean": mean_len * per_step,
        "tokens_per_step_max": max_len * per_step,
        "steps_per_epoch": plan.steps_per_epoch,
        "total_steps": total,
        "num_params": num_params,
        "trainable_params": trainable,
        "memory": memory,
        "paths": paths,
    }
    print_on_main(
        [
            "dry run: the plan below is checked; no engine is built and nothing is written",
            f"DeepSpeed config ({args.deepspeed_config}, filled):",
            json.dumps(ds_config, indent=2),
            f"world size {world}, precision {precision}, ZeRO stage {zero_stage(ds_config)}",
            f"global batch: micro {args.micro_batch_size} x accumulation "
            f"{args.gradient_accumulation_steps} x world {world} = {batch} "
            + (f"pairs ({per_step} sequences)" if args.mode == "dpo" else "sequences"),
            f"data: {len(train_set)} {'pairs' if args.mode == 'dpo' else 'examples'}, sequence "
            f"length mean {mean_len:.1f}, max {max_len}",
            f"tokens per step: {mean_len * per_step:.0f} on average, at most {max_len * per_step} "
            f"(padded per micro-batch); trained tokens per step {trained:.0f} on average",
            f"steps: {plan.steps_per_epoch} per epoch, {total} in all (mode {args.mode})",
            f"model: {num_params:,} parameters, {trainable:,} trained",
            f"model states per rank: {memory.describe()}",
            *notes,
            "writes:",
            *(f"  {p}" for p in paths),
        ]
    )
    return result
