"""DPO's pieces against independent references: a response's log-probability against one forward
pass per prefix (no shifting logic shared), and the loss and its gradients against the papers'
formulas written out per pair in float64."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from data_tools.collate import pad_right
from data_tools.schema import Example
from data_tools.tokenization import IGNORE_INDEX, encode_examples
from methods.dpo import dpo_loss, sequence_logps
from runtime.modeling import load_model
from tests.models import MODELS


@pytest.fixture(scope="module")
def model(tmp_path_factory, tokenizer: PreTrainedTokenizerBase) -> torch.nn.Module:
    config = tmp_path_factory.mktemp("dpo") / "tiny.json"
    config.write_text(json.dumps(MODELS["llama-32"]))
    return load_model(tokenizer, config_file=str(config), seed=0).eval()


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_equal_one_forward_per_prefix(model, tokenizer, average: bool) -> None:
    raw = [
        Example("a", "Tom has 3 apples and buys 4 more. How many?", "3+4=7\n#### 7", "math"),
        Example("b", "Ann has 12 coins.", "She has 12 coins.\n#### 12", "math"),
    ]
    encoded, _ = encode_examples(tokenizer, raw, 128)
    batch = pad_right(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        ours = sequence_logps(model(**batch).logits, batch["labels"], average)
        for row, e in enumerate(encoded):
            trained = [t for t, label in enumerate(e.labels) if label != IGNORE_INDEX]
            logps = []
            for t in trained:  # the model sees only the prefix before token t
                prefix = torch.tensor([e.input_ids[:t]])
                logp = model(input_ids=prefix).logits[0, -1].double().log_softmax(-1)
                logps.append(logp[e.input_ids[t]].item())
            expected = sum(logps) / len(logps) if average else sum(logps)
            assert ours[row].item() == pytest.approx(expected, abs=1e-4)


def reference_loss(c: float, r: float, rc: float, rr: float, beta: float, eps: float, kind: str):
    """Rafailov et al. (2023) eq. 7, with Mitchell's label smoothing; Azar et al.'s IPO."""
    h = (c - rc) - (r - rr)
    if kind == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    sigmoid = 1 / (1 + math.exp(-beta * h))
    return -(1 - eps) * math.log(sigmoid) - eps * math.log(1 - sigmoid)


@pytest.mark.parametrize(
    ("kind", "beta", "eps"), [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("ipo", 0.1, 0.0)]
)
def test_loss_and_gradients_follow_the_formula(kind: str, beta: float, eps: float) -> None:
    g = torch.Generator().manual_seed(0)
    logps = (-20 * torch.rand(4, 6, generator=g, dtype=torch.float64)).unbind()
    chosen, rejected = (x.clone().requires_grad_() for x in logps[:2])
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        chosen, rejected, logps[2], logps[3], beta, eps, kind
    )
    losses.sum().backward()
    step = 1e-6
    for i in range(6):
        args = [x[i].item() for x in (chosen, rejected, logps[2], logps[3])]
        assert losses[i].item() == pytest.approx(reference_loss(*args, beta, eps, kind), rel=1e-9)
        for which, tensor in enumerate((chosen, rejected)):  # central differences
            up, down = list(args), list(args)
            up[which] += step
            down[which] -= step
            numeric = (
                reference_loss(*up, beta, eps, kind) - reference_loss(*down, beta, eps, kind)
            ) / (2 * step)
            assert tensor.grad[i].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    assert torch.allclose(chosen_rewards, beta * (chosen - logps[2]))
    assert torch.allclose(rejected_rewards, beta * (rejected - logps[3]))


def test_an_unknown_loss_kind_is_refused() -> None:
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="one of \\('sigmoid', 'ipo'\\)"):
        dpo_loss(x, x, x, x, 0.1, kind="hinge")
