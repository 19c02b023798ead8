"""DPO end to end on a tiny model: the reference log-probabilities `generate --pair_logps true`
writes against a live reference model, the loss and gradients of train's code path against a
plain PyTorch implementation of the papers' formulas (separate forward passes, a live reference
model), and `train --mode dpo` itself: its first step against that implementation, 2 processes
against 1, a resumed run against the uninterrupted one, and the checks on its reference file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from data_tools.atomic import write_jsonl
from data_tools.preferences import EncodedPair, encode_pairs, load_preferences
from data_tools.schema import DataError
from data_tools.synthetic_math import Difficulty, make_splits
from data_tools.tokenization import IGNORE_INDEX, Encoded
from methods.dpo import DPO, load_reference_logps
from runtime.args import DataArgs, ModelArgs
from runtime.fingerprint import model_fingerprint, tokenizer_fingerprint
from runtime.modeling import load_model
from tests.launch import run
from tests.models import train_config
from train import checkpoint
from train.args import TrainArgs
from train.batches import BatchPlan
from train.setup import setup

STEPS, MICRO, ACCUM, SEED, MAX_LEN = 4, 4, 2, 3, 100


def pair_rows(rows: list[dict]) -> list[dict]:
    """Synthetic problems as pairs: the worked answer chosen, the same with a wrong final
    number rejected."""
    out = []
    for r in rows:
        work, answer = r["answer"].rsplit("#### ", 1)
        rejected = f"{work}#### {int(answer) + 7}"
        out.append(
            {"id": r["id"], "prompt": r["question"], "chosen": r["answer"], "rejected": rejected}
        )
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory, tokenizer) -> Path:
    """Train and validation pairs, a tiny model folder (the start and the reference) and its
    log-probabilities of all the pairs, one file for both sets; the config of a DPO run."""
    root = tmp_path_factory.mktemp("dpo_train")
    splits = make_splits({"train": 48, "validation": 8}, Difficulty(max_steps=2), seed=1)
    pairs = {split: pair_rows(rows) for split, rows in splits.items()}
    for split, rows in pairs.items():
        write_jsonl(root / f"{split}.jsonl", rows)
    write_jsonl(root / "all.jsonl", pairs["train"] + pairs["validation"])
    config = train_config(root, tokenizer, "llama-32")  # saves the tokenizer and tiny.json
    model = load_model(tokenizer, config_file=config["model_config"], seed=0)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    reference = root / "reference.jsonl"
    args = ["--model_name_or_path", str(root / "model"), "--data", str(root / "all.jsonl")]
    args += ["--pair_logps", "true", "--max_length", str(MAX_LEN), "--output", str(reference)]
    run("generate", [*args, "--batch_size", "8", "--precision", "fp32"])
    train_config(
        root,
        tokenizer,
        "llama-32",
        model_config=None,
        model_name_or_path=str(root / "model"),
        data=str(root / "train.jsonl"),
        eval_data=str(root / "validation.jsonl"),
        mode="dpo",
        reference_logps=str(reference),
        eval_reference_logps=str(reference),
        max_length=MAX_LEN,
        max_steps=STEPS,
        warmup_steps=0,
        seed=SEED,
        eval_every=2,
    )
    return root


def train(root: Path, out: Path, nproc: int, micro: int, *extra: str) -> list[dict]:
    """A run of global batch MICRO x ACCUM: micro x accumulation x processes."""
    accum = MICRO * ACCUM // (micro * nproc)
    args = ["--config", str(root / "config.yaml"), "--output_dir", str(out)]
    args += ["--micro_batch_size", str(micro), "--gradient_accumulation_steps", str(accum)]
    run("train", [*args, *extra], nproc)
    return [json.loads(line) for line in (out / "metrics.jsonl").open()]


@pytest.fixture(scope="module")
def pairs(root, tokenizer) -> list[EncodedPair]:
    """The training pairs, encoded as train encodes them."""
    preferences, _ = load_preferences(str(root / "train.jsonl"))
    return encode_pairs(tokenizer, preferences, MAX_LEN)[0]


@pytest.fixture(scope="module")
def reference_model(root, tokenizer) -> torch.nn.Module:
    return load_model(tokenizer, str(root / "model")).eval()


@pytest.fixture(scope="module")
def whole(root) -> list[dict]:
    """One process, ZeRO-2, uninterrupted, exported."""
    return train(root, root / "whole", 1, MICRO)


# --- a plain implementation, from the papers' formulas -----------------------------------------


def plain_logp(model: torch.nn.Module, e: Encoded, average: bool) -> torch.Tensor:
    """log pi(y | x) of the response alone in its own forward pass: the sum (or the mean) of
    log p(token_t | tokens before t) over the response's positions t, added in float64."""
    logp = model(input_ids=torch.tensor([e.input_ids])).logits[0].log_softmax(-1)
    positions = [t for t, label in enumerate(e.labels) if label != IGNORE_INDEX]
    terms = torch.stack([logp[t - 1, e.input_ids[t]] for t in positions]).double()
    return terms.mean() if average else terms.sum()


