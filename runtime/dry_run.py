"""Plan mode (`--dry_run true`) for `train` and `generate`: everything a run would settle before
its first step, checked and printed, without a process group, a GPU, weights or a written file.

The DeepSpeed config is filled (or refused) as the run fills it, the data is tokenized (with its
guard rails) exactly as the run tokenizes it, BASH's predictions are checked against the run's
fingerprints, the model is built on the meta device to count its parameters, and
runtime/memory.py says what its states take per rank. The world size is the launcher's
(`WORLD_SIZE`, as `deepspeed` and slurm/ranks.sh set it), 1 for a plain `python` run; under a
launcher only rank 0 prints.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import mean
from typing import Any

import torch
from peft import PeftConfig
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from data_tools.schedules import SamplingSchedule
from data_tools.schema import Example
from data_tools.tokenization import Encoded, encode_examples, encode_prompts
from runtime import lora
from runtime.args import DataArgs, ModelArgs
from runtime.ds_config import fill_for_run, offloads_optimizer, resolve_precision, zero_stage
from runtime.fingerprint import model_fingerprint, tokenizer_fingerprint
from runtime.memory import BYTES, gib, model_states
from runtime.modeling import load_model, load_tokenizer
from train.batches import BatchPlan
from train.predictions import load_predictions

FINGERPRINT_LIMIT = 2**31  # weights hashed for the predictions' check only below 2 GiB


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _print(lines: Sequence[str]) -> None:
    if os.environ.get("RANK", "0") == "0":
        print("\n".join(lines), flush=True)


def model_config(tokenizer, model_args: ModelArgs) -> PretrainedConfig:
    """The config the run's model will have (a LoRA adapter folder: its base's)."""
    path = model_args.model_name_or_path
    if path is None:
        with torch.device("meta"):
            return load_model(tokenizer, config_file=model_args.model_config).config
    if lora.is_adapter(path):
        path = PeftConfig.from_pretrained(path).base_model_name_or_path
    return AutoConfig.from_pretrained(path)


def count_parameters(config: PretrainedConfig, add_lora: Callable | None = None) -> tuple[int, int]:
    """(all, trainable) parameters of the model built from `config` on the meta device, after
    `add_lora` when the run adds adapters: nothing is allocated."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        if add_lora is not None:
            model = add_lora(model)
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _lengths(encoded: Sequence[Encoded]) -> tuple[float, int]:
    lengths = [len(e.input_ids) for e in encoded]
    return mean(lengths), max(lengths)


def _weights_bytes(path: str | None) -> int:
    folder = Path(path) if path else None
    if folder is None or not folder.is_dir():
        return 0 if path is None else FINGERPRINT_LIMIT  # a hub model: not downloaded here
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def _wandb_paths(project: str | None, folder: Path, id_file: Path) -> list[str]:
    return [f"{id_file}", f"{folder / 'wandb'}/"] if project else []


