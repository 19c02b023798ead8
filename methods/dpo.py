"""DPO (Direct Preference Optimization, Rafailov et al. 2023): preference pairs of a prompt, a
chosen and a rejected response, learnt without a reward model.

With the log-ratios of the policy to a frozen reference model, r_c = log pi(c|x) - log ref(c|x)
and r_r = log pi(r|x) - log ref(r|x), the loss per pair is

- sigmoid (the paper's):  -log sigmoid(beta * (r_c - r_r)); with `label_smoothing` e (the
  conservative DPO of Mitchell 2023) -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h);
- ipo (Azar et al. 2023):  (h - 1 / (2 beta))^2, on log-probabilities averaged over the
  response's tokens rather than summed, as in the IPO paper and TRL.

The reference's log-probabilities do not change during training, so they are computed once,
offline, and read from disk: training holds one model. `generate --pair_logps true` writes them
(`reference_rows`: per pair id, the summed log-probabilities of chosen and rejected, their token
counts, a digest of the inputs and the fingerprints of model and tokenizer), and `train --mode
dpo` reads them back (`load_reference_logps`), refusing those of another model, tokenizer or
encoding. The implicit rewards beta * r_c and beta * r_r are what wandb shows (their mean, their
margin, and how often chosen is above rejected: the preference accuracy).

Chosen and rejected go through the model in one forward pass (`pair_logps`); a step's loss is
the mean over the pairs of its global batch, whatever the split into ranks and micro-batches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from data_tools.collate import pad_right
from data_tools.preferences import SIDES, EncodedPair
from data_tools.schema import DataError
from data_tools.sources import check_covered, jsonl_objects, unique_id
from data_tools.tokenization import IGNORE_INDEX
from runtime.fingerprint import check_fingerprints

LOSS_KINDS = ("sigmoid", "ipo")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool) -> torch.Tensor:
    """Per row, the log-probability of its trained tokens (labels != -100) given their prefix:
    summed, or averaged over the trained tokens. `logits[:, t]` predicts `labels[:, t + 1]`,
    the shift the model's own loss makes. Summed in float64: a float32 sum of a few hundred
    tokens is off by more than the log-ratios DPO learns from can afford."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    token_logps = -F.cross_entropy(
        logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    total = token_logps.double().sum(-1)
    return total / (labels != IGNORE_INDEX).sum(-1).clamp(min=1) if average else total


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    kind: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss of each pair and the implicit rewards (chosen, rejected; detached), from the
    policy's and the reference's log-probabilities of the chosen and rejected responses."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"DPO loss kind must be one of {LOSS_KINDS}, got {kind!r}")
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if kind == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(
            -beta * h
        )
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def pair_logps(
    model: torch.nn.Module, pairs: Sequence[EncodedPair], pad_id: int, average: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-probabilities of each pair's chosen and of its rejected response (`sequence_logps`:
    summed, or averaged over the response's tokens), from one forward pass over all 2n sequences
    (under ZeRO-3, one gathering of the weights serves both)."""
    inputs = pad_right([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    device = next(model.parameters()).device
    logits = model(
        input_ids=inputs["input_ids"].to(device),
        attention_mask=inputs["attention_mask"].to(device),
        use_cache=False,
    ).logits
    logps = sequence_logps(logits, inputs["labels"].to(device), average)
    return logps[: len(pairs)], logps[len(pairs) :]


@torch.no_grad()
def reference_rows(
    model: torch.nn.Module, pairs: Sequence[EncodedPair], pad_id: int
) -> list[dict[str, Any]]:
    """`generate --pair_logps true`'s rows for `pairs`: the summed log-probabilities of chosen
    and rejected and their token counts (for IPO's averages), and the digest of the inputs they
    hold for (`EncodedPair.digest`)."""
    chosen, rejected = pair_logps(model, pairs, pad_id, average=False)
    return [
        {
            "id": p.id,
            "chosen_logp": c,
            "rejected_logp": r,
            "chosen_tokens": p.chosen.num_trained,
            "rejected_tokens": p.rejected.num_trained,
            "inputs": p.digest,
        }
        for p, c, r in zip(pairs, chosen.tolist(), rejected.tolist(), strict=True)
    ]


@dataclass(frozen=True)
class ReferenceLogps:
    """The reference model's log-probabilities of a pair's chosen and rejected responses,
    summed over each response's tokens (EOS included), and the numbers of those tokens."""

    chosen: float
    rejected: float
    chosen_tokens: int
    rejected_tokens: int

    def values(self, average: bool) -> tuple[float, float]:
        if not average:
            return self.chosen, self.rejected
        return self.chosen / self.chosen_tokens, self.rejected / self.rejected_tokens


def _checked(row: dict[str, Any], key: str, where: str, tokens: bool) -> float | int:
    """A token count (a positive integer) or a log-probability (a number <= 0)."""
    value = row.get(key)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if tokens and not (isinstance(value, int) and number and value > 0):
        raise DataError(where, key, f"expected a positive integer, got {value!r}")
    if not tokens and not (number and math.isfinite(value) and value <= 0):
        raise DataError(where, key, f"expected a log-probability (a number <= 0), got {value!r}")
    return value


def load_reference_logps(
    path: str, pairs: Sequence[EncodedPair], tokenizer_fp: str, model_fp: str
) -> dict[str, ReferenceLogps]:
    """The reference log-probabilities of every pair of `pairs`, by id, from the file of
    `generate --pair_logps true`. Every row is checked: an id that appears once, the
    fingerprints of the run's tokenizer and starting weights, the numbers; a row for one of
    `pairs` must have been made from that pair's very inputs (its digest), and every pair needs
    one. Rows for other pairs are allowed (the run may train on part of the data)."""
    by_id = {p.id: p for p in pairs}
    out: dict[str, ReferenceLogps] = {}
    seen: dict[str, str] = {}
    for where, row in jsonl_objects(path):
        row_id = unique_id(row, where, seen)
        check_fingerprints(row, where, tokenizer_fp, model_fp)
        logps = [_checked(row, f"{side}_logp", where, tokens=False) for side in SIDES]
        counts = [_checked(row, f"{side}_tokens", where, tokens=True) for side in SIDES]
        pair = by_id.get(row_id)
        if pair is None:
            continue
        if row.get("inputs") != pair.digest:
            raise DataError(
                where,
                "inputs",
                f"made from other inputs than this run's pair {row_id!r} ({row.get('inputs')} != "
                f"{pair.digest}: another max_length, prompt format or text); regenerate them",
            )
        out[row_id] = ReferenceLogps(*logps, *counts)
    check_covered(path, seen, out, [p.id for p in pairs], "reference log-probabilities")
    return out


@dataclass(frozen=True)
class DPO:
    """DPO's options (train's dpo_beta, dpo_loss, dpo_label_smoothing) and its loss on a
    micro-batch of pairs."""

    beta: float = 0.1
    loss: str = "sigmoid"
    label_smoothing: float = 0.0

    @classmethod
    def from_args(cls, args: Any) -> DPO:
        return cls(args.dpo_beta, args.dpo_loss, args.dpo_label_smoothing)

    def __post_init__(self) -> None:
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"dpo_loss must be one of {LOSS_KINDS}, got {self.loss!r}")
        if not (isinstance(self.beta, int | float) and math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"dpo_beta must be a number > 0, got {self.beta!r}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(
                f"dpo_label_smoothing (the assumed rate of flipped labels) must be in [0, 0.5), "
                f"got {self.label_smoothing!r}"
            )
        if self.loss == "ipo" and self.label_smoothing:
            raise ValueError("dpo_label_smoothing is for the sigmoid loss: IPO has none")

    def losses(
        self,
        model: torch.nn.Module,
        pairs: Sequence[EncodedPair],
        reference: Mapping[str, ReferenceLogps],
        pad_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per pair, the loss and the implicit rewards of chosen and rejected (`dpo_loss`), the
        policy's log-probabilities from one forward pass of `model`, the reference's from
        `reference`; in float64, as the log-ratios are small differences of large sums."""
        average = self.loss == "ipo"
        chosen, rejected = pair_logps(model, pairs, pad_id, average)
        ref = torch.tensor(
            [reference[p.id].values(average) for p in pairs],
            dtype=torch.float64,
            device=chosen.device,
        )
        return dpo_loss(
            chosen,
            rejected,
            ref[:, 0],
            ref[:, 1],
            self.beta,
            self.label_smoothing,
            self.loss,
        )


PAIR_STATS = 5  # the length of `pair_stats`


def pair_stats(
    losses: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> torch.Tensor:
    """Sums over a micro-batch's pairs, to be added over micro-batches and ranks before
    `pair_metrics`: the loss, the chosen and the rejected rewards, the pairs whose chosen reward
    is the higher, and the pairs."""
    parts = [
        losses.detach().sum(),
        chosen_rewards.sum(),
        rejected_rewards.sum(),
        (chosen_rewards > rejected_rewards).sum(),
        losses.new_tensor(len(losses)),
    ]
    return torch.stack([x.double() for x in parts])


def pair_metrics(sums: torch.Tensor, split: str) -> dict[str, float]:
    """The means of `pair_stats` summed over a global batch (or an evaluation set), as logged:
    `<split>/loss`, the mean implicit rewards and their margin, and the preference accuracy."""
    loss, chosen, rejected, above, n = sums.tolist()
    return {
        f"{split}/loss": loss / n,
        f"{split}/rewards_chosen": chosen / n,
        f"{split}/rewards_rejected": rejected / n,
        f"{split}/reward_margin": (chosen - rejected) / n,
        f"{split}/reward_accuracy": above / n,
    }
