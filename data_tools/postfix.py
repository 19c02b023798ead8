"""Infix to postfix: a transduction whose output the input fully determines, with long outputs.

A model that slips can find its place again by reading the input, the setting in which
scheduled sampling helped (Bengio et al. 2015), unlike the chained math, where a wrong value
leaves no right continuation. The question shows an arithmetic expression of single-character
operands, `+ - * /` and brackets, one space between symbols; the answer is the postfix (reverse
Polish) form of its parse (usual precedence, left-associative), one space between symbols:
`a - ( b + c ) * d` -> `a b c + d * -`. The `test_long` split has more operators than the others
(longer inputs and outputs, the same skill): the length shift. Rows are GSM8K-shaped
(`question`, `answer`, `num_steps`: the operators), so the math task's loader reads them.
Generation is deterministic given the seed and the difficulty knobs.

    python -m data_tools.postfix --output_dir runs/postfix/data [--train 20000] [--test_long 2000]
"""

from __future__ import annotations

import random
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_tools.atomic import write_json, write_jsonl
from data_tools.config import parse_config
from data_tools.distinct import draw_distinct
from data_tools.errors import run_tool

PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
QUESTION_PREFIX = "Write in postfix notation: "
LONG_SPLIT = "test_long"  # drawn with the long_* operator counts, every other split in range
SPLITS = ("train", "validation", "test", LONG_SPLIT)

# An operand, or (operator, left, right).
Tree = str | tuple[str, "Tree", "Tree"]


@dataclass(frozen=True)
class Difficulty:
    """The knobs: how many operators (in range, and in the long split), how many redundant
    brackets, which operators and operands.

    A postfix answer with n operators has 2n + 1 symbols, so the defaults give answers of 21-51
    symbols in range and 61-81 in the long split."""

    min_operators: int = field(
        default=10, metadata={"help": "fewest operators per expression outside test_long"}
    )
    max_operators: int = field(
        default=25, metadata={"help": "most operators per expression outside test_long"}
    )
    long_min_operators: int = field(
        default=30, metadata={"help": f"fewest operators in the {LONG_SPLIT} split"}
    )
    long_max_operators: int = field(
        default=40, metadata={"help": f"most operators in the {LONG_SPLIT} split"}
    )
    bracket_probability: float = field(
        default=0.1,
        metadata={
            "help": "chance that a sub-expression the precedence does not need brackets around "
            "gets them anyway (the needed ones are always there)"
        },
    )
    operators: str = field(
        default="+-*/", metadata={"help": "the operators drawn from, a subset of '+-*/'"}
    )
    operands: str = field(
        default=string.ascii_lowercase,
        metadata={"help": "the single-character operands drawn from: ASCII letters or digits"},
    )

    def __post_init__(self) -> None:
        if not 1 <= self.min_operators <= self.max_operators:
            raise ValueError(
                "need 1 <= min_operators <= max_operators, got "
                f"{self.min_operators}, {self.max_operators}"
            )
        if not self.max_operators < self.long_min_operators <= self.long_max_operators:
            raise ValueError(
                "need max_operators < long_min_operators <= long_max_operators (the long split "
                f"is longer), got {self.max_operators}, {self.long_min_operators}, "
                f"{self.long_max_operators}"
            )
        if not 0 <= self.bracket_probability <= 1:
            raise ValueError(
                f"bracket_probability must be in [0, 1], got {self.bracket_probability}"
            )
        if not self.operators or set(self.operators) - set(PRECEDENCE):
            raise ValueError(
                f"operators must be a non-empty subset of '+-*/', got {self.operators!r}"
            )
        if not self.operands or not all(c.isascii() and c.isalnum() for c in self.operands):
            raise ValueError(
                f"operands must be a non-empty string of ASCII letters or digits, "
                f"got {self.operands!r}"
            )

    def operator_range(self, split: str) -> tuple[int, int]:
        """The fewest and most operators of the split's expressions."""
        if split == LONG_SPLIT:
            return self.long_min_operators, self.long_max_operators
        return self.min_operators, self.max_operators


def random_tree(n_operators: int, d: Difficulty, rng: random.Random) -> Tree:
    """An expression tree with `n_operators` operators; each node splits the remaining ones
    between its sides uniformly (the shapes of random binary search trees)."""
    if n_operators == 0:
        return rng.choice(d.operands)
    left = rng.randint(0, n_operators - 1)
    return (
        rng.choice(d.operators),
        random_tree(left, d, rng),
        random_tree(n_operators - 1 - left, d, rng),
    )


