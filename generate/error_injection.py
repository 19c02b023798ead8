"""Error injection (He et al. 2021, "Exposure bias versus self-recovery"): one wrong value put into
the reference's own chain of steps, and what the model makes of it.

    python -m generate.error_injection --model_name_or_path runs/sft/export \\
        --data runs/demo/data/test.jsonl --output_dir runs/sft/error_injection \\
        [--inject_at 1,2,3] [--limit 200]

Free-running accuracy mixes the model's first slips with what it does after them. Here the slip
is put in by hand, at a chosen step K of a synthetic math answer (data_tools.synthetic_math),
so only the second part is measured. The context is the prompt, the reference's first K-1 step
lines, and its line K with its result y replaced by a wrong value w in both places it is
written (`Tom now has 5+3 = <<5+3=10>>10 apples.`), up to and including that line's newline.
w is y + d or y - d, d in 1..max_offset, drawn from a generator seeded by (seed, example id, K)
among the values that are >= 1 and keep every later step a whole number. The model continues
greedily, and its continuation is

- **recovered** when its next step starts from y (it ignores the wrong value) or its final
  answer is the right one: self-recovery;
- **consistent** when its final answer is what the reference's remaining steps give from w: it
  carried the error on with sound arithmetic, as a continuation that trusts its context should;
- **derailed** otherwise: the wrong value in its context made it err anew, which is exposure
  bias proper, what BASH, SCS and RAC train against.

The final answer is the continuation's own (`####`, or its last number); numbers in the
injected prefix never count. Where each next step starts (the right value, the wrong one,
another, or no step) is counted beside the outcomes: a recovery by the final answer alone can be
a coincidence of small numbers. An example with fewer than K step lines is left out at K and
counted as `too_short`.

Writes `<output_dir>/error_injection.json` (counts and rates per K), `error_injection.jsonl`
(each continuation with its outcome, to read why) and `error_injection.png`.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from transformers import PreTrainedTokenizerBase

from data_tools.atomic import write_json, write_jsonl
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.schema import DataError, Example
from data_tools.scoring import extract_answer
from data_tools.tokenization import encode_prompts, response_ids
from generate.args import GenerateArgs
from generate.decoding import greedy_decoder
from generate.error_propagation import (
    Step,
    parse_step,
    reference_steps,
    step_lines,
    step_result,
)
from runtime.args import DataArgs, ModelArgs
from runtime.generation import generate_batch, longest_first
from runtime.modeling import load_tokenizer
from runtime.plots import save

OUTCOMES = ("recovered", "consistent", "derailed")
STARTS = ("right", "wrong", "other", "none")  # where the next step starts
# The result of a step line, as written inside `<<x op b=y>>` and after it.
_RESULTS = re.compile(r"=\s*(-?\d+)\s*>>\s*(-?\d+)")


@dataclass(frozen=True)
class Injected:
    """One problem with a wrong value at step `step` (1-based): the response prefix the model
    continues, and the two values that tell its continuation's outcome apart."""

    id: str
    step: int
    right: int  # the reference's result at `step`
    wrong: int  # the value put in its place
    prefix: str
    right_answer: str  # the reference's last result, its final answer
    consistent_answer: str  # the final answer the reference's later steps give from `wrong`


def inject(line: str, wrong: int) -> str:
    """The step line with its result written as `wrong` in both places (inside `<<...>>` and
    after it); everything else in the line is kept as it is."""
    match = _RESULTS.search(line)
    if match is None or match[1] != match[2]:
        raise ValueError(f"not a step line with one result written twice: {line!r}")
    (a, b), (c, d) = match.span(1), match.span(2)
    return f"{line[:a]}{wrong}{line[b:c]}{wrong}{line[d:]}"


def _chain(value: int, later: Sequence[Step]) -> int | None:
    """The reference's later steps applied to `value`, or None where one is not whole."""
    for step in later:
        result = step_result(value, step.op, step.b)
        if result is None:
            return None
        value = result
    return value


