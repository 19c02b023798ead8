"""Score a generation file and save the summary and the per-example results.

    python -m generate.score runs/demo/generations.jsonl --task math [--out summary.json]
    python -m generate.score tldr.jsonl --task summarization --judge [MODEL]

Without --out the summary goes beside the generations (`<name>.summary.json`); the per-example
results go beside the summary (`<summary name>.examples.jsonl`). Every score comes with a 95%
bootstrap interval. `--judge` adds a pairwise win rate against the reference, judged by a local
causal LM (qa needs it); see generate/judge.py and docs/evaluation.md.

With --wandb_project, a wandb run (job type "score") gets the scores and their intervals as
summary metrics, a table of the first --wandb_samples examples (prompt, reference, generation,
their scores) and the generations, summary and per-example results as an artifact.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from data_tools.atomic import write_json, write_jsonl
from data_tools.scoring import JUDGED_TASKS, PICKS, ROUGE_TYPES, SCORED_TASKS, score_file
from data_tools.sources import jsonl_objects
from generate.judge import DEFAULT_JUDGE, DEFAULT_PROMPT, PairwiseJudge
from runtime.tracking import Tracker


def _line(summary: dict, key: str) -> str:
    lo, hi = summary[f"{key}_ci"]
    return f"{key}: {summary[key]:.4f} [{lo:.4f}, {hi:.4f}]"


def format_summary(summary: dict) -> str:
    """One line per score with its 95% interval."""
    lines = []
    if "exact_match" in summary:
        lines.append(_line(summary, "exact_match") + f" ({summary['correct']}/{summary['n']})")
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


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("generations", type=Path, help='jsonl with "id", "generation", "reference"')
    p.add_argument("--task", required=True, choices=SCORED_TASKS)
    p.add_argument("--out", type=Path, help="summary json (default: beside the generations)")
    p.add_argument(
        "--pick",
        choices=PICKS,
        default="last",
        help="math: which answer counts when a generation gives several",
    )
    p.add_argument(
        "--judge",
        nargs="?",
        const=DEFAULT_JUDGE,
        metavar="MODEL",
        help=f"judge against the reference with this local causal LM (alone: {DEFAULT_JUDGE})",
    )
    p.add_argument("--judge_prompt", type=Path, default=DEFAULT_PROMPT, help="prompt template")
    p.add_argument(
        "--judge_margin",
        type=float,
        default=0.0,
        help='a tie when |logit("1") - logit("2")| is at most this',
    )
    p.add_argument("--judge_batch_size", type=int, default=8)
    p.add_argument("--wandb_project", help="log the scores, samples and files to wandb")
    p.add_argument("--wandb_group", help="wandb group (a pipeline's)")
    p.add_argument("--run_name", help="wandb run name (default: the summary's file name)")
    p.add_argument("--wandb_samples", type=int, default=50, help="examples in the sample table")
    args = p.parse_args(argv)
    if args.judge and args.task not in JUDGED_TASKS:
        p.error(f"--judge scores {', '.join(JUDGED_TASKS)}; {args.task} is scored by exact match")
    if args.task == "qa" and not args.judge:
        p.error("qa is scored by a judge only: give --judge [MODEL]")
    out = args.out or args.generations.with_suffix(".summary.json")
    judge = None
    if args.judge:
        judge = PairwiseJudge(
            args.judge, args.judge_prompt, args.judge_margin, args.judge_batch_size
        )
    scores = score_file(args.generations, args.task, pick=args.pick, judge=judge)
    write_json(out, scores["summary"])
    write_jsonl(out.with_suffix(".examples.jsonl"), scores["examples"])
    print(format_summary(scores["summary"]))
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
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
            "samples", *sample_table(args.generations, scores["examples"], args.wandb_samples)
        )
        tracker.log_artifact(
            "generations", args.generations, out, out.with_suffix(".examples.jsonl")
        )


if __name__ == "__main__":
    main()