def infix(tree: Tree, bracket_probability: float, rng: random.Random) -> list[str]:
    """The tree's infix symbols, bracketed wherever the parse needs it to give back this tree
    (`_side`); other compound sides get brackets with `bracket_probability`, which do not
    change the parse."""
    if isinstance(tree, str):
        return [tree]
    op, left, right = tree
    return [
        *_side(left, op, False, bracket_probability, rng),
        op,
        *_side(right, op, True, bracket_probability, rng),
    ]


def _side(
    side: Tree, parent: str, is_right: bool, bracket_probability: float, rng: random.Random
) -> list[str]:
    """A side's infix symbols, bracketed when it binds more loosely than its parent, or as
    loosely on the right: the parse is left-associative, so `a - ( b - c )` needs them, and so
    does `a + ( b + c )`, whose postfix `a b c + +` is not that of `a + b + c`."""
    symbols = infix(side, bracket_probability, rng)
    if isinstance(side, str):
        return symbols
    inner, outer = PRECEDENCE[side[0]], PRECEDENCE[parent]
    needed = inner < outer or (is_right and inner == outer)
    return ["(", *symbols, ")"] if needed or rng.random() < bracket_probability else symbols


def postfix(tree: Tree) -> list[str]:
    """The tree's postfix symbols: left side, right side, operator."""
    if isinstance(tree, str):
        return [tree]
    op, left, right = tree
    return [*postfix(left), *postfix(right), op]


def make_problem(n_operators: int, d: Difficulty, rng: random.Random) -> dict:
    """One problem as a GSM8K row (`question`, `answer`) plus its operators as `num_steps`,
    the field the loader reads as a problem's length."""
    tree = random_tree(n_operators, d, rng)
    return {
        "question": QUESTION_PREFIX + " ".join(infix(tree, d.bracket_probability, rng)),
        "answer": " ".join(postfix(tree)),
        "num_steps": n_operators,
    }


def make_splits(sizes: dict[str, int], d: Difficulty, seed: int) -> dict[str, list[dict]]:
    """Draw each split's distinct problems in turn (no question in two splits), the long split's
    with its own operator counts."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits = {}
    for split, n in sizes.items():
        low, high = d.operator_range(split)
        rows = draw_distinct(
            n,
            lambda low=low, high=high: make_problem(rng.randint(low, high), d, rng),
            seen,
            f"{split} problems",
        )
        rows = [{"id": f"postfix-{split}-{i:06d}", **row} for i, row in enumerate(rows)]
        splits[split] = rows
    return splits


def write_splits(out_dir: str | Path, sizes: dict[str, int], d: Difficulty, seed: int) -> None:
    """Write `<split>.jsonl` for each split and `difficulty.json` recording how they were made."""
    out_dir = Path(out_dir)
    for split, rows in make_splits(sizes, d, seed).items():
        write_jsonl(out_dir / f"{split}.jsonl", rows)
    write_json(out_dir / "difficulty.json", {"seed": seed, "sizes": sizes, **asdict(d)})


@dataclass
class PostfixArgs:
    output_dir: str = field(
        metadata={"help": f"folder for train/validation/test/{LONG_SPLIT}.jsonl"}
    )
    train: int = field(default=20000, metadata={"help": "problems in the train split"})
    validation: int = field(default=500, metadata={"help": "problems in the validation split"})
    test: int = field(default=500, metadata={"help": "problems in the test split"})
    test_long: int = field(
        default=2000, metadata={"help": "problems in the test_long split (more operators)"}
    )
    seed: int = field(default=0, metadata={"help": "seeds the drawing of every problem"})

    def __post_init__(self) -> None:
        for split in SPLITS:
            if getattr(self, split) < 0:
                raise ValueError(f"{split} must be 0 or more problems, got {getattr(self, split)}")


def main(argv: list[str] | None = None) -> None:
    args, d = parse_config((PostfixArgs, Difficulty), argv)
    sizes = {split: getattr(args, split) for split in SPLITS}
    write_splits(args.output_dir, sizes, d, args.seed)
    print(f"wrote {sizes} to {args.output_dir}")


if __name__ == "__main__":
    run_tool(main)
