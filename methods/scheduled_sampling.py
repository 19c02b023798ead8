"""Scheduled sampling: BASH (Batch-Scheduled Sampling) and SCS (online scheduled sampling).

Both train on contexts that mix the ground-truth response with the model's own tokens, while
the targets stay the ground truth, so that the model learns to continue correctly from contexts
like those it makes at inference. They differ in where the model's tokens (its *predictions*:
one token per response position) come from:

- BASH reads them from disk, made offline by `generate --teacher_forced true` (or a free-running
  generation, aligned by position) from the weights the run starts from (`load_predictions`);
- SCS makes them at every step with a no-grad forward pass of the current weights
  (`teacher_forced_predictions`, the same function `generate` runs offline).

At step `step` each response position's input is the prediction with probability
`SamplingSchedule.p(step)` (`interleave`). The prompt is never touched.

Position ramp. With `position_ramp` N > 0 the probability at the j-th response position
(j = 0, 1, ...) is p(step) * min(1, (j + 1) / N): early positions, where the model is usually
right and the context it would make at inference is the reference's, are seldom replaced, and
from position N - 1 on every position gets p(step), since later positions err more (Liu et al.,
2021). N = 0 (the default) gives every position p(step). Each position keeps its one draw
either way, so a ramp only leaves out positions that the flat p would replace.

Schedules. Every schedule gives p = 0 (plain SFT) for the first `warmup_steps` batches; with
i = step - warmup_steps after that:

- constant:        p = p_max
- linear:          p = p_max * min(1, i / ramp_steps), from 0 up to p_max over `ramp_steps`
- inverse_sigmoid: p = p_max * (1 - eps), eps = k / (k + exp(i / k)) (Bengio et al., 2015)
- exponential:     p = p_max * (1 - eps), eps = decay ** i (Bengio et al., 2015)

eps is Bengio et al.'s probability of the ground truth; here it only shapes the rise of p.
`inverse_sigmoid` does not start at 0: eps(0) = k / (k + 1), so p jumps to p_max / (k + 1) at
the end of the warmup, then rises along a sigmoid centred at i = k ln k. `exponential` starts at
0 and reaches p_max * (1 - 1/e) after 1 / -ln(decay) steps. p is a pure function of the step,
so every rank, micro-batch and resumed run agrees on it without any state.

The defaults (constant p = 0.25) come from the validation sweep in bench/RESULTS.md; beyond
0.5 most of the context would be the model's, and the targets would often no longer follow
from it.

Interleaving. Which positions are replaced depends only on (seed, step, example id), drawn from
a generator of its own per example: never on the batch an example lands in, its place there,
the micro-batch split or the number of ranks, so a run is reproducible and resumable however it
is laid out. Python's `random.Random` is used because its `random()` sequence for a given seed
is guaranteed not to change across Python versions. For a fixed (seed, step, example), the
positions replaced at a probability p are a subset of those replaced at any larger p (and, with
a ramp, of those replaced under any shorter ramp): each position compares one draw of its own
with its probability, whatever that is.

Predictions made by another tokenizer, or by weights other than those the run starts from,
would silently teach the wrong thing; `load_predictions` refuses them, as it refuses a training
example without predictions.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from data_tools.collate import pad_right
from data_tools.schema import DataError
from data_tools.sources import check_covered, jsonl_objects, token_ids, unique_id
from data_tools.tokenization import IGNORE_INDEX, Encoded
from runtime.fingerprint import check_fingerprints

SCHEDULE_KINDS = ("constant", "linear", "inverse_sigmoid", "exponential")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SamplingSchedule:
    """The probability p(step) of the model's token at a response position; see the module doc.

    Only the fields of the chosen `kind` are used (`ramp_steps` by linear, `k` by inverse_sigmoid,
    `decay` by exponential); all are checked, so that a typo fails even where it has no effect.
    `position_ramp` scales p over response positions (`interleave`), whatever the kind.
    """

    kind: str = "constant"
    p_max: float = 0.25
    warmup_steps: int = 0
    ramp_steps: int = 100
    k: float = 20.0
    decay: float = 0.99
    position_ramp: int = 0

    @classmethod
    def from_args(cls, args) -> SamplingSchedule:
        """The schedule a run's `ss_*` options (train/args.py) describe."""
        return cls(
            args.ss_schedule,
            args.ss_p_max,
            args.ss_warmup_steps,
            args.ss_ramp_steps,
            args.ss_k,
            args.ss_decay,
            args.ss_position_ramp,
        )

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {self.kind!r}")
        if not _is_number(self.p_max) or not 0 <= self.p_max <= 1:
            raise ValueError(f"p_max must be a number in [0, 1], got {self.p_max!r}")
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not _is_int(self.ramp_steps) or self.ramp_steps < 1:
            raise ValueError(
                f"ramp_steps must be an integer >= 1 (use kind 'constant' for a step to p_max), "
                f"got {self.ramp_steps!r}"
            )
        if not _is_number(self.k) or self.k < 1:
            # Bengio et al. require k >= 1, so that the sigmoid starts with eps >= 1/2.
            raise ValueError(f"k must be a number >= 1, got {self.k!r}")
        if not _is_number(self.decay) or not 0 < self.decay < 1:
            raise ValueError(f"decay must be a number in (0, 1), got {self.decay!r}")
        _check_position_ramp(self.position_ramp)

    def p(self, step: int) -> float:
        """The probability of the model's token at a response position of global batch `step`."""
        if not _is_int(step) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        if step < self.warmup_steps:
            return 0.0
        i = step - self.warmup_steps
        if self.kind == "constant":
            return float(self.p_max)
        if self.kind == "linear":
            return self.p_max * min(1.0, i / self.ramp_steps)
        if self.kind == "inverse_sigmoid":
            # k / (k + e^(i/k)) = 1 / (1 + e^z) with z = i/k - ln k, written so that e^z cannot
            # overflow for large i.
            z = i / self.k - math.log(self.k)
            eps = math.exp(-z) / (1 + math.exp(-z)) if z > 0 else 1 / (1 + math.exp(z))
        else:
            eps = self.decay**i
        return self.p_max * (1 - eps)


