"""DPO (Direct Preference Optimization, Rafailov et al. 2023): preference pairs of a prompt, a
chosen and a rejected response, learnt without a reward model.

With the log-ratios of the policy to a frozen reference model, r_c = log pi(c|x) - log ref(c|x)
and r_r = log pi(r|x) - log ref(r|x), the loss per pair is

- sigmoid (the paper's):  -log sigmoid(beta * (r_c - r_r)); with `label_smoothing` e (the
  conservative DPO of Mitchell 2023) -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h);
- ipo (Azar et al. 2023):  (h - 1 / (2 beta))^2, on log-probabilities averaged over the
  response's tokens rather than summed, as in the IPO paper and TRL.

The reference's log-probabilities do not change during training, so they are computed once,
offline, and read from disk: training holds one model. The implicit rewards beta * r_c and
beta * r_r are what wandb shows (their margin, and how often chosen is above rejected).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data_tools.tokenization import IGNORE_INDEX

LOSS_KINDS = ("sigmoid", "ipo")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool) -> torch.Tensor:
    """Per row, the log-probability of its trained tokens (labels != -100) given their prefix:
    summed, or averaged over the trained tokens. `logits[:, t]` predicts `labels[:, t + 1]`,
    the shift the model's own loss makes."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    token_logps = -F.cross_entropy(
        logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    total = token_logps.sum(-1)
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
