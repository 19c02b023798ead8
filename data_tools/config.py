"""Configs as data: a YAML file of HF-style dataclass fields, overridden on the command line.
Every tool parses its options here, the data tools too, so it sits in the lowest layer.

python -m train --config configs/sft_demo.yaml --learning_rate 1e-3
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from data_tools.errors import non_finite, open_input
from data_tools.schema import DataError


def read_config(path: Path) -> dict[str, Any]:
    """The options of a YAML config file. Everything wrong with the file is a `DataError` naming
    it (and the line, for YAML's own errors): no such file, not UTF-8, not YAML, not a mapping,
    a NaN or infinite value (`.nan`, `.inf`), which no option takes."""
    with open_input(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(str(path), None, f"invalid UTF-8 at byte {e.start}: {e.reason}") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise DataError(where, None, f"not valid YAML: {problem}") from None
    if not isinstance(values, dict):
        raise DataError(str(path), None, "expected a mapping of option: value")
    if (key := non_finite(values)) is not None:
        raise DataError(str(path), key, "not a finite number (.nan, .inf): no option takes one")
    return values


def parse_config(
    dataclass_types: tuple[type, ...], argv: list[str] | None = None
) -> tuple[Any, ...]:
    """Fill the dataclasses from `--config FILE.yaml` (if given), then from the other flags.

    Unknown YAML keys, like anything else wrong with the file (`read_config`), are a `DataError`
    naming it; the `--local_rank` flag that the `deepspeed` launcher appends is dropped (the
    rank comes from the environment).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [a for a in argv if not a.startswith("--local_rank")]
    parser = HfArgumentParser(dataclass_types, allow_abbrev=False)  # --out is not --output
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SystemExit("--config needs a YAML file")
        path = Path(argv[i + 1])
        del argv[i : i + 2]
        values = read_config(path)
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DataError(
                str(path), None, f"unknown option(s) {unknown}; run with --help for the list"
            )
        parser.set_defaults(**values)
        # Fields required by the dataclasses are satisfied by the YAML file.
        for action in parser._actions:
            if action.dest in values:
                action.required = False
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
