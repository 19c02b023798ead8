"""BASH's interleaving: what changes (response inputs only), what never does (prompt, labels),
how often (p, and over response positions with a position ramp), and that each decision depends
on (seed, step, id) alone."""

from __future__ import annotations

import math
import random

import pytest
from transformers import PreTrainedTokenizerBase

from data_tools.schema import DataError, Example
from data_tools.tokenization import IGNORE_INDEX, Encoded, encode_examples
from methods.scheduled_sampling import (
    align_free_running,
    interleave,
    num_changed,
    response_positions,
)


def sft_samples(tokenizer: PreTrainedTokenizerBase, n: int) -> list[Encoded]:
    examples = [
        Example(
            f"ex{i}", f"Tom has {i} apples. How many?", f"Tom has {i} apples.\n#### {i}", "math"
        )
        for i in range(n)
    ]
    return encode_examples(tokenizer, examples, max_length=128)[0]


def model_tokens(e: Encoded, rng: random.Random) -> list[int]:
    """Stand-in predictions that differ from the ground truth at every position."""
    return [e.labels[i] + 1 + rng.randrange(5) for i in response_positions(e)]


def changed(a: Encoded, b: Encoded) -> list[int]:
    return [i for i, (x, y) in enumerate(zip(a.input_ids, b.input_ids, strict=True)) if x != y]


def test_response_positions() -> None:
    e = Encoded("a", [2, 10, 11, 20, 21, 3], [IGNORE_INDEX] * 3 + [20, 21, 3])
    assert response_positions(e) == [3, 4, 5]


def test_prompt_and_labels_untouched(tokenizer: PreTrainedTokenizerBase) -> None:
    rng = random.Random(0)
    for e in sft_samples(tokenizer, 20):
        predictions = model_tokens(e, rng)
        out, replaced = interleave(e, predictions, p=0.5, seed=1, step=3)
        first = response_positions(e)[0]
        assert out.id == e.id
        assert out.input_ids[:first] == e.input_ids[:first]  # the prompt
        assert out.labels == e.labels  # targets stay the reference
        assert len(changed(out, e)) == replaced  # predictions all differ from the ground truth
        for i in changed(out, e):
            assert out.input_ids[i] == predictions[response_positions(e).index(i)]


def test_p0_is_sft_exactly(tokenizer: PreTrainedTokenizerBase) -> None:
    rng = random.Random(0)
    for e in sft_samples(tokenizer, 10):
        snapshot = Encoded(e.id, list(e.input_ids), list(e.labels))
        out, replaced = interleave(e, model_tokens(e, rng), p=0.0, seed=0, step=0)
        assert (out, replaced) == (snapshot, 0)
        assert out.input_ids is not e.input_ids  # a copy: the caller's sample is not aliased
        assert e == snapshot


def test_p1_puts_every_prediction_in(tokenizer: PreTrainedTokenizerBase) -> None:
    rng = random.Random(0)
    for e in sft_samples(tokenizer, 10):
        predictions = model_tokens(e, rng)
        out, replaced = interleave(e, predictions, p=1.0, seed=0, step=7)
        assert [out.input_ids[i] for i in response_positions(e)] == predictions
        assert replaced == len(predictions)


def test_equal_prediction_still_counts() -> None:
    e = Encoded("a", [2, 10, 20, 21, 3], [IGNORE_INDEX] * 2 + [20, 21, 3])
    out, replaced = interleave(e, [20, 21, 3], p=1.0, seed=0, step=0)
    assert out == e and replaced == 3 and num_changed(out) == 0


def test_changed_counts_only_tokens_that_differ(tokenizer: PreTrainedTokenizerBase) -> None:
    """0 at p = 0, the predictions' divergence from the reference at p = 1, at most the replaced
    positions in between: predictions equal to the reference at about half the positions."""
    rng = random.Random(0)
    for e in sft_samples(tokenizer, 20):
        reference = [e.labels[i] for i in response_positions(e)]
        predictions = [t if rng.random() < 0.5 else t + 1 for t in reference]
        diverging = sum(a != b for a, b in zip(predictions, reference, strict=True))
        assert 0 < diverging < len(reference)
        assert num_changed(interleave(e, predictions, p=0.0, seed=0, step=0)[0]) == 0
        assert num_changed(interleave(e, predictions, p=1.0, seed=0, step=0)[0]) == diverging
        for p in (0.2, 0.5, 0.8):
            out, replaced = interleave(e, predictions, p, seed=0, step=1)
            assert num_changed(out) == len(changed(out, e)) <= replaced


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_replaced_fraction_estimates_p(tokenizer: PreTrainedTokenizerBase, p: float) -> None:
    samples, rng = sft_samples(tokenizer, 50), random.Random(0)
    predictions = [model_tokens(e, rng) for e in samples]
    replaced = total = 0
    for step in range(20):
        for e, pred in zip(samples, predictions, strict=True):
            replaced += interleave(e, pred, p, seed=3, step=step)[1]
            total += len(pred)
    assert abs(replaced / total - p) <= 3 * math.sqrt(p * (1 - p) / total)


def test_nested_in_p(tokenizer: PreTrainedTokenizerBase) -> None:
    """For one (seed, step, id), the positions replaced at a smaller p are replaced at a larger p."""
    e = sft_samples(tokenizer, 1)[0]
    predictions = model_tokens(e, random.Random(0))

    def chosen(p: float) -> set[int]:
        return set(changed(interleave(e, predictions, p, seed=0, step=4)[0], e))

    assert chosen(0.2) <= chosen(0.5) <= chosen(0.8)


