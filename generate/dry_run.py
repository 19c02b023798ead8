"""Plan mode of `generate` (`--dry_run true`): what the run would do, checked and printed,
without a process group, a GPU, weights or a written file: the inputs are built by generate's
own `inputs` (with its checks), the model's size and KV cache are counted from its config.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import mean
from typing import Any

from data_tools.schema import Example
from generate.inputs import build_inputs, check_positions
from runtime.args import DataArgs, ModelArgs
from runtime.ds_config import resolve_precision
from runtime.memory import BYTES, gib
from runtime.modeling import load_tokenizer
from runtime.planning import count_parameters, model_config, print_on_main, wandb_paths, world_size


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
    check_positions(getattr(config, "max_position_embeddings", None), args, data_args.max_length)
    lengths = build_inputs(tokenizer, todo, data_args, args).lengths
    new_tokens = 0 if args.teacher_forced or args.pair_logps else args.max_new_tokens
    new_tokens *= 2 if args.self_correct else 1
    num_params, _ = count_parameters(config)
    weights = BYTES[precision] * num_params
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    longest = (max(lengths) if lengths else 0) + new_tokens
    kv_cache = 2 * config.num_hidden_layers * kv_heads * head_dim * longest * args.batch_size
    output = Path(args.output)
    paths = [str(output), f"{output}.parts/part-<rank>.jsonl (removed after the merge)"]
    paths += wandb_paths(args.wandb_project, output.parent, Path(f"{output}.wandb_run_id"))
    batches = math.ceil(len(todo) / world / args.batch_size)
    lines = [
        "dry run: the plan below is checked; no model is loaded and nothing is written",
        f"world size {world}, precision {precision}, "
        + (
            "teacher forced"
            if args.teacher_forced
            else "pair log-probabilities"
            if args.pair_logps
            else "generation"
        ),
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
    print_on_main(lines)
    return {"world_size": world, "todo": len(todo), "num_params": num_params, "paths": paths}
