"""BASH against SCS over epochs: wall time and forward passes of each, in the same run.

    python -m bench.bash_vs_scs [--examples 640] [--epochs 1,2,3]

Both train the same new tiny-llama on the same synthetic math examples, in one process, with the
same schedule (p 0.25 constant), batch and steps per epoch. SCS predicts the model's tokens
online, one extra forward pass per sequence per step, so its extra cost grows with the epochs;
BASH predicts them offline once per round (`generate --teacher_forced`, here one round for
every epoch count) and then trains at SFT's cost. BASH's time is its predictions' process plus
its training's; each is a whole process (start-up included), as a pipeline stage is. Prints a
markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.train_throughput import REPO, SEED, TINY
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.sources import load_examples
from data_tools.synthetic_math import Difficulty, write_splits
from data_tools.tokenizer_training import train_tokenizer

SCHEDULE = ["--ss_schedule", "constant", "--ss_p_max", "0.25"]


@dataclass
class BashVsScsArgs:
    examples: int = field(default=640, metadata={"help": "training examples (one epoch)"})
    epochs: str = field(default="1,2,3", metadata={"help": "epoch counts, comma-separated"})
    micro_batch_size: int = 16

    def epoch_list(self) -> list[int]:
        return [int(e) for e in self.epochs.split(",")]

    def __post_init__(self) -> None:
        try:
            counts = self.epoch_list()
        except ValueError:
            counts = []
        if not counts or min(counts) < 1:
            raise ValueError(f"epochs must be integers >= 1, comma-separated, got {self.epochs!r}")
        if self.examples < self.micro_batch_size:
            raise ValueError(
                f"examples ({self.examples}) must fill one micro-batch ({self.micro_batch_size})"
            )


def timed_run(module: str, argv: list[str]) -> float:
    """The wall time of `python -m module argv`, start-up included."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def forward_sequences(out: Path) -> int:
    return sum(
        json.loads(line)["train/forward_sequences"] for line in (out / "metrics.jsonl").open()
    )


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((BashVsScsArgs,), argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, tokenizer = str(root / "data/train.jsonl"), str(root / "tokenizer")
        write_splits(root / "data", {"train": args.examples}, Difficulty(), SEED)
        rows, _ = load_examples(data, task="math")
        train_tokenizer((t for e in rows for t in (e.prompt, e.response)), tokenizer)
        model = ["--model_config", TINY, "--tokenizer", tokenizer, "--seed", str(SEED)]
        predictions = root / "predictions.jsonl"
        predict_s = timed_run(
            "generate",
            [*model, "--data", data, "--output", str(predictions), "--teacher_forced", "true"],
        )
        common = [
            *model, "--data", data, "--micro_batch_size", str(args.micro_batch_size),
            "--precision", "fp32", "--deepspeed_config", "ds_configs/zero2.json",
            "--export", "false", "--resume", "false", *SCHEDULE,
        ]  # fmt: skip
        rows = []
        for epochs in args.epoch_list():
            runs = {}
            for mode, extra in (("bash", ["--predictions", str(predictions)]), ("scs", [])):
                out = root / f"{mode}-{epochs}"
                seconds = timed_run(
                    "train",
                    [*common, "--mode", mode, "--num_epochs", str(epochs), *extra]
                    + ["--output_dir", str(out)],
                )
                runs[mode] = (seconds, forward_sequences(out))
            rows.append((epochs, runs))

    print(
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"tiny-llama, {args.examples} examples, micro batch {args.micro_batch_size}, fp32, "
        f"1 process, ZeRO-2; BASH's predictions {predict_s:.0f} s, once for every row\n"
    )
    print(
        "| epochs | BASH wall s (predictions + training) | SCS wall s | BASH / SCS, wall | ", end=""
    )
    print("BASH / SCS, forward passes |")
    print("|---:|---:|---:|---:|---:|")
    for epochs, runs in rows:
        (bash_s, bash_fwd), (scs_s, scs_fwd) = runs["bash"], runs["scs"]
        bash_total, bash_passes = predict_s + bash_s, args.examples + bash_fwd
        print(
            f"| {epochs} | {bash_total:.0f} ({predict_s:.0f} + {bash_s:.0f}) | {scs_s:.0f} | "
            f"**{bash_total / scs_s:.2f}** | {bash_passes / scs_fwd:.2f} |"
        )


if __name__ == "__main__":
    run_tool(main)
