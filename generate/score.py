"""Score a generation file and save the summary and the per-example results.

    python -m generate.score runs/demo/generations.jsonl --task math [--out summary.json]
    python -m generate.score tldr.jsonl --task summarization --judge [MODEL]

Without --out the summary goes beside the generations (`<name>.summary.json`); the per-example
results go beside the summary (`<summary name>.examples.jsonl`). Every score comes with a 95%
bootstrap interval. `--judge` adds a pairwise win rate against the reference, judged by a local
causal LM (qa needs it); see generate/judge.py and docs/evaluation.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from data_tools.atomic import write_json, write_jsonl
from data_tools.scoring import JUDGED_TASKS, PICKS, ROUGE_TYPES, SCORED_TASKS, score_file
from generate.judge import DEFAULT_JUDGE, DEFAULT_PROMPT, PairwiseJudge


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


if __name__ == "__main__":
    main()
