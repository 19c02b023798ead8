"""A synthetic math word-problem task in GSM8K's format, for machines without data or a GPU.

Each problem is a chain of operations on one quantity; the answer works through it one line per
step with GSM8K's calculator annotations (`<<a+b=c>>`) and ends with `#### N`. Every step reads
the previous step's result, so an early slip carries to the end: the exposure bias the project
studies. Generation is deterministic given the seed and the difficulty knobs.

Length-shifted test splits (`--shifted_steps 6-8 10` writes `test_6to8.jsonl`, `test_10.jsonl`)
hold longer chains of the same steps. Each step line restates the value it starts from, so a
longer chain needs no new skill, only staying on track over a longer own context.

    python -m data_tools.synthetic_math --output_dir runs/demo/data [--train 20000] [--max_steps 5]
        [--shifted_steps 6-8 10] [--shifted_size 2000]
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from itertools import islice
from pathlib import Path

from data_tools.atomic import write_json, write_jsonl
from data_tools.config import parse_config
from data_tools.distinct import draw_distinct
from data_tools.errors import run_tool

NAMES = ("Tom", "Ana", "Ravi", "Mia", "Leo", "Zoe", "Sam", "Ivy", "Omar", "Lena")
ITEMS = ("apples", "coins", "books", "stamps", "shells", "cards", "marbles", "pens")
QUESTION_STEP = {
    "+": ("Then {name} buys {b} more.", "Then {name} finds {b} more."),
    "-": ("Then {name} gives away {b}.", "Then {name} loses {b}."),
    "*": ("Then {name} ends up with {b} times as many.",),
    "/": ("Then {name} keeps one of {b} equal shares.",),
}


@dataclass(frozen=True)
class Difficulty:
    """The knobs: how many steps, how large the numbers, which operations.

    `max_operand` bounds what is added or subtracted; `*` and `/` always use 2 or 3."""

    min_steps: int = field(default=2, metadata={"help": "fewest operations per problem"})
    max_steps: int = field(default=5, metadata={"help": "most operations per problem"})
    max_start: int = field(default=20, metadata={"help": "largest starting quantity"})
    max_operand: int = field(default=20, metadata={"help": "largest number added or subtracted"})
    max_value: int = field(
        default=99, metadata={"help": "largest quantity at any step (and largest answer)"}
    )
    operations: str = field(
        default="+-*", metadata={"help": "the operations drawn from, a subset of '+-*/'"}
    )

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(
                f"need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}"
            )
        if not 2 <= self.max_start <= self.max_value:
            raise ValueError(
                f"need 2 <= max_start <= max_value, got {self.max_start}, {self.max_value}"
            )
        if self.max_operand < 1:
            raise ValueError(f"max_operand must be at least 1, got {self.max_operand}")
        bad = set(self.operations) - set(QUESTION_STEP)
        if bad or not self.operations:
            raise ValueError(
                f"operations must be a non-empty subset of '+-*/', got {self.operations!r}"
            )


def _next_step(x: int, d: Difficulty, rng: random.Random) -> tuple[str, int, int] | None:
    """Pick an operation and operand that keep the value an integer in [1, max_value]."""
    choices: list[tuple[str, list[int]]] = []
    for op in d.operations:
        if op == "+":
            operands = range(1, min(d.max_operand, d.max_value - x) + 1)
        elif op == "-":
            operands = range(1, min(d.max_operand, x - 1) + 1)
        elif op == "*":
            operands = [b for b in (2, 3) if x * b <= d.max_value]
        else:
            operands = [b for b in (2, 3) if x % b == 0]
        if operands:
            choices.append((op, list(operands)))
    if not choices:
        return None
    op, operands = rng.choice(choices)
    b = rng.choice(operands)
    y = {"+": x + b, "-": x - b, "*": x * b, "/": x // b}[op]
    return op, b, y


def make_problem(d: Difficulty, rng: random.Random) -> dict:
    """One problem as a GSM8K row (`question`, `answer`) plus its number of steps."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    x = rng.randint(2, d.max_start)
    n_steps = rng.randint(d.min_steps, d.max_steps)
    question = [f"{name} has {x} {item}."]
    answer = []
    for _ in range(n_steps):
        step = _next_step(x, d, rng)
        if step is None:
            break
        op, b, y = step
        question.append(rng.choice(QUESTION_STEP[op]).format(name=name, b=b))
        answer.append(f"{name} now has {x}{op}{b} = <<{x}{op}{b}={y}>>{y} {item}.")
        x = y
    question.append(f"How many {item} does {name} have now?")
    answer.append(f"#### {x}")
    return {
        "question": " ".join(question),
        "answer": "\n".join(answer),
        "num_steps": len(answer) - 1,
    }


def _long_enough(d: Difficulty, rng: random.Random) -> dict | None:
    """A problem that reaches `d.min_steps` (a chain ends early where no operation keeps the
    value in range), or None."""
    row = make_problem(d, rng)
    return row if row["num_steps"] >= d.min_steps else None


