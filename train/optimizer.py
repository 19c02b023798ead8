"""The optimizer's parameter groups: weight decay on matrices only."""

from __future__ import annotations

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only, not on gains and biases; frozen weights (LoRA's base) are
    left out. Under ZeRO-3 a parameter's true shape is in `ds_shape`; DeepSpeed drops empty
    groups, so they are left out here too."""
    decay, no_decay = [], []
    for p in filter(lambda p: p.requires_grad, model.parameters()):
        (decay if len(getattr(p, "ds_shape", p.shape)) >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
