"""What the dry runs of `train` and `generate` share: the world size the launcher set, the
model's config and size without its weights, the wandb paths a run writes, printing on rank 0.

The world size is the launcher's (`WORLD_SIZE`, as `deepspeed` and slurm/ranks.sh set it), 1 for
a plain `python` run; under a launcher only rank 0 prints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from peft import PeftConfig
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from runtime import lora
from runtime.args import ModelArgs
from runtime.modeling import load_model


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def print_on_main(lines: Sequence[str]) -> None:
    if os.environ.get("RANK", "0") == "0":
        print("\n".join(lines), flush=True)


def model_config(tokenizer, model_args: ModelArgs) -> PretrainedConfig:
    """The config the run's model will have (a LoRA adapter folder: its base's)."""
    path = model_args.model_name_or_path
    if path is None:
        with torch.device("meta"):
            return load_model(tokenizer, config_file=model_args.model_config).config
    if lora.is_adapter(path):
        path = PeftConfig.from_pretrained(path).base_model_name_or_path
    return AutoConfig.from_pretrained(path)


def count_parameters(config: PretrainedConfig, add_lora: Callable | None = None) -> tuple[int, int]:
    """(all, trainable) parameters of the model built from `config` on the meta device, after
    `add_lora` when the run adds adapters: nothing is allocated."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        if add_lora is not None:
            model = add_lora(model)
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def wandb_paths(project: str | None, folder: Path, id_file: Path) -> list[str]:
    return [f"{id_file}", f"{folder / 'wandb'}/"] if project else []
