"""Exposure bias, measured: per response position, how well the model predicts the reference from
the reference's own prefix (teacher forcing, as in training) and from its own prefix (free
running, as in generation), and how the gap between the two accumulates over positions.

    python -m generate.exposure_bias --model_name_or_path runs/sft/export \\
        --data runs/demo/data/test.jsonl --task math --output_dir runs/sft/exposure_bias \\
        [--limit 200]

Examples are tokenized as `train` tokenizes them (`encode_examples`), so position j is the j-th
trained token of the response (its EOS is the last). At position j, for each example:

- teacher forced: one forward pass over prompt + reference; correct when the argmax is reference
  token j, loss the cross-entropy of reference token j;
- free running: greedy generation from the prompt; correct when generated token j is reference
  token j (a generation that has already ended is wrong), loss the cross-entropy of reference
  token j after the prompt and generated tokens 0..j-1, from one forward pass over them (defined
  while the generation has not ended before j).

Writes `<output_dir>/exposure_bias.json` (per position: means over the examples that reach it, the
gap free - teacher forced and its cumulative sum) and `<output_dir>/exposure_bias.png`. With
--wandb_project, a wandb run (job type "exposure_bias") gets the plot, the per-position table,
a line plot of both accuracies and the final cumulative gaps as summary metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from data_tools.atomic import write_json
from data_tools.collate import pad_right
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.tokenization import IGNORE_INDEX, Encoded, encode_examples
from generate.args import GenerateArgs
from generate.decoding import greedy_decoder
from runtime.args import DataArgs, ModelArgs
from runtime.generation import eos_ids, generate_batch, longest_first
from runtime.modeling import load_tokenizer
from runtime.plots import exposure_bias as plot_exposure_bias
from runtime.tracking import Tracker


@dataclass
class ExposureArgs:
    output_dir: str = field(
        metadata={"help": "folder for exposure_bias.json and exposure_bias.png"}
    )
    batch_size: int = field(
        default=GenerateArgs.batch_size, metadata={"help": "examples per forward pass"}
    )
    max_positions: int | None = field(
        default=None, metadata={"help": "measure only the first N response positions"}
    )
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32"}
    )
    wandb_project: str | None = field(
        default=None, metadata={"help": "log the curves to wandb under this project"}
    )
    wandb_group: str | None = field(default=None, metadata={"help": "wandb group"})
    run_name: str | None = field(
        default=None, metadata={"help": "wandb run name (default: the output folder's name)"}
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_positions is not None and self.max_positions < 1:
            raise ValueError(f"max_positions must be at least 1, got {self.max_positions}")


@dataclass
class Measured:
    """One example's measures at its response positions 0, 1, ...; `free_loss` stops where the
    free-running generation ended (its EOS at the last position it covers)."""

    id: str
    teacher_correct: list[bool]
    teacher_loss: list[float]
    free_correct: list[bool]
    free_loss: list[float]


@torch.no_grad()
def label_scores(
    model: PreTrainedModel, batch: Sequence[Encoded], pad_id: int
) -> list[tuple[list[bool], list[float]]]:
    """For each example, at each position with a label: whether the model's argmax is the label,
    and the label's cross-entropy, given the input tokens before that position."""
    inputs = pad_right(batch, pad_id)
    logits = model(
        input_ids=inputs["input_ids"].to(model.device),
        attention_mask=inputs["attention_mask"].to(model.device),
    ).logits[:, :-1]
    targets = inputs["labels"][:, 1:].to(model.device)  # the logits at t predict the token at t + 1
    mask = targets != IGNORE_INDEX
    rows, labels = logits[mask].float(), targets[mask]
    correct = (rows.argmax(-1) == labels).cpu()
    loss = F.cross_entropy(rows, labels, reduction="none").cpu()
    counts = mask.sum(-1).tolist()
    return [
        (c.tolist(), x.tolist())
        for c, x in zip(correct.split(counts), loss.split(counts), strict=True)
    ]


def measure_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    batch: Sequence[Encoded],
    max_positions: int | None = None,
) -> list[Measured]:
    """Teacher-forced and free-running measures for examples encoded as for training."""
    starts = [next(t for t, x in enumerate(e.labels) if x != IGNORE_INDEX) for e in batch]
    prompts = [e.input_ids[:p] for e, p in zip(batch, starts, strict=True)]
    references = [e.labels[p:][:max_positions] for e, p in zip(batch, starts, strict=True)]
    teacher = label_scores(
        model,
        [
            Encoded(e.id, prompt + ref, e.labels[: len(prompt) + len(ref)])
            for e, prompt, ref in zip(batch, prompts, references, strict=True)
        ],
        tokenizer.pad_token_id,
    )
    generated = generate_batch(model, tokenizer, prompts, max(len(r) for r in references))
    stop = eos_ids(model, tokenizer)
    # The model's own context for reference token j is generated tokens 0..j-1, as long as no
    # EOS is among them: up to the generation's EOS, and never past the reference's last token.
    covered = [
        min(len(g) - int(g[-1] in stop), len(r) - 1) + 1
        for g, r in zip(generated, references, strict=True)
    ]
    free = label_scores(
        model,
        [
            Encoded(e.id, prompt + g[:n], [IGNORE_INDEX] * len(prompt) + ref[:n])
            for e, prompt, g, ref, n in zip(
                batch, prompts, generated, references, covered, strict=True
            )
        ],
        tokenizer.pad_token_id,
    )
    return [
        Measured(
            e.id,
            tf_correct,
            tf_loss,
            [j < len(g) and g[j] == token for j, token in enumerate(ref)],
            free_loss,
        )
        for e, (tf_correct, tf_loss), g, ref, (_, free_loss) in zip(
            batch, teacher, generated, references, free, strict=True
        )
    ]


