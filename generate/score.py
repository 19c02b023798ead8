"""Score a generation file and save the summary and the per-example results.

    python -m generate.score --generations runs/demo/generations.jsonl --task math \\
        [--output summary.json]
    python -m generate.score --generations tldr.jsonl --task summarization --judge MODEL

Without --output the summary goes beside the generations (`<name>.summary.json`); the
per-example results go beside the summary (`<summary name>.examples.jsonl`). Every score comes
with a 95% bootstrap interval. `--judge MODEL` (a local folder or a hub name; --help names the
suggested one, `generate.judge.DEFAULT_JUDGE`) adds a pairwise win rate against the reference,
judged by that local causal LM (qa needs it); see generate/judge.py and docs/evaluation.md.

A self-correcting generation (RAC's draft, marker, second answer) is scored on its text after the
last marker; for math and postfix the summary adds the first pass's score (the draft, before the
first marker) and the flips between the passes, right to wrong and wrong to right: whether the
second pass repairs drafts or breaks them (`data_tools.scoring.score_file`).

With --wandb_project, a wandb run (job type "score") gets the scores and their intervals as
summary metrics, a table of the first --wandb_samples examples (prompt, reference, generation,
their scores) and the generations, summary and per-example results as an artifact.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from data_tools.atomic import write_together
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.scoring import JUDGED_TASKS, PICKS, ROUGE_TYPES, SCORED_TASKS, score_file
from data_tools.sources import jsonl_objects
from generate.judge import DEFAULT_JUDGE, DEFAULT_PROMPT, PairwiseJudge
from methods.correction import CORRECTION_MARKER
from runtime.tracking import Tracker


def _line(summary: dict, key: str) -> str:
    lo, hi = summary[f"{key}_ci"]
    return f"{key}: {summary[key]:.4f} [{lo:.4f}, {hi:.4f}]"


def format_summary(summary: dict) -> str:
    """One line per score with its 95% interval."""
    lines = []
    if "exact_match" in summary:
        lines.append(_line(summary, "exact_match") + f" ({summary['correct']}/{summary['n']})")
    if "first_pass_exact_match" in summary:
        lines.append(
            _line(summary, "first_pass_exact_match")
            + f" ({summary['first_pass_correct']}/{summary['n']}; exact_match is the second "
            f"pass's), flips: {summary['right_to_wrong']} right->wrong, "
            f"{summary['wrong_to_right']} wrong->right"
        )
    lines += [_line(summary, k) for k in ROUGE_TYPES if k in summary]
    if "win_rate" in summary:
        counts = f"{summary['wins']} wins, {summary['ties']} ties, {summary['losses']} losses"
        lines.append(_line(summary, "win_rate") + f" ({counts}; judge {summary['judge']['model']})")
    if "exact_match" not in summary:
        lines.append(f"n: {summary['n']}")
    return "\n".join(lines)


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's numbers as flat metrics: each interval as `<score>_ci_low/_ci_high`."""
    metrics = {}
    for key, value in summary.items():
        if key.endswith("_ci"):
            metrics[f"{key}_low"], metrics[f"{key}_high"] = value
        elif isinstance(value, int | float):
            metrics[key] = value
    return metrics


def sample_table(
    generations: Path, examples: list[dict[str, Any]], n: int
) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the first `n` examples: id, prompt, reference, generation, then
    their per-example scores (the judge's verdicts as JSON text)."""
    rows = [row for _, row in islice(jsonl_objects(generations), n)]
    scores = [k for k in examples[0] if k != "id"] if examples else []
    columns = ["id", "prompt", "reference", "generation", *scores]
    table = []
    for row, e in zip(rows, examples, strict=False):
        values = [
            e[k] if isinstance(e[k], str | int | float | None) else json.dumps(e[k]) for k in scores
        ]
        table.append(
            [row["id"], row.get("prompt", ""), row["reference"], row["generation"], *values]
        )
    return columns, table


@dataclass
class ScoreArgs:
    generations: str = field(metadata={"help": 'jsonl with "id", "generation", "reference"'})
    task: str = field(metadata={"help": ", ".join(SCORED_TASKS)})
    output: str | None = field(
        default=None, metadata={"help": "summary json (default: beside the generations)"}
    )
    pick: str = field(
        default="last",
        metadata={
            "help": "math: which answer counts when a generation gives several: " + ", ".join(PICKS)
        },
    )
    correction_marker: str = field(
        default=CORRECTION_MARKER,
        metadata={
            "help": "a self-correcting generation is scored on its text after the last marker"
        },
    )
    judge: str | None = field(
        default=None,
        metadata={
            "help": "judge against the reference with this local causal LM (a folder or a hub "
            f"name), e.g. {DEFAULT_JUDGE}; qa needs one"
        },
    )
    judge_prompt: str = field(default=str(DEFAULT_PROMPT), metadata={"help": "prompt template"})
    judge_margin: float = field(
        default=0.0, metadata={"help": 'a tie when |logit("1") - logit("2")| is at most this'}
    )
    judge_batch_size: int = 8
    wandb_project: str | None = field(
        default=None, metadata={"help": "log the scores, samples and files to wandb"}
    )
    wandb_group: str | None = field(default=None, metadata={"help": "wandb group (a pipeline's)"})
    run_name: str | None = field(
        default=None, metadata={"help": "wandb run name (default: the summary's file name)"}
    )
    wandb_samples: int = field(default=50, metadata={"help": "examples in the sample table"})

    def __post_init__(self) -> None:
        if self.task not in SCORED_TASKS:
            raise ValueError(f"task must be one of {', '.join(SCORED_TASKS)}, got {self.task!r}")
        if self.pick not in PICKS:
            raise ValueError(f"pick must be one of {', '.join(PICKS)}, got {self.pick!r}")
        if self.judge and self.task not in JUDGED_TASKS:
            raise ValueError(
                f"judge scores {', '.join(JUDGED_TASKS)}; {self.task} is scored by exact match"
            )
        if self.task == "qa" and not self.judge:
            raise ValueError(
                f"qa is scored by a judge only: give --judge MODEL (e.g. {DEFAULT_JUDGE})"
            )


def main(argv: Sequence[str] | None = None) -> None:
    (args,) = parse_config((ScoreArgs,), None if argv is None else list(argv))
    generations = Path(args.generations)
    out = Path(args.output) if args.output else generations.with_suffix(".summary.json")
    judge = None
    if args.judge:
        judge = PairwiseJudge(
            args.judge, args.judge_prompt, args.judge_margin, args.judge_batch_size
        )
    scores = score_file(generations, args.task, args.correction_marker, pick=args.pick, judge=judge)
    examples = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in scores["examples"])
    summary = json.dumps(scores["summary"], indent=2, ensure_ascii=False) + "\n"
    write_together({out.with_suffix(".examples.jsonl"): examples, out: summary})
    print(format_summary(scores["summary"]))
    config = asdict(args)
    name = args.run_name or out.name.removesuffix(".json")
    with Tracker(
        args.wandb_project,
        str(out.parent),
        config,
        name,
        "score",
        args.wandb_group,
        id_file=Path(f"{out}.wandb_run_id"),
    ) as tracker:
        tracker.summary(summary_metrics(scores["summary"]))
        tracker.log_table(
            "samples", *sample_table(generations, scores["examples"], args.wandb_samples)
        )
        tracker.log_artifact("generations", generations, out, out.with_suffix(".examples.jsonl"))


if __name__ == "__main__":
    run_tool(main)
