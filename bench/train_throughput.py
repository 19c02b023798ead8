"""Training tokens/s of `train` (one process, fp32, with ZeRO-0 and ZeRO-2) against a bare PyTorch
loop on the same model, the same batches and the same optimizer, measured in the same run.

    python -m bench.train_throughput [--steps 60] [--rounds 2]

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
from data_tools.sources import load_examples
from data_tools.synthetic_math import Difficulty, write_splits
from data_tools.tokenization import encode_examples
from data_tools.tokenizer_training import train_tokenizer
from runtime.modeling import load_model, load_tokenizer
from train.batches import BatchPlan

REPO = Path(__file__).resolve().parents[1]

MICRO, LR, SEED, MAX_LEN, WARMUP = 16, 1e-3, 0, 256, 10
CONFIGS = ("zero0", "zero2")


def bare_loop(root: Path, steps: int) -> list[float]:
    """tokens/s per step of the plain loop (the baseline)."""
    tokenizer = load_tokenizer(str(root / "tokenizer"))
    examples, _ = load_examples(str(root / "data/train.jsonl"), task="math")
    data, _ = encode_examples(tokenizer, examples, MAX_LEN)
    plan = BatchPlan(len(data), MICRO, 1, 1, SEED)
    model = load_model(
        tokenizer, config_file=str(REPO / "configs/models/tiny-llama.json"), seed=SEED
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95))
    scheduler = get_scheduler("cosine", optimizer, 0, steps)
    rates = []
    for step in range(steps):
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


def train_entrypoint(root: Path, steps: int, out: Path, config: str) -> list[float]:
    args = [
        "--model_config", "configs/models/tiny-llama.json", "--tokenizer", str(root / "tokenizer"),
        "--data", str(root / "data/train.jsonl"), "--max_length", str(MAX_LEN),
        "--output_dir", str(out), "--deepspeed_config", f"ds_configs/{config}.json", "--precision", "fp32",
        "--micro_batch_size", str(MICRO), "--max_steps", str(steps), "--learning_rate", str(LR),
        "--seed", str(SEED), "--export", "false", "--resume", "false",
    ]  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "train", *args], cwd=REPO, check=True, capture_output=True
    )
    return [json.loads(line)["train/tokens_per_s"] for line in (out / "metrics.jsonl").open()]


@dataclass
class ThroughputArgs:
    steps: int = field(default=60, metadata={"help": "optimizer steps per run"})
    rounds: int = field(
        default=2, metadata={"help": "rounds, each timing the bare loop and every config"}
    )

    def __post_init__(self) -> None:
        if self.steps <= WARMUP:
            raise ValueError(
                f"steps must be more than the {WARMUP} warm-up steps, got {self.steps}"
            )
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((ThroughputArgs,), argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_splits(root / "data", {"train": MICRO * args.steps}, Difficulty(), seed=SEED)
        rows = [json.loads(line) for line in (root / "data/train.jsonl").open()]
        train_tokenizer((t for r in rows for t in (r["question"], r["answer"])), root / "tokenizer")
        bare, ours = [], {c: [] for c in CONFIGS}
        for r in range(args.rounds):
            bare += bare_loop(root, args.steps)[WARMUP:]
            for c in CONFIGS:
                ours[c] += train_entrypoint(root, args.steps, root / f"{c}-{r}", c)[WARMUP:]
    b = statistics.median(bare)
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| run | tokens/s (median) | ratio to the bare loop |")
    print("|---|---:|---:|")
    print(f"| bare PyTorch loop | {b:,.0f} | 1.00 |")
    for c in CONFIGS:
        o = statistics.median(ours[c])
        print(f"| `train`, 1 process, ds_configs/{c}.json | {o:,.0f} | **{o / b:.2f}** |")


if __name__ == "__main__":
    main()
