"""Sequence packing against the same examples padded one per row, and one at a time: the same
loss and gradients under `sdpa` and `eager` attention; BASH's and RAC's examples unchanged inside
their rows; positions restart. The training loss (`train.loss`, logits of trained positions only)
against the model's own, on padded and packed rows."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from data_tools.collate import pad_right
from data_tools.packing import pack, pack_batch
from data_tools.schema import Example
from data_tools.synthetic_math import Difficulty, make_splits
from data_tools.tokenization import IGNORE_INDEX, Encoded, encode_examples
from methods.correction import encode_correction
from methods.scheduled_sampling import interleave, response_positions
from runtime.modeling import load_model
from tests.models import MODELS
from train.loss import causal_lm_loss

ROW = 192


def examples(n: int) -> list[Example]:
    rows = make_splits({"train": n}, Difficulty(max_steps=3), seed=4)["train"]
    return [Example(r["id"], r["question"], r["answer"], "math") for r in rows]


@pytest.fixture(scope="module")
def batch(tokenizer: PreTrainedTokenizerBase) -> list[Encoded]:
    """Plain SFT examples, a BASH-interleaved one and a RAC correction sample."""
    raw = examples(7)
    sft, _ = encode_examples(tokenizer, raw[:5], 160)
    rng = random.Random(0)
    own = [rng.randrange(len(tokenizer)) for _ in response_positions(sft[0])]
    bash, replaced = interleave(sft[0], own, 0.5, seed=1, step=3)
    assert replaced > 0
    draft = tokenizer(raw[6].response, add_special_tokens=False)["input_ids"][:-3]
    rac = encode_correction(tokenizer, raw[5], draft, 160)
    return [*sft[1:], bash, rac]


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, tmp_path_factory, tokenizer: PreTrainedTokenizerBase) -> torch.nn.Module:
    """The tiny model under each attention implementation that runs on CPU."""
    config = tmp_path_factory.mktemp("packing") / "tiny.json"
    config.write_text(json.dumps(MODELS["llama-64"]))
    model = load_model(
        tokenizer, config_file=str(config), seed=0, attn_implementation=request.param
    )
    assert model.config._attn_implementation == request.param
    return model.eval()


def loss_and_grads(model: torch.nn.Module, inputs: dict, **kwargs) -> tuple[float, list]:
    """The summed token loss (HF's loss with num_items_in_batch=1) and its gradients."""
    model.zero_grad()
    loss = model(**inputs, num_items_in_batch=1, **kwargs).loss
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def test_packed_loss_and_gradients_match(model, batch: list[Encoded], tokenizer) -> None:
    pad = tokenizer.pad_token_id
    packed = pack_batch(batch, pad, ROW)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] < len(batch)
    padded_loss, padded_grads = loss_and_grads(model, pad_right(batch, pad))
    packed_loss, packed_grads = loss_and_grads(model, packed, use_cache=False)
    # The independent reference: each example alone, no padding and no packing.
    alone = [loss_and_grads(model, pad_right([e], pad)) for e in batch]
    alone_loss = sum(loss for loss, _ in alone)
    alone_grads = [sum(g) for g in zip(*(grads for _, grads in alone), strict=True)]
    trained = sum(e.num_trained for e in batch)
    assert abs(packed_loss - alone_loss) / trained < 1e-5
    assert abs(padded_loss - alone_loss) / trained < 1e-5
    for packed_g, padded_g, alone_g in zip(packed_grads, padded_grads, alone_grads, strict=True):
        assert torch.allclose(packed_g, alone_g, rtol=1e-4, atol=1e-5)
        assert torch.allclose(padded_g, alone_g, rtol=1e-4, atol=1e-5)
    # With a cache (the forward pass's default), transformers ignores the restarts and packed
    # examples attend to each other: the loss differs.
    leaky_loss, leaky_grads = loss_and_grads(model, packed)
    assert abs(leaky_loss - alone_loss) / trained > 1e-5
    assert max((a - b).abs().max() for a, b in zip(leaky_grads, alone_grads, strict=True)) > 1e-2


def test_trained_logits_loss_is_the_models_own(model, batch: list[Encoded], tokenizer) -> None:
    pad, trained = tokenizer.pad_token_id, sum(e.num_trained for e in batch)
    projected = []
    hook = model.lm_head.register_forward_hook(lambda _m, args, _o: projected.append(args[0]))
    try:
        for inputs in (pad_right(batch, pad), pack_batch(batch, pad, ROW)):
            reference_loss, reference_grads = loss_and_grads(model, inputs, use_cache=False)
            model.zero_grad()
            projected.clear()
            loss = causal_lm_loss(model, inputs, trained)
            loss.backward()
            # Only the trained positions reach the vocabulary projection.
            assert projected[0].shape[:-1] == (trained,)
            assert abs(loss.item() * trained - reference_loss) / trained < 1e-5
            for p, reference in zip(model.parameters(), reference_grads, strict=True):
                torch.testing.assert_close(p.grad * trained, reference, rtol=1e-4, atol=1e-5)
    finally:
        hook.remove()


def test_examples_unchanged_in_their_rows(batch: list[Encoded]) -> None:
    rows = pack(batch, ROW)
    assert sorted(i for r in rows for i in r.ids) == sorted(e.id for e in batch)
    by_id = {e.id: e for e in batch}
    for row in rows:
        assert len(row.input_ids) <= ROW
        start = 0
        for example_id in row.ids:
            e = by_id[example_id]
            span = slice(start, start + len(e.input_ids))
            assert row.input_ids[span] == e.input_ids
            # Only the first label, which no position predicts, becomes -100 (it already was).
            assert row.labels[span] == [IGNORE_INDEX] + e.labels[1:] == e.labels
            assert row.position_ids[span] == list(range(len(e.input_ids)))
            start += len(e.input_ids)
        assert start == len(row.input_ids)


def test_padding_restarts_positions_and_overlong_is_refused(batch, tokenizer) -> None:
    packed = pack_batch(batch, tokenizer.pad_token_id, ROW)
    for input_ids, labels, positions, row in zip(
        packed["input_ids"], packed["labels"], packed["position_ids"], pack(batch, ROW), strict=True
    ):
        n = len(row.input_ids)
        assert positions[n:].tolist() == list(range(len(positions) - n))
        assert (labels[n:] == IGNORE_INDEX).all()
        assert (input_ids[n:] == tokenizer.pad_token_id).all()
    longest = max(batch, key=lambda e: len(e.input_ids))
    with pytest.raises(ValueError, match=longest.id):
        pack(batch, len(longest.input_ids) - 1)
