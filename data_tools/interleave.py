"""BASH's training context: the ground-truth response with some of its tokens replaced by the model's.

A training sequence is prompt + response + EOS with labels on the response (tokenization.py).
`interleave` replaces the input token at each response position, with probability p, by the
model's token for that position; the labels stay the ground truth. The model thus learns to
continue correctly from contexts that contain its own tokens, as at inference, while its
targets are unchanged. The prompt is never touched.

Which positions are replaced depends only on (seed, step, example id), drawn from a generator of
its own per example: never on the batch an example lands in, its place there, the micro-batch
split or the number of ranks, so a run is reproducible and resumable however it is laid out.
Python's `random.Random` is used because its `random()` sequence for a given seed is guaranteed
not to change across Python versions. For a fixed (seed, step, example), the positions replaced
at a probability p are a subset of those replaced at any larger p.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from data_tools.schema import DataError
from data_tools.tokenization import IGNORE_INDEX, Encoded


def response_positions(e: Encoded) -> list[int]:
    """The positions whose label is trained: the response and its EOS."""
    return [i for i, label in enumerate(e.labels) if label != IGNORE_INDEX]


def _example_rng(seed: int, step: int, example_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x00{step}\x00{example_id}".encode()).digest()
    return random.Random(int.from_bytes(digest, "little"))


def interleave(
    e: Encoded, predictions: Sequence[int], p: float, seed: int, step: int
) -> tuple[Encoded, int]:
    """A copy of `e` whose input token at the j-th response position is `predictions[j]` with
    probability `p` (independently per position), and the number of positions chosen.

    A chosen position counts as replaced even where the model's token equals the ground truth,
    so that the count over a batch, divided by its response positions, estimates p. p = 0 gives
    `e` unchanged (SFT's batch exactly); p = 1 puts every prediction in.
    """
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
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
        for position, token in zip(positions, predictions, strict=True):
            if rng.random() < p:
                input_ids[position] = token
                replaced += 1
    return Encoded(e.id, input_ids, list(e.labels)), replaced


def align_free_running(e: Encoded, generation_ids: Sequence[int]) -> list[int]:
    """Predictions from a free-running generation, aligned by position: the j-th generated token
    for the j-th response position, and the ground truth where the generation has ended (it is
    shorter than the response) so that the rest of the context stays the reference's."""
    return [
        generation_ids[j] if j < len(generation_ids) else e.labels[position]
        for j, position in enumerate(response_positions(e))
    ]