def plain_loss(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    pairs: list[EncodedPair],
    beta: float,
    eps: float,
    kind: str,
) -> torch.Tensor:
    """Rafailov et al. (2023) eq. 7, with Mitchell's label smoothing, or Azar et al.'s IPO on
    token-averaged log-probabilities; the mean over the pairs."""
    losses = []
    for p in pairs:
        average = kind == "ipo"
        with torch.no_grad():
            ref_c, ref_r = (plain_logp(reference, e, average) for e in (p.chosen, p.rejected))
        pi_c, pi_r = (plain_logp(policy, e, average) for e in (p.chosen, p.rejected))
        h = (pi_c - ref_c) - (pi_r - ref_r)
        if kind == "ipo":
            losses.append((h - 1 / (2 * beta)) ** 2)
        else:
            losses.append(
                -(1 - eps) * torch.log(torch.sigmoid(beta * h))
                - eps * torch.log(torch.sigmoid(-beta * h))
            )
    return torch.stack(losses).mean()


# --- in process ---------------------------------------------------------------------------------


def test_reference_logps_equal_a_live_reference_model(root, tokenizer, reference_model) -> None:
    preferences, _ = load_preferences(str(root / "all.jsonl"))
    encoded, _ = encode_pairs(tokenizer, preferences, MAX_LEN)
    rows = {r["id"]: r for r in map(json.loads, (root / "reference.jsonl").open())}
    assert list(rows) == [p.id for p in encoded]
    expected_fingerprints = {
        "model_fingerprint": model_fingerprint(str(root / "model")),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
    }
    with torch.no_grad():
        for p in encoded:
            row = rows[p.id]
            for side, e in (("chosen", p.chosen), ("rejected", p.rejected)):
                live = plain_logp(reference_model, e, average=False).item()
                assert row[f"{side}_logp"] == pytest.approx(live, abs=1e-5)
                assert row[f"{side}_tokens"] == e.num_trained
            assert row["inputs"] == p.digest
            assert {k: row[k] for k in expected_fingerprints} == expected_fingerprints


@pytest.mark.parametrize(
    ("kind", "beta", "eps"), [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("ipo", 0.1, 0.0)]
)
def test_train_loss_and_gradients_equal_the_formula(
    root, tokenizer, pairs, reference_model, kind: str, beta: float, eps: float
) -> None:
    """Train's code path (`DPO.losses`, a step's loss as the sum over each micro-batch divided by
    the global batch) against `plain_loss`, for a policy that is not the reference."""
    batch = [pairs[i] for i in BatchPlan(len(pairs), MICRO, ACCUM, 1, SEED).global_indices(0)]
    policy = load_model(tokenizer, config_file=str(root / "tiny.json"), seed=1)
    with torch.no_grad():  # far from the reference: confident, and unlike it
        policy.lm_head.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    reference = load_reference_logps(
        str(root / "reference.jsonl"),
        pairs,
        tokenizer_fingerprint(tokenizer),
        model_fingerprint(str(root / "model")),
    )
    dpo, ours = DPO(beta, kind, eps), 0.0
    for micro in range(ACCUM):
        losses, _, _ = dpo.losses(
            policy, batch[micro * MICRO : (micro + 1) * MICRO], reference, tokenizer.pad_token_id
        )
        loss = losses.sum() / len(batch)
        loss.backward()
        ours += loss.item()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters()}
    policy.zero_grad()
    expected = plain_loss(policy, reference_model, batch, beta, eps, kind)
    expected.backward()
    assert ours == pytest.approx(expected.item(), abs=1e-5)
    assert abs(expected.item() - (0.25 / beta**2 if kind == "ipo" else 0.6931)) > 1e-2  # h != 0
    for name, p in policy.named_parameters():
        # float32 forward passes of other shapes: equal to 1e-5 of each gradient's scale
        atol = 1e-5 * p.grad.abs().max().item()
        torch.testing.assert_close(grads[name], p.grad, rtol=0, atol=atol, msg=name)


