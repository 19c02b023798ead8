"""YAML configs with command-line overrides, through HfArgumentParser."""

from __future__ import annotations

import pytest

from data_tools.config import parse_config
from data_tools.schema import DataError
from runtime.args import DataArgs, ModelArgs
from train.args import TrainArgs


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: a.jsonl\noutput_dir: out\nlearning_rate: 0.01\nmax_steps: 7\n")
    model, data, train = parse_config(
        (ModelArgs, DataArgs, TrainArgs),
        ["--config", str(path), "--max_steps", "9", "--local_rank=1"],
    )
    assert data.data == "a.jsonl" and train.output_dir == "out"
    assert train.learning_rate == 0.01 and train.max_steps == 9
    assert model.model_name_or_path is None


def test_unknown_yaml_key_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: a.jsonl\noutput_dir: out\nlearning_rat: 0.01\n")
    with pytest.raises(DataError, match=r"run.yaml: unknown option\(s\) \['learning_rat'\]"):
        parse_config((ModelArgs, DataArgs, TrainArgs), ["--config", str(path)])