def wrong_value(
    right: int, later: Sequence[Step], rng: random.Random, max_offset: int, where: str
) -> tuple[int, int]:
    """A value right ± d (d in 1..max_offset, in the order `rng` draws), at least 1 as every
    quantity of the task, from which `later` stays whole; with the final answer it leads to."""
    candidates = [right + sign * d for d in range(1, max_offset + 1) for sign in (1, -1)]
    rng.shuffle(candidates)
    for wrong in candidates:
        if wrong >= 1 and (final := _chain(wrong, later)) is not None:
            return wrong, final
    raise DataError(
        where, "answer", f"no value within {max_offset} of {right} keeps later steps whole"
    )


def prepare(example: Example, k: int, seed: int, max_offset: int) -> Injected | None:
    """The injected prefix of `example` at step `k`, or None when its answer has fewer steps."""
    where = example.origin or f"example {example.id}"
    steps = reference_steps(example.response, where)
    if len(steps) < k:
        return None
    lines = step_lines(example.response)
    rng = random.Random(f"{seed}\x00{example.id}\x00{k}")  # str seeds hash the same everywhere
    wrong, final = wrong_value(steps[k - 1].y, steps[k:], rng, max_offset, where)
    prefix = "\n".join([*lines[: k - 1], inject(lines[k - 1], wrong)]) + "\n"
    # The right answer, as the consistent one, is where the reference's chain ends.
    return Injected(example.id, k, steps[k - 1].y, wrong, prefix, str(steps[-1].y), str(final))


def next_from(injected: Injected, continuation: str) -> str:
    """Where the continuation's next step starts: from the right value ("right"), the injected
    one ("wrong"), another ("other"), or "none" where its first line is not a step."""
    lines = step_lines(continuation)
    following = parse_step(lines[0]) if lines else None
    if following is None:
        return "none"
    return {injected.right: "right", injected.wrong: "wrong"}.get(following.x, "other")


def classify(injected: Injected, continuation: str) -> str:
    """`continuation`'s outcome (see the module doc); recovered wins over consistent."""
    final = extract_answer(continuation)
    if next_from(injected, continuation) == "right" or final == injected.right_answer:
        return "recovered"
    if final == injected.consistent_answer:
        return "consistent"
    return "derailed"


def contexts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[list[int]], prefixes: Sequence[str]
) -> list[list[int]]:
    """Each prompt's tokens, then its response prefix's, tokenized on its own as `train` tokenizes
    a response: the tokens training shows for an answer that starts with the prefix."""
    if not prefixes:  # the tokenizer cannot take an empty batch
        return []
    ids = response_ids(tokenizer, prefixes)
    return [prompt + prefix for prompt, prefix in zip(prompts, ids, strict=True)]


def summarise(rows: Sequence[dict[str, Any]], steps: Sequence[int], examples: int) -> list[dict]:
    """Per step K: the continuations judged, the examples too short for K, the count and rate of
    each outcome, and where the next steps start."""
    out = []
    for k in steps:
        judged = [row for row in rows if row["step"] == k]
        counts = Counter(row["outcome"] for row in judged)
        starts = Counter(row["next_from"] for row in judged)
        n = len(judged)
        out.append(
            {
                "step": k,
                "examples": n,
                "too_short": examples - n,
                "counts": {o: counts[o] for o in OUTCOMES},
                "rates": {o: counts[o] / n if n else None for o in OUTCOMES},
                "next_step_from": {s: starts[s] for s in STARTS},
            }
        )
    return out


def plot(result: dict[str, Any], path: Path) -> Path:
    """The share of each outcome per injected step, with the counts over the bars."""
    fig = Figure(figsize=(max(6, 2 + 1.5 * len(result["per_step"])), 4.5), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(result["per_step"]))
    width = 0.8 / len(OUTCOMES)
    for i, outcome in enumerate(OUTCOMES):
        rates = [s["rates"][outcome] or 0.0 for s in result["per_step"]]
        bars = ax.bar(x + (i - 1) * width, rates, width, label=outcome, color=f"C{i}")
        ax.bar_label(bars, [str(s["counts"][outcome]) for s in result["per_step"]], fontsize=8)
    ax.set_xticks(x, [f"step {s['step']}\n(n={s['examples']})" for s in result["per_step"]])
    ax.set(ylabel="share of continuations", ylim=(0, 1.2), title="Error injection")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncols=len(OUTCOMES))
    fig.suptitle(f"One wrong value put in at a step: {result['model']} on {result['data']}")
    return save(fig, path)