def response_positions(e: Encoded) -> list[int]:
    """The positions whose label is trained: the response and its EOS."""
    return [i for i, label in enumerate(e.labels) if label != IGNORE_INDEX]


def _check_position_ramp(position_ramp: object) -> None:
    if not _is_int(position_ramp) or position_ramp < 0:
        raise ValueError(
            f"position_ramp must be an integer >= 0 (0: the same p at every position), "
            f"got {position_ramp!r}"
        )


def _example_rng(seed: int, step: int, example_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x00{step}\x00{example_id}".encode()).digest()
    return random.Random(int.from_bytes(digest, "little"))


def interleave(
    e: Encoded,
    predictions: Sequence[int],
    p: float,
    seed: int,
    step: int,
    position_ramp: int = 0,
) -> tuple[Encoded, int]:
    """A copy of `e` whose input token at the j-th response position is `predictions[j]` with
    probability `p` (independently per position), scaled by min(1, (j + 1) / position_ramp)
    when `position_ramp` > 0, and the number of positions chosen.

    A chosen position counts as replaced even where the model's token equals the ground truth,
    so that the count over a batch, divided by its response positions, estimates the mean
    probability: p without a ramp (`num_changed` counts the positions that differ). p = 0 gives
    `e` unchanged (SFT's batch exactly); p = 1 without a ramp puts every prediction in.
    """
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    _check_position_ramp(position_ramp)
    positions = response_positions(e)
    if len(predictions) != len(positions):
        raise DataError(
            f"example {e.id!r}",
            None,
            f"{len(predictions)} predictions for {len(positions)} response positions",
        )
    input_ids = list(e.input_ids)
    replaced = 0
    if p > 0:
        rng = _example_rng(seed, step, e.id)
        for j, (position, token) in enumerate(zip(positions, predictions, strict=True)):
            scale = min(1.0, (j + 1) / position_ramp) if position_ramp else 1.0
            if rng.random() < p * scale:
                input_ids[position] = token
                replaced += 1
    return Encoded(e.id, input_ids, list(e.labels)), replaced


def num_changed(e: Encoded) -> int:
    """The number of trained positions whose input is not the reference token (the label there):
    how much of the context interleaving really changed, which is far less than p where the
    model's tokens mostly equal the reference."""
    return sum(e.input_ids[i] != e.labels[i] for i in response_positions(e))


def align_free_running(e: Encoded, generation_ids: Sequence[int]) -> list[int]:
    """Predictions from a free-running generation, aligned by position: the j-th generated token
    for the j-th response position, and the ground truth where the generation has ended (it is
    shorter than the response) so that the rest of the context stays the reference's."""
    return [
        generation_ids[j] if j < len(generation_ids) else e.labels[position]
        for j, position in enumerate(response_positions(e))
    ]


@torch.no_grad()
def teacher_forced_predictions(
    model: torch.nn.Module,
    batch: Sequence[Encoded],
    pad_id: int,
    temperature: float = 0.0,
    seeds: Sequence[int] | None = None,
) -> list[list[int]]:
    """For each example, the model's token at each of its response positions (labels != -100):
    the argmax (temperature 0), or a sample at `temperature` from the example's own generator
    (one seed per example), so that the result does not depend on the batch."""
    inputs = pad_right(batch, pad_id)
    device = next(model.parameters()).device
    logits = model(
        input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device)
    ).logits
    # The logits at position t predict the token at t + 1.
    logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1).float().cpu()
    out = []
    for i, e in enumerate(batch):
        positions = torch.tensor([t for t, label in enumerate(e.labels) if label != IGNORE_INDEX])
        rows = logits[i, positions]
        if temperature == 0:
            out.append(rows.argmax(-1).tolist())
        else:
            generator = torch.Generator().manual_seed(seeds[i])
            probs = torch.softmax(rows / temperature, dim=-1)
            out.append(torch.multinomial(probs, 1, generator=generator).squeeze(-1).tolist())
    return out


