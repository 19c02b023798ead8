"""The held-out validation split: seeded, disjoint, complete, rows copied as they are."""

from __future__ import annotations

import json

import pytest

from data_tools.atomic import write_jsonl
from data_tools.holdout import holdout, main


def test_holdout_splits_every_row_once(tmp_path) -> None:
    rows = [{"question": f"q{i}", "answer": f"#### {i}", "extra": [i]} for i in range(30)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    main(
        ["--data", str(tmp_path / "train.jsonl"), "--output_dir", str(tmp_path / "a")]
        + ["--validation_size", "5"]
    )
    holdout(tmp_path / "train.jsonl", 7, 0, tmp_path / "b")

    def read(path):
        return [json.loads(line) for line in path.open()]

    train, validation = read(tmp_path / "b/train.jsonl"), read(tmp_path / "b/validation.jsonl")
    assert len(validation) == 7 and len(train) == 23
    assert sorted(train + validation, key=lambda r: r["extra"]) == rows  # nothing lost or changed
    assert train == [r for r in rows if r not in validation]  # in the file's order
    holdout(tmp_path / "train.jsonl", 7, 0, tmp_path / "c")
    assert read(tmp_path / "c/validation.jsonl") == validation  # seeded
    with pytest.raises(ValueError, match=r"validation_size must be between 1 and 29 .* got 30"):
        holdout(tmp_path / "train.jsonl", 30, 0, tmp_path / "d")
    assert not (tmp_path / "d").exists()
    assert len(read(tmp_path / "a/validation.jsonl")) == 5  # the command line