@dataclass
class InjectionArgs:
    output_dir: str = field(
        metadata={
            "help": "folder for error_injection.json, error_injection.jsonl, error_injection.png"
        }
    )
    inject_at: str = field(
        default="1", metadata={"help": "the steps K to put the wrong value in, e.g. 2 or 1,2,3"}
    )
    max_offset: int = field(
        default=5, metadata={"help": "the wrong value is the right one ± d, d in 1..max_offset"}
    )
    seed: int = field(
        default=GenerateArgs.seed,
        metadata={"help": "with the example id and K, seeds the wrong value"},
    )
    batch_size: int = field(
        default=GenerateArgs.batch_size, metadata={"help": "continuations per forward pass"}
    )
    max_prompt_length: int = field(
        default=GenerateArgs.max_prompt_length,
        metadata={"help": "prompt tokens kept; longer prompts are cut from the left"},
    )
    max_new_tokens: int = GenerateArgs.max_new_tokens
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32"}
    )

    def __post_init__(self) -> None:
        if not re.fullmatch(r"\d+(,\d+)*", self.inject_at) or 0 in self.step_list():
            raise ValueError(
                f"inject_at must be step numbers from 1, like 2 or 1,2,3: {self.inject_at!r}"
            )
        if self.max_offset < 1:
            raise ValueError(f"max_offset must be at least 1, got {self.max_offset}")
        for name in ("batch_size", "max_prompt_length", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def step_list(self) -> list[int]:
        return sorted({int(k) for k in self.inject_at.split(",")})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    model_args, data_args, args = parse_config((ModelArgs, DataArgs, InjectionArgs), argv)
    examples = data_args.load()
    if not examples:
        raise SystemExit(f"{data_args.data}: no examples")
    steps = args.step_list()
    items = [
        (i, injected)
        for k in steps
        for i, e in enumerate(examples)
        if (injected := prepare(e, k, args.seed, args.max_offset)) is not None
    ]
    tokenizer = load_tokenizer(model_args.tokenizer_path())
    prompts, cut = encode_prompts(tokenizer, [e.prompt for e in examples], args.max_prompt_length)
    if cut:
        print(f"{data_args.data}: {cut} prompts cut from the left", flush=True)
    model = greedy_decoder(tokenizer, model_args, args.precision)
    inputs = contexts(tokenizer, [prompts[i] for i, _ in items], [item.prefix for _, item in items])
    judged: dict[int, dict[str, Any]] = {}
    order = longest_first([len(x) for x in inputs])
    for start in range(0, len(order), args.batch_size):
        chosen = order[start : start + args.batch_size]
        generated = generate_batch(
            model, tokenizer, [inputs[j] for j in chosen], args.max_new_tokens
        )
        for j, ids in zip(chosen, generated, strict=True):
            item, text = items[j][1], tokenizer.decode(ids, skip_special_tokens=True)
            judged[j] = {
                **asdict(item),
                "continuation": text,
                "next_from": next_from(item, text),
                "outcome": classify(item, text),
            }
    rows = [judged[j] for j in range(len(items))]
    result = {
        "model": model_args.model_name_or_path or model_args.model_config,
        "data": data_args.data,
        "examples": len(examples),
        "seed": args.seed,
        "max_offset": args.max_offset,
        "per_step": summarise(rows, steps, len(examples)),
    }
    output = Path(args.output_dir)
    write_jsonl(output / "error_injection.jsonl", rows)
    write_json(output / "error_injection.json", result)
    plot(result, output / "error_injection.png")
    for s in result["per_step"]:
        shares = ", ".join(f"{o} {s['counts'][o]}" for o in OUTCOMES)
        print(f"step {s['step']}: {shares} of {s['examples']}", flush=True)
    print(f"wrote {output}/error_injection.json, .jsonl and .png", flush=True)
    return result


if __name__ == "__main__":
    run_tool(main)