def test_depends_only_on_seed_step_id(tokenizer: PreTrainedTokenizerBase) -> None:
    samples, rng = sft_samples(tokenizer, 12), random.Random(0)
    predictions = {e.id: model_tokens(e, rng) for e in samples}

    def run(batch: list[Encoded], seed: int = 5, step: int = 2) -> dict[str, Encoded]:
        return {e.id: interleave(e, predictions[e.id], 0.5, seed, step)[0] for e in batch}

    whole = run(samples)
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    assert run(shuffled) == whole  # another batch order
    assert run(shuffled[:3]) | run(shuffled[3:]) == whole  # other micro-batches / ranks
    assert run([samples[4]]) == {samples[4].id: whole[samples[4].id]}  # alone
    assert run(samples, step=3) != whole
    assert run(samples, seed=6) != whole


def test_length_mismatch_names_the_example() -> None:
    e = Encoded("ex-7", [2, 10, 20, 21, 3], [IGNORE_INDEX] * 2 + [20, 21, 3])
    with pytest.raises(DataError, match="ex-7.*2 predictions for 3 response positions"):
        interleave(e, [5, 6], p=0.5, seed=0, step=0)
    with pytest.raises(ValueError, match="p must be in"):
        interleave(e, [5, 6, 7], p=1.5, seed=0, step=0)


def test_align_free_running() -> None:
    e = Encoded("a", [2, 10, 20, 21, 22, 3], [IGNORE_INDEX] * 2 + [20, 21, 22, 3])
    assert align_free_running(e, [30, 31]) == [30, 31, 22, 3]  # short: ground truth after it
    assert align_free_running(e, [30, 31, 32, 3]) == [30, 31, 32, 3]
    assert align_free_running(e, [30, 31, 32, 33, 34, 3]) == [30, 31, 32, 33]  # long: cut
    assert align_free_running(e, []) == [20, 21, 22, 3]
    out, _ = interleave(e, align_free_running(e, [30, 31]), p=1.0, seed=0, step=0)
    assert out.input_ids == [2, 10, 30, 31, 22, 3]


def long_response(i: int, n: int = 40) -> Encoded:
    """An example with a 3-token prompt and `n` response positions."""
    return Encoded(
        f"long{i}", [1, 5, 6, *range(100, 100 + n)], [IGNORE_INDEX] * 3 + [*range(100, 100 + n)]
    )


def test_no_ramp_replaces_the_same_positions_as_ever() -> None:
    """Positions drawn before the ramp existed, pinned: a ramp of 0 leaves every run as it was."""
    e = Encoded("pinned", [1, 5, 6, *range(100, 140)], [IGNORE_INDEX] * 3 + [*range(100, 140)])
    predictions = [t + 1000 for t in range(100, 140)]
    pinned = [3, 8, 10, 11, 14, 17, 20, 25, 34, 37, 39]
    for out, replaced in (
        interleave(e, predictions, 0.3, seed=11, step=4),
        interleave(e, predictions, 0.3, seed=11, step=4, position_ramp=0),
    ):
        assert changed(out, e) == pinned and replaced == len(pinned)


@pytest.mark.parametrize("ramp", [1, 10, 60])
def test_a_ramp_at_p0_is_sft_exactly(ramp: int) -> None:
    e = long_response(0)
    out, replaced = interleave(e, [t + 1 for t in range(100, 140)], 0.0, 0, 0, position_ramp=ramp)
    assert (out, replaced) == (e, 0)


def test_a_ramp_replaces_early_positions_seldom() -> None:
    """Per position j, the replaced fraction over 50 examples x 40 steps is p * min(1, (j+1)/N)
    within 5 standard deviations; the first positions far below the last."""
    p, ramp, n, samples = 0.5, 20, 40, [long_response(i) for i in range(50)]
    hits, trials = [0] * n, 0
    for step in range(40):
        for e in samples:
            out, replaced = interleave(e, [t + 1000 for t in range(100, 100 + n)], p, 3, step, ramp)
            chosen = [i - 3 for i in changed(out, e)]
            assert replaced == len(chosen)
            for j in chosen:
                hits[j] += 1
            trials += 1
    for j in range(n):
        expected = p * min(1, (j + 1) / ramp)
        assert abs(hits[j] / trials - expected) <= 5 * math.sqrt(expected * (1 - expected) / trials)
    early, late = sum(hits[:5]) / (5 * trials), sum(hits[ramp:]) / ((n - ramp) * trials)
    assert early < 0.1 < 0.4 < late  # expected 0.0375 and 0.5


def test_a_ramp_only_leaves_out_positions() -> None:
    """With one (seed, step, id), a longer ramp replaces a subset of a shorter one's positions,
    and a larger p a superset, so the ramp keeps the nesting of the flat draws."""
    e = long_response(7)
    predictions = [t + 1 for t in range(100, 140)]

    def chosen(p: float, ramp: int) -> set[int]:
        return set(changed(interleave(e, predictions, p, seed=2, step=9, position_ramp=ramp)[0], e))

    assert chosen(0.6, 40) <= chosen(0.6, 10) <= chosen(0.6, 0)
    assert chosen(0.3, 10) <= chosen(0.6, 10) <= chosen(0.9, 10)
    assert chosen(0.9, 40) != chosen(0.9, 0)


@pytest.mark.parametrize("ramp", [-1, 2.0, True])
def test_a_bad_ramp_is_refused(ramp: object) -> None:
    with pytest.raises(ValueError, match="position_ramp"):
        interleave(long_response(0), list(range(40)), 0.5, 0, 0, position_ramp=ramp)
