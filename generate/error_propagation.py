"""Induced against propagated errors in free-running answers of the synthetic math task.

    python -m generate.error_propagation --generations runs/sft/test.jsonl \\
        --output_dir runs/sft/error_propagation

Exact match cannot tell a model that errs more once its own context holds an error (exposure
bias proper, what BASH, SCS and RAC target) from one that only carries an early slip faithfully
to the end (propagation, which a chain of dependent steps shows even under a perfect
continuation). So each step line of a generation (`Tom now has 5+3 = <<5+3=8>>8 apples.`) is
judged on its own terms, and is *locally right* when

- its arithmetic is right for the values it writes: y = x op b, and the line's two copies of
  it (before and inside `<<...>>`) agree;
- it starts from the model's own previous result: x is the previous line's y, and the first line
  starts from the question's starting quantity;
- it applies the question's operation and operand for that step.

A line that does not parse is a local error of its own kind ("unparseable"), and the line after
it is not checked for where it starts. A line past the question's last step is a local error
("extra"); steps a generation leaves out are counted as missing. Exposure bias proper is
P(local error | an earlier local error) > P(local error | none); a locally right step after an
error has propagated that error, not made a new one. The object's noun is not judged.

The reference's k-th line restates the quantity before step k (data_tools.synthetic_math), so the
reference alone gives the starting quantity and each step's operation and operand. A generation
of a self-correcting model (RAC) is judged on its text after the last correction marker.

Writes `<output_dir>/error_propagation.json` and `<output_dir>/error_propagation.png`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from data_tools.atomic import write_json
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.schema import DataError
from data_tools.scoring import extract_answer, final_answer_text
from data_tools.sources import jsonl_objects, text_field, unique_id
from methods.correction import CORRECTION_MARKER
from runtime.plots import save

_STEP = re.compile(
    r"(-?\d+)\s*([-+*/])\s*(\d+)\s*=\s*<<\s*(-?\d+)\s*([-+*/])\s*(\d+)\s*=\s*(-?\d+)\s*>>\s*(-?\d+)"
)
REASONS = ("unparseable", "arithmetic", "start", "operand", "extra")
GROUPS = {"no_earlier_error": "no earlier error", "after_an_error": "after an earlier error"}


@dataclass(frozen=True)
class Step:
    """One step line as written, x op b = y, and whether its two copies agree."""

    x: int
    op: str
    b: int
    y: int
    agrees: bool


@dataclass(frozen=True)
class Chain:
    """One generation judged: why each of its step lines is locally wrong (empty: locally
    right), the question's steps it left out, and whether its final answer is right."""

    id: str
    errors: list[tuple[str, ...]]
    missing: int
    final_right: bool


def parse_step(line: str) -> Step | None:
    """The step a line writes, or None when it writes none."""
    match = _STEP.search(line)
    if match is None:
        return None
    x, op, b, inner_x, inner_op, inner_b, inner_y, y = match.groups()
    written = (int(x), op, int(b), int(y))
    return Step(*written, written == (int(inner_x), inner_op, int(inner_b), int(inner_y)))


def step_lines(text: str) -> list[str]:
    """The non-blank lines before the final answer's "####"."""
    return [line for line in text.split("####")[0].splitlines() if line.strip()]


def step_result(x: int, op: str, b: int) -> int | None:
    """x op b, or None where it is not a whole number."""
    if op == "/":
        return x // b if b and x % b == 0 else None
    return {"+": x + b, "-": x - b, "*": x * b}[op]


def local_errors(lines: Sequence[str], reference: Sequence[Step]) -> list[tuple[str, ...]]:
    """For each step line of a generation, the `REASONS` it is locally wrong (see the module
    doc); `reference` is the reference answer's steps."""
    out: list[tuple[str, ...]] = []
    previous: int | None = reference[0].x  # the question's starting quantity
    for k, line in enumerate(lines):
        step = parse_step(line)
        if step is None:
            out.append(("unparseable",))
            previous = None  # no result written to start from
            continue
        reasons = []
        if not step.agrees or step_result(step.x, step.op, step.b) != step.y:
            reasons.append("arithmetic")
        if previous is not None and step.x != previous:
            reasons.append("start")
        if k >= len(reference):
            reasons.append("extra")
        elif (step.op, step.b) != (reference[k].op, reference[k].b):
            reasons.append("operand")
        out.append(tuple(reasons))
        previous = step.y
    return out


def reference_steps(reference: str, where: str) -> list[Step]:
    """The steps of a reference answer, each of which must parse."""
    steps = [parse_step(line) for line in step_lines(reference)]
    if not steps:
        raise DataError(where, "reference", "no step lines: not a synthetic math answer")
    for i, step in enumerate(steps, 1):
        if step is None:
            raise DataError(where, "reference", f"step line {i} is not 'x op b = <<x op b=y>>y'")
    return steps


def read_chains(path: str | Path, marker: str) -> list[Chain]:
    """Every generation of a `generate` output, judged (rows with "id", "reference" and
    "generation"); a bad row is a `DataError` naming its line and field."""
    chains: list[Chain] = []
    seen: dict[str, str] = {}
    for where, row in jsonl_objects(path):
        row_id = unique_id(row, where, seen)
        reference = text_field(row, "reference", where)
        if not isinstance(row.get("generation"), str):  # empty is fine: a model may say nothing
            raise DataError(where, "generation", "missing or not a string")
        steps = reference_steps(reference, where)
        answer = final_answer_text(row["generation"], marker)
        lines = step_lines(answer)
        chains.append(
            Chain(
                row_id,
                local_errors(lines, steps),
                max(0, len(steps) - len(lines)),
                extract_answer(answer) == extract_answer(reference),
            )
        )
    if not chains:
        raise DataError(str(path), None, "no generations")
    return chains


