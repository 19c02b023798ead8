"""The causal LM loss, from the logits of the trained positions only.

A model's forward with `labels` projects every position onto the vocabulary, prompt and padding
included, and keeps those logits (and their fp32 copy, and the softmax's) for the backward pass:
with a large vocabulary they dominate activation memory. Here the model is asked, through
`logits_to_keep` as a boolean mask (transformers >= 5.21), for the logits of the positions whose
next token is trained, and the loss is the same sum of cross-entropies over them
(bench/loss_memory.py measures what it saves). Position t predicts the token at t + 1, as in the
model's own loss; packed rows mask each example's first label, so no position predicts across
an example boundary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data_tools.tokenization import IGNORE_INDEX


def causal_lm_loss(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], num_items: int
) -> torch.Tensor:
    """The sum of the cross-entropies of every trained token of `inputs` (a collated batch, with
    `labels`) divided by `num_items`: 1 for the sum, the global batch's trained tokens for its
    mean. `model` is the model or its DeepSpeed engine, called once, without a cache (packed rows
    would attend across examples through one)."""
    labels = inputs["labels"]
    trained = torch.zeros_like(labels, dtype=torch.bool)
    trained[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    logits = model(
        **{k: v for k, v in inputs.items() if k != "labels"},
        logits_to_keep=trained,
        use_cache=False,
    ).logits  # (trained tokens, vocabulary)
    targets = labels[:, 1:][trained[:, :-1]]
    return F.cross_entropy(logits.float(), targets, reduction="sum") / num_items
