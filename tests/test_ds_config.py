"""DeepSpeed configs: "auto" filled from the run, contradictions refused with what to change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.ds_config import ConfigError, fill_ds_config, resolve_precision, zero_stage

RUN = dict(
    micro_batch_size=4,
    gradient_accumulation_steps=2,
    world_size=2,
    max_grad_norm=1.0,
    hidden_size=64,
)


@pytest.mark.parametrize("path", sorted(Path("ds_configs").glob("*.json")))
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_every_shipped_config_fills(path, precision):
    config = fill_ds_config(str(path), precision=precision, **RUN)
    assert config["train_batch_size"] == 16
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 2
    assert config["gradient_clipping"] == 1.0
    assert config["bf16"]["enabled"] == (precision == "bf16")
    assert config["fp16"]["enabled"] == (precision == "fp16")
    assert "auto" not in json.dumps(config)
    assert zero_stage(config) == int(path.stem[4])


def write(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_a_batch_size_that_contradicts_the_run_is_refused(tmp_path):
    path = write(tmp_path, {"train_batch_size": 32, "zero_optimization": {"stage": 2}})
    with pytest.raises(ConfigError) as e:
        fill_ds_config(path, precision="fp32", **RUN)
    message = str(e.value)
    assert path in message and "train_batch_size is 32" in message
    assert "micro_batch_size 4 x gradient_accumulation_steps 2 x world size 2 = 16" in message
    assert '"auto"' in message


def test_precision_that_contradicts_the_run_is_refused(tmp_path):
    path = write(tmp_path, {"bf16": {"enabled": True}})
    with pytest.raises(
        ConfigError, match=r"enabled is True but the run needs False: precision is fp32"
    ):
        fill_ds_config(path, precision="fp32", **RUN)


def test_optimizer_section_is_refused(tmp_path):
    path = write(tmp_path, {"optimizer": {"type": "AdamW"}})
    with pytest.raises(ConfigError, match="remove the 'optimizer' section"):
        fill_ds_config(path, precision="fp32", **RUN)


def test_unreadable_config_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json: cannot read a DeepSpeed config"):
        fill_ds_config(str(path), precision="fp32", **RUN)


def test_an_auto_that_nothing_fills_is_refused(tmp_path):
    path = write(tmp_path, {"zero_optimization": {"stage": 2, "sub_group_size": "auto"}})
    with pytest.raises(ConfigError, match="zero_optimization.sub_group_size"):
        fill_ds_config(path, precision="fp32", **RUN)


def test_precision_auto_is_fp32_on_cpu():
    assert resolve_precision("auto") == "fp32"
    with pytest.raises(ConfigError, match="precision must be one of"):
        resolve_precision("fp8")


def test_the_auto_gradient_bucket_holds_a_small_model_whole_and_is_hidden_squared_when_large():
    def bucket(hidden_size: int) -> int:
        run = RUN | {"hidden_size": hidden_size}
        config = fill_ds_config("ds_configs/zero2.json", precision="fp32", **run)
        return config["zero_optimization"]["reduce_bucket_size"]

    # The 1M tiny-llama (hidden 128) has about 1M parameters: one bucket, not one per weight.
    assert bucket(128) == 2**22 > 1_000_000
    assert bucket(2048) == 2048 * 2048 == 2**22
    assert bucket(4096) == 4096 * 4096  # transformers' rule for the models it was made for