def _rate(wrong: Sequence[bool]) -> dict[str, Any]:
    errors = sum(wrong)
    return {
        "steps": len(wrong),
        "local_errors": errors,
        "rate": errors / len(wrong) if wrong else None,
    }


def summarise(chains: Sequence[Chain]) -> dict[str, Any]:
    """Counts of steps and local errors (by reason), the local error rate with and without an
    earlier error, overall and per step position, and the share of wrong final answers."""
    steps = []  # (position, an earlier error in the chain, locally wrong)
    for chain in chains:
        earlier = False
        for k, why in enumerate(chain.errors):
            steps.append((k, earlier, bool(why)))
            earlier = earlier or bool(why)
    reasons = Counter(r for chain in chains for why in chain.errors for r in why)

    def groups(chosen: Sequence[tuple[int, bool, bool]]) -> dict[str, Any]:
        return {
            "all_steps": _rate([wrong for _, _, wrong in chosen]),
            "no_earlier_error": _rate([wrong for _, earlier, wrong in chosen if not earlier]),
            "after_an_error": _rate([wrong for _, earlier, wrong in chosen if earlier]),
        }

    overall = groups(steps)
    clean, after = overall["no_earlier_error"]["rate"], overall["after_an_error"]["rate"]
    wrong_answers = sum(not chain.final_right for chain in chains)
    width = max((k + 1 for k, _, _ in steps), default=0)
    return {
        "examples": len(chains),
        "steps": len(steps),
        "steps_parsed": len(steps) - reasons["unparseable"],
        "unparseable": reasons["unparseable"],
        "missing_steps": sum(chain.missing for chain in chains),
        "reasons": {r: reasons[r] for r in REASONS},
        **overall,
        # > 0: the model errs more once its own context holds an error (exposure bias proper)
        "exposure_bias": None if clean is None or after is None else after - clean,
        "final_answer_wrong": {"count": wrong_answers, "rate": wrong_answers / len(chains)},
        "per_position": [
            {"step": k + 1, **groups([s for s in steps if s[0] == k])} for k in range(width)
        ],
    }


def plot(result: dict[str, Any], path: Path) -> Path:
    """The local error rate per step position with and without an earlier error, and the two
    conditional rates over all steps with their counts."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    by_step, overall = fig.subplots(1, 2)
    positions = result["per_position"]
    x = [p["step"] for p in positions]
    for key, label in GROUPS.items():
        rates = [np.nan if p[key]["rate"] is None else p[key]["rate"] for p in positions]
        by_step.plot(x, rates, marker="o", label=label)
    all_steps = [p["all_steps"]["rate"] for p in positions]
    by_step.plot(x, all_steps, color="grey", linestyle="--", label="all steps")
    by_step.set(title="Local error rate per step", xlabel="step", ylabel="P(local error)")
    by_step.set_ylim(0, 1)
    by_step.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_step.grid(alpha=0.3)
    by_step.legend()
    groups = [result[key] for key in GROUPS]
    overall.bar(list(GROUPS.values()), [g["rate"] or 0 for g in groups], color=["C0", "C1"])
    for i, g in enumerate(groups):
        overall.annotate(
            f"{g['local_errors']}/{g['steps']}", (i, (g["rate"] or 0) + 0.01), ha="center"
        )
    overall.set(title="P(local error), over all steps", ylabel="P(local error)", ylim=(0, 1))
    wrong = result["final_answer_wrong"]
    fig.suptitle(
        f"Induced against propagated errors: {result['generations']} ({result['examples']} "
        f"answers, {result['steps_parsed']} steps parsed, final answer wrong {wrong['rate']:.3f})"
    )
    return save(fig, path)


def _rate_text(group: dict[str, Any]) -> str:
    rate = "n/a" if group["rate"] is None else f"{group['rate']:.3f}"
    return f"{rate} ({group['local_errors']}/{group['steps']})"


@dataclass
class ErrorPropagationArgs:
    generations: str = field(
        metadata={
            "help": 'a generate output of the synthetic math task: "id", "reference", "generation"'
        }
    )
    output_dir: str = field(
        metadata={"help": "folder for error_propagation.json and error_propagation.png"}
    )
    correction_marker: str = field(
        default=CORRECTION_MARKER,
        metadata={
            "help": "a self-correcting generation is judged on its text after the last marker"
        },
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    (args,) = parse_config((ErrorPropagationArgs,), argv)
    result = {
        "generations": args.generations,
        **summarise(read_chains(args.generations, args.correction_marker)),
    }
    output = Path(args.output_dir)
    write_json(output / "error_propagation.json", result)
    plot(result, output / "error_propagation.png")
    print(
        f"P(local error | an earlier error) {_rate_text(result['after_an_error'])}, "
        f"P(local error | none) {_rate_text(result['no_earlier_error'])}; "
        f"{result['steps_parsed']} steps parsed, {result['unparseable']} unparseable; "
        f"final answer wrong {result['final_answer_wrong']['rate']:.3f}",
        flush=True,
    )
    print(f"wrote {output}/error_propagation.json and {output}/error_propagation.png", flush=True)
    return result


if __name__ == "__main__":
    run_tool(main)
