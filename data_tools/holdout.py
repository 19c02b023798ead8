"""Hold out a validation split from a training file that has none (GSM8K ships train and test
only), so that tuning never touches the test split.

    python -m data_tools.holdout --data ../shared/data/gsm8k/train.jsonl \\
        --validation_size 200 --seed 0 --output_dir runs/gsm8k/data

writes `output_dir`/train.jsonl (the rest, in the file's order) and `output_dir`/validation.jsonl
(a seeded random sample, in the file's order), both at once (a folder renamed into place). Rows
are copied as they are; a bad line stops with its file and line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from data_tools.atomic import atomic_dir, write_jsonl
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.schema import DataError
from data_tools.sources import jsonl_objects


@dataclass
class HoldoutArgs:
    data: str = field(metadata={"help": "the training jsonl to split"})
    output_dir: str = field(metadata={"help": "folder for train.jsonl and validation.jsonl"})
    validation_size: int = field(default=200, metadata={"help": "rows held out for validation"})
    seed: int = field(default=0, metadata={"help": "which rows are held out"})


def holdout(data: str | Path, validation_size: int, seed: int, output_dir: str | Path) -> None:
    rows = [row for _, row in jsonl_objects(data)]
    if not rows:
        raise DataError(str(data), None, "no rows to split")
    if not 0 < validation_size < len(rows):
        raise ValueError(
            f"validation_size must be between 1 and {len(rows) - 1} (the rows of {data}), "
            f"got {validation_size}"
        )
    held = set(random.Random(seed).sample(range(len(rows)), validation_size))
    with atomic_dir(output_dir) as folder:
        write_jsonl(folder / "train.jsonl", (r for i, r in enumerate(rows) if i not in held))
        write_jsonl(folder / "validation.jsonl", (r for i, r in enumerate(rows) if i in held))
    print(
        f"{data}: held out {validation_size} of {len(rows)} rows as validation (seed {seed}); "
        f"wrote {output_dir}/train.jsonl and validation.jsonl",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((HoldoutArgs,), argv)
    holdout(args.data, args.validation_size, args.seed, args.output_dir)


if __name__ == "__main__":
    run_tool(main)