def _table(rows: Sequence[Sequence[float]], width: int) -> np.ndarray:
    """Rows of different lengths as one array, NaN where a row has no value."""
    out = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _listed(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def _column_means(table: np.ndarray) -> np.ndarray:
    counts = (~np.isnan(table)).sum(0)
    return np.where(counts > 0, np.nansum(table, 0) / np.maximum(counts, 1), np.nan)


def _first_false(flags: Sequence[bool]) -> int:
    return next((j for j, ok in enumerate(flags) if not ok), len(flags))


def aggregate(measured: Sequence[Measured]) -> dict[str, Any]:
    """Per position: means over the examples that reach it, the gap (free - teacher forced) and
    its cumulative sum. The loss gap pairs each example's two losses, over the examples whose
    free-running loss is defined there; positions where none is are null."""
    width = max(len(m.teacher_correct) for m in measured)
    tf_acc = _table([m.teacher_correct for m in measured], width)
    tf_loss = _table([m.teacher_loss for m in measured], width)
    free_acc = _table([m.free_correct for m in measured], width)
    free_loss = _table([m.free_loss for m in measured], width)
    acc_gap = _column_means(free_acc) - _column_means(tf_acc)
    loss_gap = _column_means(free_loss - tf_loss)  # NaN wherever the free loss is undefined
    return {
        "position": list(range(width)),
        "count": (~np.isnan(tf_acc)).sum(0).tolist(),
        "teacher_forced": {
            "accuracy": _listed(_column_means(tf_acc)),
            "loss": _listed(_column_means(tf_loss)),
        },
        "free_running": {
            "accuracy": _listed(_column_means(free_acc)),
            "loss": _listed(_column_means(free_loss)),
            "loss_count": (~np.isnan(free_loss)).sum(0).tolist(),
            # Where each generation first leaves the reference: the accuracies after it say how
            # the model words its answer, not whether it errs.
            "first_divergence_mean": float(
                np.mean([_first_false(m.free_correct) for m in measured])
            ),
        },
        "gap": {
            "accuracy": _listed(acc_gap),
            "loss": _listed(loss_gap),
            "cumulative_accuracy": _listed(np.cumsum(acc_gap)),
            "cumulative_loss": _listed(np.cumsum(loss_gap)),  # NaN from the first undefined on
        },
    }


def track(result: dict[str, Any], plot: Path, tracker: Tracker) -> None:
    """The plot, the per-position numbers as a table, both accuracies as a wandb line plot, and
    the cumulative gaps at the last position as summary metrics."""
    tracker.log_image("exposure_bias/plot", plot)
    regimes = ("teacher_forced", "free_running")
    columns = ["position", "count"]
    columns += [f"{r}_{k}" for r in regimes for k in ("accuracy", "loss")]
    columns += [f"gap_{k}" for k in result["gap"]]
    values = [result["position"], result["count"]]
    values += [result[r][k] for r in regimes for k in ("accuracy", "loss")]
    values += list(result["gap"].values())
    tracker.log_table(
        "exposure_bias/table", columns, [list(row) for row in zip(*values, strict=True)]
    )
    tracker.log_lines(
        "exposure_bias/accuracy",
        result["position"],
        {r: result[r]["accuracy"] for r in regimes},
        "Token accuracy per response position",
        "response position",
    )
    tracker.summary(
        {f"cumulative_{k}_gap": result["gap"][f"cumulative_{k}"][-1] for k in ("accuracy", "loss")}
        | {"examples": result["examples"]}
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    model_args, data_args, args = parse_config((ModelArgs, DataArgs, ExposureArgs), argv)
    tokenizer = load_tokenizer(model_args.tokenizer_path())
    encoded, report = encode_examples(
        tokenizer, data_args.load(), data_args.max_length, data_args.overlong
    )
    print(f"{data_args.data}: {report.summary()}", flush=True)
    if not encoded:
        raise SystemExit(f"{data_args.data}: no examples to measure")
    model = greedy_decoder(tokenizer, model_args, args.precision)
    order = longest_first([len(e.input_ids) for e in encoded])
    measured = []
    for start in range(0, len(order), args.batch_size):
        batch = [encoded[i] for i in order[start : start + args.batch_size]]
        measured += measure_batch(model, tokenizer, batch, args.max_positions)
    result = {
        "model": model_args.model_name_or_path or model_args.model_config,
        "data": data_args.data,
        "task": data_args.task,
        "examples": len(measured),
        **aggregate(measured),
    }
    output = Path(args.output_dir)
    write_json(output / "exposure_bias.json", result)
    print(
        "note: free-running accuracy is aligned by position: after its first token that differs "
        f"from the reference (position {result['free_running']['first_divergence_mean']:.1f} on average here) a generation "
        "that words its answer its own way scores about 0 even when it is right; the loss curves "
        "(the reference's next token under the model's own prefix) need no alignment",
        flush=True,
    )
    plot_exposure_bias(result, output / "exposure_bias.png")
    print(f"wrote {output}/exposure_bias.json and {output}/exposure_bias.png", flush=True)
    config = {**asdict(model_args), **asdict(data_args), **asdict(args)}
    with Tracker(
        args.wandb_project,
        args.output_dir,
        config,
        args.run_name,
        "exposure_bias",
        args.wandb_group,
    ) as tracker:
        track(result, output / "exposure_bias.png", tracker)
    return result


if __name__ == "__main__":
    run_tool(main)
