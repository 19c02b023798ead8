"""Generation throughput: `generate`'s batched path against one prompt at a time.

    python -m bench.generation [--prompts 64] [--batch_size 64] [--max_new_tokens 64]
    python -m bench.generation --model_name_or_path models/smollm2-135m-instruct \
        --data ../shared/data/gsm8k/test.jsonl --prompts 32 --batch_size 16 --max_new_tokens 128

Both paths run greedy decoding with the KV cache on the same model and prompts in the same run:
one calls transformers' `model.generate` per prompt, the other `runtime.generation.generate_batch`
on length-sorted batches, as `python -m generate` does. By default the model is a new tiny-llama
(random weights: they make no difference to speed) with a tokenizer trained on the synthetic math
task; or a pretrained model on the first prompts of a data file (its chat template applied).
Prints a markdown snippet for bench/RESULTS.md.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.sources import load_examples
from data_tools.synthetic_math import Difficulty, make_splits
from data_tools.tokenization import encode_prompts
from data_tools.tokenizer_training import train_tokenizer
from runtime import distributed
from runtime.generation import generate_batch, longest_first
from runtime.modeling import load_model, load_tokenizer


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    names = [line for line in text.splitlines() if line.startswith("model name")]
    cpu = names[0].split(":", 1)[1].strip() if names else platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def timed(fn) -> tuple[list[list[int]], float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


@dataclass
class GenerationBenchArgs:
    prompts: int = field(default=64, metadata={"help": "test prompts, generated for by both paths"})
    batch_size: int = field(default=64, metadata={"help": "prompts per batch of the batched path"})
    max_new_tokens: int = 64
    model_config: str = field(
        default="configs/models/tiny-llama.json", metadata={"help": "the model (random weights)"}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "a pretrained model instead of model_config"}
    )
    data: str | None = field(
        default=None,
        metadata={"help": "prompts from this file (default: the synthetic math task)"},
    )

    def __post_init__(self) -> None:
        for name in ("prompts", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((GenerationBenchArgs,), argv)

    rows = make_splits({"train": 500, "test": args.prompts}, Difficulty(), seed=0)
    questions = [r["question"] for r in rows["test"]]
    if args.data:
        questions = [e.prompt for e in load_examples(args.data, task="math")[0][: args.prompts]]
    if args.model_name_or_path:
        tokenizer = load_tokenizer(args.model_name_or_path)
        model = load_model(tokenizer, args.model_name_or_path)
        name = Path(args.model_name_or_path).name
    else:
        with tempfile.TemporaryDirectory() as tmp:
            texts = [t for r in rows["train"] for t in (r["question"], r["answer"])]
            tokenizer = train_tokenizer(texts, Path(tmp) / "tokenizer")
        model = load_model(tokenizer, config_file=args.model_config)
        name = Path(args.model_config).stem
    model = model.to(distributed.device()).eval()
    prompts, _ = encode_prompts(tokenizer, questions, 512)
    n = args.max_new_tokens

    def one_at_a_time() -> list[list[int]]:
        out = []
        for prompt in prompts:
            ids = torch.tensor([prompt], device=model.device)
            new = model.generate(ids, max_new_tokens=n, do_sample=False)[0, len(prompt) :]
            out.append(new.tolist())
        return out

    def batched() -> list[list[int]]:
        order, out = longest_first([len(p) for p in prompts]), {}
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            new = generate_batch(model, tokenizer, [prompts[i] for i in batch], n)
            out.update(zip(batch, new, strict=True))
        return [out[i] for i in range(len(prompts))]

    with torch.no_grad():
        generate_batch(model, tokenizer, prompts[:2], 4)  # warm-up
        single, t_single = timed(one_at_a_time)
        batch, t_batch = timed(batched)
    tokens_single, tokens_batch = sum(map(len, single)), sum(map(len, batch))
    speed_single, speed_batch = tokens_single / t_single, tokens_batch / t_batch
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"### Generation: batched `generate` vs one prompt at a time\n\n"
        f"{machine()}; torch {torch.__version__}, transformers {transformers.__version__}; "
        f"{name} ({params:.1f}M parameters, {model.dtype}), greedy, "
        f"KV cache, {len(prompts)} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} "
        f"tokens, max_new_tokens={n}.\n\n"
        f"| path | new tokens | seconds | tokens/s |\n|---|---:|---:|---:|\n"
        f"| `model.generate`, one prompt at a time | {tokens_single} | {t_single:.1f} | {speed_single:.0f} |\n"
        f"| `generate_batch`, batch {args.batch_size}, longest first | {tokens_batch} | {t_batch:.1f} | {speed_batch:.0f} |\n\n"
        f"Speed-up: **{speed_batch / speed_single:.1f}x**; "
        f"identical outputs: {'yes' if single == batch else 'no'}."
    )


if __name__ == "__main__":
    run_tool(main)
