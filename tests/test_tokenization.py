"""Label masking and the truncation policy, as properties over random examples; and padding.

The expected ids are computed here one example at a time, straight from the tokenizer, and
compared with what `encode_examples` / `encode_prompts` produce for the whole batch.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerBase

from data_tools.collate import pad_left, pad_right
from data_tools.prompting import format_prompt
from data_tools.schema import DataError, Example
from data_tools.tokenization import (
    IGNORE_INDEX,
    Encoded,
    check_sample,
    encode_examples,
    encode_prompts,
)

# The task's own characters (digits, annotations, newlines) and arbitrary Unicode, which the
# tokenizer reaches through byte fallback.
TEXT = st.text(
    st.sampled_from(list("Tom has 12 apples. Then 3+4=<<3+4=7>>7\n#### "))
    | st.characters(codec="utf-8"),
    min_size=1,
    max_size=60,
)
PROPERTY = settings(max_examples=60, deadline=None)


@st.composite
def example_lists(draw: st.DrawFn) -> list[Example]:
    pairs = draw(st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=4))
    return [
        Example(f"ex{i}", p, r, "math", f"data.jsonl:{i + 1}") for i, (p, r) in enumerate(pairs)
    ]


def full_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    ids = tokenizer(format_prompt(tokenizer, prompt))["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    return ids


def response_ids(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def is_left_cut(cut: list[int], full: list[int], bos: int) -> bool:
    """`cut` is `full` (if short enough) or BOS followed by a suffix of `full`."""
    return cut == full or (cut[0] == bos and cut[1:] == full[len(full) - len(cut) + 1 :])


def check_encoded(tokenizer, example: Example, encoded: Encoded, max_length: int) -> int:
    """Check one encoded example against its full prompt and response; return the cut tokens."""
    full, response = (
        full_prompt(tokenizer, example.prompt),
        response_ids(tokenizer, example.response),
    )
    n_prompt = len(encoded.input_ids) - len(response)
    assert encoded.id == example.id
    assert len(encoded.input_ids) == len(encoded.labels) <= max_length
    assert encoded.labels == [IGNORE_INDEX] * n_prompt + response  # masked exactly on the prompt
    assert encoded.input_ids[n_prompt:] == response  # the response is never cut
    pairs = zip(encoded.input_ids, encoded.labels, strict=True)
    assert all(i == label for i, label in pairs if label != IGNORE_INDEX)
    assert encoded.num_trained == len(response)
    prompt = encoded.input_ids[:n_prompt]
    assert is_left_cut(prompt, full, tokenizer.bos_token_id)
    if prompt != full:
        assert len(encoded.input_ids) == max_length  # cut just enough
    return len(full) - len(prompt)


def lengths(tokenizer, example: Example) -> tuple[int, int]:
    return len(full_prompt(tokenizer, example.prompt)), len(
        response_ids(tokenizer, example.response)
    )


@PROPERTY
@given(example_lists(), st.integers(4, 100))
def test_truncate(tokenizer, examples: list[Example], max_length: int) -> None:
    sizes = [lengths(tokenizer, e) for e in examples]
    # BOS and at least one prompt token must fit beside the response, else it is an error.
    too_long = [e for e, (_, r) in zip(examples, sizes, strict=True) if r + 2 > max_length]
    if too_long:
        with pytest.raises(DataError) as error:
            encode_examples(tokenizer, examples, max_length, "truncate")
        assert (error.value.where, error.value.field_name) == (too_long[0].origin, "response")
        return
    encoded, report = encode_examples(tokenizer, examples, max_length, "truncate")
    assert len(encoded) == report.examples == len(examples) and report.skipped_ids == []
    cuts = [
        check_encoded(tokenizer, e, enc, max_length)
        for e, enc in zip(examples, encoded, strict=True)
    ]
    assert report.prompts_cut == sum(c > 0 for c in cuts)
    assert (
        report.prompt_tokens_cut == sum(cuts) == sum(max(0, p + r - max_length) for p, r in sizes)
    )


@PROPERTY
@given(example_lists(), st.integers(4, 100))
def test_error(tokenizer, examples: list[Example], max_length: int) -> None:
    sizes = [lengths(tokenizer, e) for e in examples]
    overlong = [(e, r) for e, (p, r) in zip(examples, sizes, strict=True) if p + r > max_length]
    if overlong:
        example, r = overlong[0]
        with pytest.raises(DataError, match="overlong: skip") as error:
            encode_examples(tokenizer, examples, max_length, "error")
        field = "response" if r + 2 > max_length else "prompt"
        assert (error.value.where, error.value.field_name) == (example.origin, field)
        return
    encoded, report = encode_examples(tokenizer, examples, max_length, "error")
    assert report.prompts_cut == 0 and len(encoded) == len(examples)
    assert all(
        check_encoded(tokenizer, e, enc, max_length) == 0
        for e, enc in zip(examples, encoded, strict=True)
    )


@PROPERTY
@given(example_lists(), st.integers(4, 100))
def test_skip(tokenizer, examples: list[Example], max_length: int) -> None:
    sizes = [lengths(tokenizer, e) for e in examples]
    fits = [p + r <= max_length for p, r in sizes]
    encoded, report = encode_examples(tokenizer, examples, max_length, "skip")
    assert report.skipped_ids == [e.id for e, ok in zip(examples, fits, strict=True) if not ok]
    kept = [e for e, ok in zip(examples, fits, strict=True) if ok]
    assert [enc.id for enc in encoded] == [e.id for e in kept]
    assert all(
        check_encoded(tokenizer, e, enc, max_length) == 0
        for e, enc in zip(kept, encoded, strict=True)
    )
    assert report.prompts_cut == report.prompt_tokens_cut == 0


def test_overlong_errors_name_origin_and_field(tokenizer) -> None:
    long_prompt = Example("a", "Tom has 12 apples. " * 20, "#### 12", "math", "train.jsonl:7")
    with pytest.raises(
        DataError, match=r"^train\.jsonl:7: field 'prompt': .* exceed max_length=32"
    ):
        encode_examples(tokenizer, [long_prompt], 32, "error")
    long_response = Example("b", "How many?", "Tom has 12 apples. " * 20, "math", "train.jsonl:8")
    for policy in ("truncate", "error"):
        with pytest.raises(DataError, match=r"^train\.jsonl:8: field 'response': .* no room"):
            encode_examples(tokenizer, [long_response], 32, policy)
    encoded, report = encode_examples(tokenizer, [long_prompt, long_response], 32, "skip")
    assert encoded == [] and report.skipped_ids == ["a", "b"]
    assert "2 skipped as too long" in report.summary()
    with pytest.raises(ValueError, match="overlong must be one of"):
        encode_examples(tokenizer, [long_prompt], 32, "cut")


@PROPERTY
@given(st.lists(TEXT, min_size=1, max_size=4), st.integers(2, 60))
def test_encode_prompts_cuts_left(tokenizer, prompts: list[str], max_prompt_length: int) -> None:
    ids, cut = encode_prompts(tokenizer, prompts, max_prompt_length)
    fulls = [full_prompt(tokenizer, p) for p in prompts]
    assert cut == sum(len(f) > max_prompt_length for f in fulls)
    for got, full in zip(ids, fulls, strict=True):
        assert len(got) == min(len(full), max_prompt_length)
        assert is_left_cut(got, full, tokenizer.bos_token_id)


def test_a_prompt_keeps_a_token_of_its_text(tokenizer) -> None:
    """BOS alone is no prompt: a budget without room for one token of text is refused."""
    with pytest.raises(ValueError, match="1 prompt tokens leave no room for the text"):
        encode_prompts(tokenizer, ["How many apples?"], 1)


def test_pad_right() -> None:
    batch = [Encoded("a", [5, 6, 7], [IGNORE_INDEX, 6, 7]), Encoded("b", [8], [8])]
    out = pad_right(batch, pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_pad_left() -> None:
    out = pad_left([[5, 6, 7], [8], []], pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]


def masked_by_pad_id(e: Encoded, pad_id: int) -> Encoded:
    """What a collator that masks padding by id does to a sample: with pad = EOS, its EOS too."""
    return Encoded(e.id, e.input_ids, [IGNORE_INDEX if t == pad_id else t for t in e.labels])


def test_guard_a_sample_without_a_trained_token_is_refused(tokenizer) -> None:
    e = Example("q1", "How many?", "#### 12", "math", "train.jsonl:3")
    built = encode_examples(tokenizer, [e], 64)[0][0]
    blind = Encoded(e.id, built.input_ids, [IGNORE_INDEX] * len(built.labels))
    with pytest.raises(
        DataError, match=r"^train\.jsonl:3: field 'response': .*'q1' has no trained"
    ):
        check_sample(e, blind, tokenizer.eos_token_id, 3)


def test_guard_a_response_without_tokens_is_refused(tokenizer) -> None:
    e = Example("q2", "How many?", "#### 12", "math", "train.jsonl:4")
    eos = tokenizer.eos_token_id
    only_eos = Encoded(e.id, [tokenizer.bos_token_id, 7, eos], [IGNORE_INDEX, IGNORE_INDEX, eos])
    with pytest.raises(DataError, match=r"^train\.jsonl:4: .*'q2': no response token is left"):
        check_sample(e, only_eos, eos, 0)


def test_guard_a_masked_eos_is_refused(tokenizer) -> None:
    """pad = EOS (Llama's usual setting): encoding trains the final EOS; masking pads by id, as
    a collator might, would not, and is refused."""
    same = copy.deepcopy(tokenizer)
    same.pad_token = same.eos_token
    e = Example("q3", "How many?", "Tom has 12 apples.\n#### 12", "math", "train.jsonl:5")
    built = encode_examples(same, [e], 64)[0][0]
    assert built.labels[-1] == built.input_ids[-1] == same.eos_token_id == same.pad_token_id
    with pytest.raises(DataError, match=r"^train\.jsonl:5: .*'q3': the final EOS \(3\) is not"):
        check_sample(e, masked_by_pad_id(built, same.pad_token_id), same.eos_token_id, 10)
