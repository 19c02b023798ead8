"""Gradient checkpointing as `train` sets it up (`gradient_checkpointing`, then LoRA's adapters
when `lora_rank` is set): the same loss and gradients as without it, with and without LoRA, and
fewer activation bytes kept for the backward pass."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from data_tools.collate import pad_right
from data_tools.schema import Example
from data_tools.synthetic_math import Difficulty, make_splits
from data_tools.tokenization import encode_examples
from runtime import lora
from runtime.modeling import load_model
from tests.models import MODELS
from train.args import TrainArgs


@pytest.fixture(scope="module")
def batch(tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    rows = make_splits({"train": 4}, Difficulty(max_steps=3), seed=5)["train"]
    examples = [Example(r["id"], r["question"], r["answer"], "math") for r in rows]
    encoded, _ = encode_examples(tokenizer, examples, 160)
    return pad_right(encoded, tokenizer.pad_token_id)


def run(tokenizer, tmp_path, batch, checkpointing: bool, lora_rank: int) -> tuple:
    """One training forward and backward pass, set up as train/__main__.py does: the loss, the
    trainable parameters' gradients, and the bytes autograd saved for the backward pass."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(MODELS["llama-64"]))
    model = load_model(tokenizer, config_file=str(config), seed=0)
    args = TrainArgs(output_dir=str(tmp_path / "run"), lora_rank=lora_rank)
    if checkpointing:
        model.gradient_checkpointing_enable()
    if lora_rank:
        model = lora.from_args(model, args, None)
    model.train()
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch, use_cache=False).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads, sum(saved)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_checkpointing_keeps_the_gradients_and_saves_activations(
    tokenizer, tmp_path, batch, lora_rank
) -> None:
    loss, grads, saved = run(tokenizer, tmp_path, batch, False, lora_rank)
    ck_loss, ck_grads, ck_saved = run(tokenizer, tmp_path, batch, True, lora_rank)
    assert ck_loss == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == ck_grads.keys() and grads
    if lora_rank:
        assert all("lora_" in n for n in grads)
    for name, g in grads.items():
        assert ck_grads[name] is not None, f"{name}: no gradient under checkpointing"
        torch.testing.assert_close(ck_grads[name], g, rtol=1e-5, atol=1e-7)
    # LoRA's B starts at zero, so only B gets a gradient at the first step; it must be nonzero.
    assert any(g.abs().sum() > 0 for g in ck_grads.values())
    assert ck_saved < saved / 2, (ck_saved, saved)