def load_predictions(
    path: str, train_set: Sequence[Encoded], tokenizer_fp: str, model_fp: str, vocab_size: int
) -> dict[str, list[int]]:
    """The model's token at every response position of every training example, by id.

    Rows with "predictions" come from `generate --teacher_forced true` (the default variant);
    rows with "generation_ids" from a free-running generation, aligned by position. Every row
    is checked, whether or not its example is trained on: an id that is a non-blank string and
    appears once, the fingerprints, and tokens that are integer ids of the tokenizer's
    `vocab_size` (a float would be cut to an int, an id out of the vocabulary would crash the
    run at the step that draws it).
    """
    position = {e.id: i for i, e in enumerate(train_set)}  # not every example held at once
    out: dict[str, list[int]] = {}
    seen: dict[str, str] = {}
    for where, row in jsonl_objects(path):
        row_id = unique_id(row, where, seen)
        check_fingerprints(row, where, tokenizer_fp, model_fp)
        field = next((f for f in ("predictions", "generation_ids") if f in row), None)
        if field is None:
            raise DataError(
                where, "predictions", "missing (neither predictions nor generation_ids)"
            )
        tokens = token_ids(row[field], where, field, vocab_size)
        if row_id not in position:
            continue  # predictions for examples this run does not train on
        example = train_set[position[row_id]]
        if field == "generation_ids":
            tokens = align_free_running(example, tokens)
        if len(tokens) != len(response_positions(example)):
            raise DataError(
                where,
                field,
                f"{len(tokens)} tokens for {len(response_positions(example))} response positions",
            )
        out[row_id] = tokens
    check_covered(path, seen, out, list(position), "predictions")
    return out