def test_the_reference_file_is_checked_against_the_run(root, tokenizer, pairs, tmp_path) -> None:
    rows = [json.loads(line) for line in (root / "reference.jsonl").open()]
    fingerprints = (tokenizer_fingerprint(tokenizer), model_fingerprint(str(root / "model")))

    def load(changed: list[dict]) -> None:
        write_jsonl(tmp_path / "reference.jsonl", changed)
        load_reference_logps(str(tmp_path / "reference.jsonl"), pairs, *fingerprints)

    path = tmp_path / "reference.jsonl"
    with pytest.raises(DataError, match=f"{path}:1: field 'model_fingerprint': made with other"):
        load([{**rows[0], "model_fingerprint": "0123"}, *rows[1:]])
    with pytest.raises(DataError, match=f"{path}:2: field 'inputs': made from other inputs"):
        load([rows[0], {**rows[1], "inputs": "0123"}, *rows[2:]])
    with pytest.raises(DataError, match=f"{path}:3: field 'chosen_logp': expected a log-prob"):
        load([*rows[:2], {**rows[2], "chosen_logp": 0.5}, *rows[3:]])
    with pytest.raises(DataError, match=f"{path}:1: field 'rejected_tokens': expected a positive"):
        load([{**rows[0], "rejected_tokens": 2.0}, *rows[1:]])
    with pytest.raises(
        DataError, match=f"{path}: field 'id': no reference log-probabilities for 1"
    ):
        load([r for r in rows if r["id"] != pairs[5].id])


def test_the_run_identity_holds_the_dpo_options_and_the_reference_file(root, tmp_path) -> None:
    """A resume with another beta or reference file would mix two runs: it is refused."""
    config = json.loads((root / "config.yaml").read_text())
    shutil.copy(root / "reference.jsonl", tmp_path / "copy.jsonl")
    with (tmp_path / "copy.jsonl").open("a") as f:
        f.write("\n")  # the same rows, another file

    def identity(**options) -> dict:
        values = {**config, "output_dir": str(tmp_path), **options}
        model_args = ModelArgs(values["model_name_or_path"], None, values["tokenizer"])
        data_args = DataArgs(values["data"], max_length=MAX_LEN)
        names = set(TrainArgs.__dataclass_fields__)
        args = TrainArgs(**{k: v for k, v in values.items() if k in names})
        return checkpoint.run_identity(
            model_args, data_args, args, setup(model_args, data_args, args, 1)
        )

    base = identity()
    assert base["mode"] == "dpo" and base["dpo"] == {
        "beta": 0.1,
        "loss": "sigmoid",
        "label_smoothing": 0.0,
    }
    assert identity(dpo_beta=0.2)["dpo"]["beta"] == 0.2
    other = identity(reference_logps=str(tmp_path / "copy.jsonl"))
    assert other["reference_logps"] != base["reference_logps"]
    assert {k: v for k, v in other.items() if k != "reference_logps"} == {
        k: v for k, v in base.items() if k != "reference_logps"
    }


# --- train --mode dpo, as processes -----------------------------------------------------------