def plan_train(
    model_args: ModelArgs, data_args: DataArgs, args: Any, encode: Callable
) -> dict[str, Any]:
    """Check and print `train`'s plan; `encode` is train's own tokenization, so that the data
    is built (and refused) exactly as the run builds it. Returns the plan's numbers."""
    world, precision = world_size(), resolve_precision(args.precision)
    tokenizer = load_tokenizer(model_args.tokenizer_path())
    config = model_config(tokenizer, model_args)
    ds_config = fill_for_run(args, world, precision, config.hidden_size)
    marker = args.correction_marker if args.mode == "rac" else None
    train_set = encode(tokenizer, data_args, marker=marker, loss_on=args.loss_on)
    if args.eval_data or args.eval_split:
        encode(tokenizer, data_args, args.eval_data, args.eval_split)
    notes = []
    if args.mode == "bash":
        weights = _weights_bytes(model_args.model_name_or_path)
        if weights < FINGERPRINT_LIMIT:
            fingerprints = (
                tokenizer_fingerprint(tokenizer),
                model_fingerprint(model_args.model_name_or_path),
            )
            load_predictions(args.predictions, train_set, *fingerprints)
            notes.append(f"predictions {args.predictions}: fingerprints and lengths checked")
        else:
            notes.append(f"predictions {args.predictions}: not checked (weights of {gib(weights)})")
    if args.mode in ("bash", "scs"):
        schedule = SamplingSchedule.from_args(args)
    plan = BatchPlan(
        len(train_set), args.micro_batch_size, args.gradient_accumulation_steps, world, args.seed
    )
    total = args.max_steps if args.max_steps > 0 else int(args.num_epochs * plan.steps_per_epoch)
    if args.mode in ("bash", "scs"):
        notes.append(f"p: {schedule.p(0):.3g} at step 0, {schedule.p(total - 1):.3g} at the last")

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
    paths = [f"{ckpt}/step_{s}/" for s in saves if s > start] + [str(latest)]
    if args.keep_last_checkpoints:
        notes.append(f"checkpoints older than the newest {args.keep_last_checkpoints} are deleted")
    if args.export:
        paths += [f"{out / 'export'}/", str(out / "export_check.json")]
    if args.log_file:
        paths += [str(out / "metrics.jsonl"), str(out / "learning_curve.png")]
    paths += _wandb_paths(args.wandb_project, out, out / "wandb_run_id")

    mean_len, max_len = _lengths(train_set)
    positions = getattr(config, "max_position_embeddings", None)
    if positions and max_len > positions:
        raise ValueError(
            f"sequences of up to {max_len} tokens exceed the model's {positions} positions"
        )
    batch = plan.global_batch_size
    trained = mean(e.num_trained for e in train_set) * batch
    result = {
        "world_size": world,
        "precision": precision,
        "zero_stage": zero_stage(ds_config),
        "global_batch_size": batch,
        "tokens_per_step_mean": mean_len * batch,
        "tokens_per_step_max": max_len * batch,
        "steps_per_epoch": plan.steps_per_epoch,
        "total_steps": total,
        "num_params": num_params,
        "trainable_params": trainable,
        "memory": memory,
        "paths": paths,
    }
    _print(
        [
            "dry run: the plan below is checked; no engine is built and nothing is written",
            f"DeepSpeed config ({args.deepspeed_config}, filled):",
            json.dumps(ds_config, indent=2),
            f"world size {world}, precision {precision}, ZeRO stage {zero_stage(ds_config)}",
            f"global batch: micro {args.micro_batch_size} x accumulation "
            f"{args.gradient_accumulation_steps} x world {world} = {batch} sequences",
            f"data: {len(train_set)} examples, sequence length mean {mean_len:.1f}, max {max_len}",
            f"tokens per step: {mean_len * batch:.0f} on average, at most {max_len * batch} "
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


def plan_generate(
    model_args: ModelArgs,
    data_args: DataArgs,
    args: Any,
    examples: list[Example],
    done: dict[str, Any],
) -> dict[str, Any]:
    """Check and print `generate`'s plan for `examples` (with their samples), `done` being the
    rows its output and part files already hold. Returns the plan's numbers."""
    world, precision = world_size(), resolve_precision(args.precision)
    tokenizer = load_tokenizer(model_args.tokenizer_path())
    config = model_config(tokenizer, model_args)
    todo = [e for e in examples if e.id not in done]
    positions = getattr(config, "max_position_embeddings", None)
    if args.mode == "teacher_forced":
        encoded, report = encode_examples(tokenizer, todo, data_args.max_length, data_args.overlong)
        if report.skipped_ids:
            raise SystemExit(f"teacher_forced: {report.summary()}; every example needs predictions")
        lengths = [len(e.input_ids) for e in encoded]
        new_tokens = 0
    else:
        if positions and args.max_prompt_length + args.max_new_tokens > positions:
            raise SystemExit(
                f"max_prompt_length {args.max_prompt_length} + max_new_tokens {args.max_new_tokens} "
                f"exceed the model's {positions} positions; lower one of them"
            )
        prompts, _ = encode_prompts(tokenizer, [e.prompt for e in todo], args.max_prompt_length)
        lengths = [len(p) for p in prompts]
        new_tokens = args.max_new_tokens * (2 if args.self_correct else 1)
    num_params, _ = count_parameters(config)
    weights = BYTES[precision] * num_params
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    longest = (max(lengths) if lengths else 0) + new_tokens
    kv_cache = 2 * config.num_hidden_layers * kv_heads * head_dim * longest * args.batch_size
    output = Path(args.output)
    paths = [str(output), f"{output}.parts/part-<rank>.jsonl (removed after the merge)"]
    paths += _wandb_paths(args.wandb_project, output.parent, Path(f"{output}.wandb_run_id"))
    batches = math.ceil(len(todo) / world / args.batch_size)
    lines = [
        "dry run: the plan below is checked; no model is loaded and nothing is written",
        f"world size {world}, precision {precision}, mode {args.mode}",
        f"examples: {len(examples)}, {len(examples) - len(todo)} done before, {len(todo)} to do: "
        f"{batches} batches of {args.batch_size} per rank",
    ]
    if lengths:
        lines.append(
            f"input length mean {mean(lengths):.1f}, max {max(lengths)}; new tokens at most {new_tokens}"
        )
    lines += [
        f"model: {num_params:,} parameters; per rank {gib(weights)} of weights (a full replica), "
        f"KV cache up to {gib(kv_cache * BYTES[precision])}",
        "writes:",
        *(f"  {p}" for p in paths),
    ]
    _print(lines)
    return {"world_size": world, "todo": len(todo), "num_params": num_params, "paths": paths}
