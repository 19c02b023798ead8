"""Training tokens/s of `train` (one process, fp32, with ZeRO-0 and ZeRO-2) against a bare PyTorch
loop on the same model, the same batches and the same optimizer, measured in the same run.

    python -m bench.train_throughput [--steps 60] [--rounds 2]
    python -m bench.train_throughput --model_name_or_path models/smollm2-135m-instruct \
        --data ../shared/data/gsm8k/train.jsonl --micro_batch_size 4 --max_length 512 \
        --steps 12 --skip_steps 2 --rounds 1

Both sides are timed per optimizer step (forward, backward, clipping, AdamW, schedule) and
summarised by the median over steps after a warm-up; the rounds alternate the two sides so that
a slower machine phase hits both. Prints a markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import get_scheduler

from data_tools.collate import pad_right
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.sources import load_examples
from data_tools.synthetic_math import Difficulty, write_splits
from data_tools.tokenization import encode_examples
from data_tools.tokenizer_training import train_tokenizer
from runtime.modeling import load_model, load_tokenizer
from train.batches import BatchPlan

REPO = Path(__file__).resolve().parents[1]

SEED = 0
CONFIGS = ("zero0", "zero2")
TINY = str(REPO / "configs/models/tiny-llama.json")


@dataclass
class ThroughputArgs:
    steps: int = field(default=60, metadata={"help": "optimizer steps per run"})
    skip_steps: int = field(default=10, metadata={"help": "first steps left out of the median"})
    rounds: int = field(
        default=2, metadata={"help": "rounds, each timing the bare loop and every config"}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "a pretrained model (default: a new tiny-llama)"}
    )
    data: str | None = field(
        default=None, metadata={"help": "training data (default: the synthetic math task)"}
    )
    micro_batch_size: int = 16
    max_length: int = 256
    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        if self.steps <= self.skip_steps:
            raise ValueError(f"steps must be more than skip_steps, got {self.steps}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")


def bare_loop(args: ThroughputArgs, data_file: str, tokenizer_path: str) -> list[float]:
    """tokens/s per step of the plain loop (the baseline)."""
    tokenizer = load_tokenizer(tokenizer_path)
    examples, _ = load_examples(data_file, task="math")
    data, _ = encode_examples(
        tokenizer, examples[: args.micro_batch_size * args.steps], args.max_length
    )
    plan = BatchPlan(len(data), args.micro_batch_size, 1, 1, SEED)
    if args.model_name_or_path:
        model = load_model(tokenizer, args.model_name_or_path)
    else:
        model = load_model(tokenizer, config_file=TINY, seed=SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(0.9, 0.95))
    scheduler = get_scheduler("cosine", optimizer, 0, args.steps)
    rates = []
    for step in range(args.steps):
        started = time.perf_counter()
        batch = [data[i] for i in plan.global_indices(step)]
        loss = model(**pad_right(batch, tokenizer.pad_token_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        loss.item()
        rates.append(sum(len(e.input_ids) for e in batch) / (time.perf_counter() - started))
    return rates


def train_entrypoint(
    args: ThroughputArgs, data_file: str, tokenizer_path: str, out: Path, config: str
) -> list[float]:
    if args.model_name_or_path:
        model = ["--model_name_or_path", args.model_name_or_path]
    else:
        model = ["--model_config", TINY, "--tokenizer", tokenizer_path]
    argv = [
        *model, "--data", data_file, "--limit", str(args.micro_batch_size * args.steps),
        "--max_length", str(args.max_length), "--output_dir", str(out),
        "--deepspeed_config", f"ds_configs/{config}.json", "--precision", "fp32",
        "--micro_batch_size", str(args.micro_batch_size), "--max_steps", str(args.steps),
        "--learning_rate", str(args.learning_rate), "--seed", str(SEED),
        "--export", "false", "--resume", "false",
    ]  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "train", *argv], cwd=REPO, check=True, capture_output=True
    )
    return [json.loads(line)["train/tokens_per_s"] for line in (out / "metrics.jsonl").open()]


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((ThroughputArgs,), argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_file, tokenizer_path = args.data, args.model_name_or_path
        if data_file is None:
            data_file = str(root / "data/train.jsonl")
            write_splits(
                root / "data", {"train": args.micro_batch_size * args.steps}, Difficulty(), SEED
            )
        if tokenizer_path is None:
            tokenizer_path = str(root / "tokenizer")
            examples, _ = load_examples(data_file, task="math")
            train_tokenizer((t for e in examples for t in (e.prompt, e.response)), tokenizer_path)
        skip, bare, ours = args.skip_steps, [], {c: [] for c in CONFIGS}
        for r in range(args.rounds):
            bare += bare_loop(args, data_file, tokenizer_path)[skip:]
            for c in CONFIGS:
                out = root / f"{c}-{r}"
                ours[c] += train_entrypoint(args, data_file, tokenizer_path, out, c)[skip:]
    b = statistics.median(bare)
    model = Path(args.model_name_or_path or TINY).name
    print(
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"{model}, micro batch {args.micro_batch_size}, fp32, {args.steps} steps per run, "
        f"the first {skip} left out, {args.rounds} round(s)\n"
    )
    print("| run | tokens/s (median) | ratio to the bare loop |")
    print("|---|---:|---:|")
    print(f"| bare PyTorch loop | {b:,.0f} | 1.00 |")
    for c in CONFIGS:
        o = statistics.median(ours[c])
        print(f"| `train`, 1 process, ds_configs/{c}.json | {o:,.0f} | **{o / b:.2f}** |")


if __name__ == "__main__":
    run_tool(main)
