"""Score a generation file and save the summary and the per-example results.

    python -m generate.score runs/demo/generations.jsonl --task math [--out summary.json]

Without --out the summary goes beside the generations (`<name>.summary.json`); the per-example
results go beside the summary (`<summary name>.examples.jsonl`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from data_tools.atomic import write_json, write_jsonl
from data_tools.scoring import ROUGE_TYPES, SCORED_TASKS, score_file


def format_summary(summary: dict) -> str:
    if summary["task"] == "math":
        return f"exact_match: {summary['exact_match']:.4f} ({summary['correct']}/{summary['n']})"
    return "\n".join(f"{k}: {summary[k]:.4f}" for k in ROUGE_TYPES) + f"\nn: {summary['n']}"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("generations", type=Path, help='jsonl with "id", "generation", "reference"')
    p.add_argument("--task", required=True, choices=SCORED_TASKS)
    p.add_argument("--out", type=Path, help="summary json (default: beside the generations)")
    args = p.parse_args(argv)
    out = args.out or args.generations.with_suffix(".summary.json")
    scores = score_file(args.generations, args.task)
    write_json(out, scores["summary"])
    write_jsonl(out.with_suffix(".examples.jsonl"), scores["examples"])
    print(format_summary(scores["summary"]))


if __name__ == "__main__":
    main()