def make_splits(
    sizes: dict[str, int],
    d: Difficulty,
    seed: int,
    shifted: Mapping[str, Difficulty] | None = None,
) -> dict[str, list[dict]]:
    """Draw distinct problems (no question in two splits) and deal them out in order.

    A split named in `shifted` (a test of longer chains) is drawn with its own difficulty from
    its own random stream after the others, so adding it leaves them as they were, and holds
    only problems that reach its `min_steps`. The other splits keep chains that ended early, as
    they always have: the same seed must give the same problems."""
    shifted = shifted or {}
    if unsized := sorted(set(shifted) - set(sizes)):
        raise ValueError(f"shifted splits {unsized} have no size")
    seen: set[str] = set()
    plain = {split: n for split, n in sizes.items() if split not in shifted}
    rng = random.Random(seed)
    rows = iter(draw_distinct(sum(plain.values()), lambda: make_problem(d, rng), seen))
    drawn = {split: list(islice(rows, n)) for split, n in plain.items()}
    for split, sd in shifted.items():
        drawn[split] = draw_distinct(
            sizes[split],
            partial(_long_enough, sd, random.Random(f"{seed}-shifted-{split}")),
            seen,
            f"{split} problems of at least {sd.min_steps} steps",
        )
    return {
        split: [{"id": f"synth-{split}-{i:06d}", **r} for i, r in enumerate(drawn[split])]
        for split in sizes
    }


def write_splits(
    out_dir: str | Path,
    sizes: dict[str, int],
    d: Difficulty,
    seed: int,
    shifted: Mapping[str, Difficulty] | None = None,
) -> None:
    """Write `<split>.jsonl` for each split and `difficulty.json` recording how they were made
    (the shifted splits' difficulties under `shifted`, only when there are any)."""
    out_dir = Path(out_dir)
    for split, rows in make_splits(sizes, d, seed, shifted).items():
        write_jsonl(out_dir / f"{split}.jsonl", rows)
    record = {"seed": seed, "sizes": sizes, **asdict(d)}
    if shifted:
        record["shifted"] = {split: asdict(sd) for split, sd in shifted.items()}
    write_json(out_dir / "difficulty.json", record)


def step_ranges(specs: list[str]) -> dict[str, tuple[int, int]]:
    """Name each shifted split by its steps: `6-8` is `test_6to8` with (6, 8), `10` is
    `test_10` with (10, 10)."""
    ranges: dict[str, tuple[int, int]] = {}
    for spec in specs:
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", str(spec))  # str: YAML reads `10` as a number
        if m is None:
            raise ValueError(
                f"shifted_steps: expected a count or range like 10 or 6-8, got {spec!r}"
            )
        lo, hi = int(m[1]), int(m[2] or m[1])
        if not 1 <= lo <= hi:
            raise ValueError(f"shifted_steps: need 1 <= first <= last, got {spec!r}")
        name = f"test_{lo}to{hi}" if lo < hi else f"test_{lo}"
        if name in ranges:
            raise ValueError(f"shifted_steps: {spec!r} repeats {name}")
        ranges[name] = (lo, hi)
    return ranges


@dataclass
class SyntheticMathArgs:
    output_dir: str = field(
        metadata={"help": "folder for train/validation/test.jsonl and the shifted splits"}
    )
    train: int = field(default=20000, metadata={"help": "problems in the train split"})
    validation: int = field(default=500, metadata={"help": "problems in the validation split"})
    test: int = field(default=500, metadata={"help": "problems in the test split"})
    seed: int = field(default=0, metadata={"help": "seeds the drawing of every problem"})
    shifted_steps: list[str] = field(
        default_factory=list,
        metadata={
            "help": "step counts of extra length-shifted test splits, each a range or one count:"
            " `6-8 10` writes test_6to8.jsonl and test_10.jsonl; the other splits do not change"
        },
    )
    shifted_size: int = field(default=2000, metadata={"help": "problems in each shifted split"})

    def __post_init__(self) -> None:
        for split in ("train", "validation", "test", "shifted_size"):
            if getattr(self, split) < 0:
                raise ValueError(f"{split} must be 0 or more problems, got {getattr(self, split)}")
        step_ranges(self.shifted_steps)  # refuses a bad range before anything is drawn


def main(argv: list[str] | None = None) -> None:
    args, d = parse_config((SyntheticMathArgs, Difficulty), argv)
    sizes = {"train": args.train, "validation": args.validation, "test": args.test}
    shifted = {
        split: replace(d, min_steps=lo, max_steps=hi)
        for split, (lo, hi) in step_ranges(args.shifted_steps).items()
    }
    sizes |= dict.fromkeys(shifted, args.shifted_size)
    write_splits(args.output_dir, sizes, d, args.seed, shifted)
    print(f"wrote {sizes} to {args.output_dir}")


if __name__ == "__main__":
    run_tool(main)
