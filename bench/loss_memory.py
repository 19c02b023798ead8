"""The training loss's memory and time (issue 13): the model's own loss, which projects every
position onto the vocabulary, against `train.loss.causal_lm_loss`, which asks the model for the
logits of the trained positions only.

    python -m bench.loss_memory [--vocab_size 49152] [--rows 4] [--max_length 512]

The model is a Llama of SmolLM2-135M's shape (576 hidden, 30 layers, 49,152-token vocabulary,
tied embeddings), initialised from a seed; a batch is `rows` right-padded rows whose lengths are
spread over [max_length / 2, max_length], the first `prompt_fraction` of each masked as a prompt.
Each arm runs in a fresh process: with its gradients already allocated, the peak memory of one
forward and backward pass over what the process held before it (on CPU the peak RSS, reset
through /proc/self/clear_refs; on a GPU `max_memory_allocated`), then the median time of
`steps` more. Both arms' losses are printed: they must agree. Prints markdown for
bench/RESULTS.md.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench.generation import machine
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.tokenization import IGNORE_INDEX
from train.loss import causal_lm_loss

ARMS = ("model", "trained")  # the model's own loss; logits of trained positions only
MIB = 2**20


@dataclass
class LossMemoryArgs:
    vocab_size: int = 49_152
    layers: int = field(default=30, metadata={"help": "SmolLM2-135M's 30; fewer for a test"})
    rows: int = field(default=4, metadata={"help": "the micro-batch"})
    max_length: int = 512
    prompt_fraction: float = field(default=0.5, metadata={"help": "of each row, masked"})
    steps: int = field(default=5, metadata={"help": "timed steps after the measured one"})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute the layers: the logits' share grows"}
    )
    arm: str | None = field(default=None, metadata={"help": "internal: run this arm"})

    def __post_init__(self) -> None:
        for name, least in (("layers", 1), ("rows", 1), ("max_length", 2), ("steps", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"{name} must be at least {least}, got {getattr(self, name)}")
        if not 0 <= self.prompt_fraction < 1:
            raise ValueError(f"prompt_fraction must be in [0, 1), got {self.prompt_fraction}")
        if self.arm not in (None, *ARMS):
            raise ValueError(f"arm must be one of {ARMS}, got {self.arm!r}")


def batch(args: LossMemoryArgs, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(
        args.max_length // 2, args.max_length + 1, (args.rows,), generator=generator
    )
    input_ids = torch.randint(args.vocab_size, (args.rows, args.max_length), generator=generator)
    position = torch.arange(args.max_length)
    attention_mask = (position < lengths[:, None]).long()
    prompt = (lengths * args.prompt_fraction).long()
    labels = input_ids.masked_fill(
        (position < prompt[:, None]) | ~attention_mask.bool(), IGNORE_INDEX
    )
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return {k: v.to(device) for k, v in inputs.items()}


def _resident() -> tuple[int, int]:
    """This process's RSS and its peak since the last reset, in bytes."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def worker(args: LossMemoryArgs) -> None:
    """One arm: its loss, peak memory and step times, as a json line on stdout."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=args.layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=args.max_length,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(device)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    inputs = batch(args, device)
    trained = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)

    def step() -> float:
        if args.arm == "model":
            loss = model(**inputs, num_items_in_batch=trained, use_cache=False).loss
        else:
            loss = causal_lm_loss(model, inputs, trained)
        loss.backward()
        return loss.item()

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from now
        before = _resident()[0]
    loss = step()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _resident()[1]
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    positions = int(inputs["attention_mask"].sum())
    print(
        json.dumps(
            {
                "loss": loss,
                "peak": peak - before,
                "seconds": statistics.median(times),
                "trained": trained,
                "positions": positions,
            }
        )
    )


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((LossMemoryArgs,), argv)
    if args.arm:
        worker(args)
        return
    options = [f"--{k}={v}" for k, v in asdict(args).items() if k != "arm"]
    results = {}
    for arm in ARMS:
        out = subprocess.run(
            [sys.executable, "-m", "bench.loss_memory", *options, "--arm", arm],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[arm] = json.loads(out.strip().splitlines()[-1])
    model, trained = results["model"], results["trained"]
    memory = "peak allocated" if torch.cuda.is_available() else "peak RSS"
    lines = [
        f"{machine()}; torch {torch.__version__}; a Llama of SmolLM2-135M's shape, vocabulary "
        f"{args.vocab_size:,}; {args.rows} rows of up to {args.max_length} tokens: "
        f"{model['positions']:,} positions, {model['trained']:,} trained; gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}.\n",
        f"| loss | loss value | step's {memory} over the held MiB | s/step (median of {args.steps}) |",
        "|---|---:|---:|---:|",
    ]
    for arm, label in zip(ARMS, ("the model's own", "trained positions' logits"), strict=True):
        r = results[arm]
        lines.append(f"| {label} | {r['loss']:.6f} | {r['peak'] / MIB:.0f} | {r['seconds']:.3f} |")
    lines.append(
        f"\nThe step's peak memory, trained / own = **{trained['peak'] / model['peak']:.2f}x**; "
        f"time, trained / own = **{trained['seconds'] / model['seconds']:.2f}x**."
    )
    print("\n".join(lines))


if __name__ == "__main__":
    run_tool(main)