def test_the_first_step_follows_the_formula(root, whole, pairs, tokenizer) -> None:
    """At step 1 the policy is the reference: the loss is ln 2 and the gradient is the plain
    implementation's (its norm, as DeepSpeed logs it before clipping)."""
    batch = [pairs[i] for i in BatchPlan(len(pairs), MICRO, ACCUM, 1, SEED).global_indices(0)]
    policy = load_model(tokenizer, str(root / "model"))
    reference = load_model(tokenizer, str(root / "model")).eval()
    loss = plain_loss(policy, reference, batch, 0.1, 0.0, "sigmoid")
    loss.backward()
    norm = torch.cat([p.grad.flatten() for p in policy.parameters()]).norm().item()
    assert whole[0]["train/loss"] == pytest.approx(loss.item(), abs=1e-6)
    assert whole[0]["train/grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert whole[0]["train/forward_sequences"] == 2 * MICRO * ACCUM
    assert whole[0]["train/trained_tokens"] == sum(p.num_trained for p in batch)


def test_the_run_logs_rewards_evaluates_and_exports(root, whole) -> None:
    assert [r["step"] for r in whole] == list(range(1, STEPS + 1))
    for row in whole:
        margin = row["train/rewards_chosen"] - row["train/rewards_rejected"]
        assert row["train/reward_margin"] == pytest.approx(margin)
        assert 0 <= row["train/reward_accuracy"] <= 1
    assert [r["step"] for r in whole if "eval/reward_accuracy" in r] == [2, 4]
    report = json.loads((root / "whole/export_check.json").read_text())
    assert report["max_abs_logit_diff"] <= report["tolerance"]


def test_two_processes_equal_one(root, whole) -> None:
    """ZeRO-2, 2 processes x micro 2 x accumulation 2 against 1 x 4 x 2: the same global batches."""
    two = train(root, root / "two", 2, 2, "--export", "false")
    assert [r["step"] for r in two] == [r["step"] for r in whole]
    for a, b in zip(whole, two, strict=True):
        for key in ("train/loss", "eval/loss"):
            assert b.get(key) == pytest.approx(a.get(key), rel=1e-5)
        # the rewards are beta times differences of float32 sums: equal to 1e-5
        rewards = [k for k in a if "reward" in k]
        assert {k: b[k] for k in rewards} == pytest.approx({k: a[k] for k in rewards}, abs=1e-5)
        assert a["train/forward_sequences"] == b["train/forward_sequences"]


def test_a_resumed_run_continues_as_the_uninterrupted_one(root, whole) -> None:
    out = root / "split"
    first = train(root, out, 1, MICRO, "--stop_at_step", "2", "--export", "false")
    assert [r["step"] for r in first] == [1, 2]
    resumed = train(root, out, 1, MICRO, "--export", "false")
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(whole, resumed, strict=True):
        for key in ("train/loss", "train/reward_margin", "train/lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-6)


@pytest.mark.slow
def test_zero3_with_lora_starts_at_the_reference_and_exports(root) -> None:
    """ZeRO-3 on 2 processes, LoRA (whose B starts at 0: the policy starts as the reference),
    an evaluation set that leaves one rank a no-op batch, and the merged export checked."""
    out = root / "zero3_lora"
    extra = ["--deepspeed_config", "ds_configs/zero3.json", "--lora_rank", "4"]
    rows = train(root, out, 2, 2, *extra, "--max_eval_examples", "5", "--max_steps", "3")
    assert rows[0]["train/loss"] == pytest.approx(0.6931472, abs=1e-6)
    assert rows[0]["train/reward_margin"] == pytest.approx(0.0, abs=1e-5)
    # The adapter moved the policy off the reference: its rewards (beta x log-ratio) are no longer
    # 0. (Not the margin of one step: a batch's chosen and rejected can move alike.)
    assert all(abs(r["train/rewards_chosen"]) > 1e-4 for r in rows[1:])
    assert [r["step"] for r in rows if "eval/reward_accuracy" in r] == [2, 3]
    report = json.loads((out / "export_check.json").read_text())
    assert report["max_abs_logit_diff"] <= report["tolerance"]
