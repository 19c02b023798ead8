"""Show training samples token by token, exactly as `train` builds them, with what each position
does: masked (no loss), trained (a target), or, in mode bash, replaced (the input is the model's
token, the target stays the reference's; both are shown).

    python -m train.inspect --config configs/sft_demo.yaml --n 3
    python -m train.inspect --config my_bash.yaml --step 200 --n 2 --max_length 256

Any train config works, with the same overrides as `train`. The samples are the first `--n` of
the global batch of `--step` (the run's data order; world size from WORLD_SIZE, else 1). Mode
rac shows the correction samples; mode bash interleaves the predictions file at p(step), as the
run does. Mode scs makes its tokens with the live model at run time: shown as SFT's. Mode dpo
shows each pair's chosen sequence, then its rejected one (both under the pair's id). The marks
are words, so the output reads without colour; on a terminal they are coloured too.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.preferences import sequences
from data_tools.tokenization import IGNORE_INDEX, Encoded
from methods.scheduled_sampling import interleave
from runtime.args import DataArgs, ModelArgs
from runtime.planning import world_size
from train.args import TrainArgs
from train.setup import setup

COLOURS = {"masked": "\033[2m", "trained": "\033[32m", "replaced": "\033[31;1m"}
RESET = "\033[0m"


@dataclass(frozen=True)
class Mark:
    position: int
    input_id: int  # what the model reads at this position
    label: int  # its target there (IGNORE_INDEX when masked)
    kind: str  # "masked", "trained" or "replaced"


def mark_tokens(built: Encoded, shown: Encoded | None = None) -> list[Mark]:
    """Each position of `shown` (the sample as trained: `built` after BASH's interleaving; by
    default `built` itself): masked without a label, replaced where its input differs from
    `built`'s, trained otherwise."""
    shown = shown or built
    marks = []
    for i, (token, label) in enumerate(zip(shown.input_ids, shown.labels, strict=True)):
        if label == IGNORE_INDEX:
            kind = "masked"
        elif token != built.input_ids[i]:
            kind = "replaced"
        else:
            kind = "trained"
        marks.append(Mark(i, token, label, kind))
    return marks


def render(tokenizer: PreTrainedTokenizerBase, marks: list[Mark], colour: bool = False) -> str:
    """One line per token: position, mark, token id and piece; for a replaced token, the
    model's token (the input) and the reference's (the target)."""

    def text(token: int) -> str:
        return f"{token} {tokenizer.convert_ids_to_tokens(token)!r}"

    lines = []
    for m in marks:
        line = f"{m.position:5d}  {m.kind:8s}  {text(m.input_id)}"
        if m.kind == "replaced":
            line += f"  <- model's token; reference {text(m.label)}"
        lines.append(f"{COLOURS[m.kind]}{line}{RESET}" if colour else line)
    return "\n".join(lines)


def summary(sample_id: str, marks: list[Mark]) -> str:
    counts = {k: sum(m.kind == k for m in marks) for k in COLOURS}
    return f"== {sample_id}: {len(marks)} tokens, " + ", ".join(
        f"{n} {k}" for k, n in counts.items()
    )


@dataclass
class InspectArgs:
    n: int = field(default=3, metadata={"help": "samples to show"})
    step: int = field(default=0, metadata={"help": "the optimizer step whose batch to show"})


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, args, shown_args = parse_config(
        (ModelArgs, DataArgs, TrainArgs, InspectArgs), argv
    )
    step = shown_args.step
    run = setup(model_args, data_args, args, world_size())
    batch = sequences([run.train_set[i] for i in run.plan.global_indices(step)[: shown_args.n]])
    shown, p_step = batch, None
    if args.mode == "bash":
        p_step = run.schedule.p(step)
        ramp = run.schedule.position_ramp
        shown = [
            interleave(e, run.predictions[e.id], p_step, args.seed, step, ramp)[0] for e in batch
        ]
    colour = sys.stdout.isatty()
    print(
        f"mode {args.mode}, step {step}"
        + (f", p = {p_step:.4g}" if p_step is not None else "")
        + "; positions: masked (no loss), trained (a target)"
        + (", replaced (input: the model's token; target: the reference's)" if p_step else "")
    )
    for built, trained in zip(batch, shown, strict=True):
        marks = mark_tokens(built, trained)
        print(summary(built.id, marks))
        print(render(run.tokenizer, marks, colour))


if __name__ == "__main__":
    run_tool(main)
