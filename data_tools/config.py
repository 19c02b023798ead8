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


def parse_config(
    dataclass_types: tuple[type, ...], argv: list[str] | None = None
) -> tuple[Any, ...]:
    """Fill the dataclasses from `--config FILE.yaml` (if given), then from the other flags.

    Unknown YAML keys are refused with the file named; the `--local_rank` flag that the
    `deepspeed` launcher appends is dropped (the rank comes from the environment).
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
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"{path}: expected a mapping of option: value")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"{path}: unknown option(s) {unknown}; run with --help for the list")
        parser.set_defaults(**values)
        # Fields required by the dataclasses are satisfied by the YAML file.
        for action in parser._actions:
            if action.dest in values:
                action.required = False
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
