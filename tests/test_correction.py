"""RAC samples: the loss mask (marker and reference only), the cut variants, the truncation
policy, building the mixed dataset, reading the answer after the marker, and the CLI."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerBase

from data_tools.schema import DataError, Example
from data_tools.scoring import CONFIRMATION, final_answer_text, is_right, math_exact_match
from data_tools.sources import load_examples
from data_tools.tokenization import IGNORE_INDEX, Encoded, check_sample, encode_examples
from methods.correction import (
    CORRECTION_MARKER,
    GATE_THRESHOLDS,
    CorrectionReport,
    build_rac_samples,
    choose_threshold,
    cut_draft,
    encode_correction,
    gated,
    main,
    read_draft_ids,
)

QUESTION = "Tom has 5 apples. He buys 3 more. How many apples does Tom have now?"
REFERENCE = "Tom now has 5+3 = <<5+3=8>>8 apples.\n#### 8"


def ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def example(i: int = 0, task: str = "math") -> Example:
    return Example(f"ex{i}", QUESTION, REFERENCE, task, f"data.jsonl:{i + 1}", {"num_steps": 1})


def sft(tokenizer: PreTrainedTokenizerBase, e: Example, max_length: int = 256):
    return encode_examples(tokenizer, [e], max_length)[0][0]


@pytest.mark.parametrize("marker", [CORRECTION_MARKER, "\nWait, let me fix that:\n"])
def test_loss_on_marker_and_reference_only(tokenizer: PreTrainedTokenizerBase, marker: str) -> None:
    e = example()
    plain = sft(tokenizer, e)
    reference = ids(tokenizer, REFERENCE) + [tokenizer.eos_token_id]
    prompt = plain.input_ids[: -len(reference)]
    draft = ids(tokenizer, "Tom now has 5*3 = <<5*3=15>>15 apples.\n#### 15")
    marker_ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    for draft_ids in (draft, draft + [tokenizer.eos_token_id]):  # generate keeps the EOS
        out = encode_correction(tokenizer, e, draft_ids, 256, marker)
        assert out.id == e.id
        assert out.input_ids == prompt + draft + marker_ids + reference
        assert out.labels == [IGNORE_INDEX] * (len(prompt) + len(draft)) + marker_ids + reference
    # The self-correcting generation's answer is what follows the marker.
    text = tokenizer.decode(draft + marker_ids + reference, skip_special_tokens=True)
    assert final_answer_text(text, marker).strip() == REFERENCE


def test_plain_without_a_draft_and_echo_with_the_reference_as_draft(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """No draft: the SFT sample. The reference as the draft (an echo, or a keep of a draft equal
    to it) is a sample like any other: prompt | reference | marker | reference EOS."""
    e = example()
    plain = sft(tokenizer, e, 40)
    assert encode_correction(tokenizer, e, None, 40) == plain
    reference = ids(tokenizer, REFERENCE)
    prompt = sft(tokenizer, e).input_ids[: -len(reference) - 1]
    tail = ids(tokenizer, CORRECTION_MARKER) + reference + [tokenizer.eos_token_id]
    for draft in (reference, reference + [tokenizer.eos_token_id]):
        out = encode_correction(tokenizer, e, draft, 256)
        assert out.input_ids == prompt + reference + tail
        assert out.labels == [IGNORE_INDEX] * (len(prompt) + len(reference)) + tail


def test_truncation_cuts_the_prompt_then_the_draft(tokenizer: PreTrainedTokenizerBase) -> None:
    e = example()
    draft = ids(tokenizer, "Tom has 15 apples.\n#### 15")
    full = encode_correction(tokenizer, e, draft, 1000)
    tail = tokenizer(CORRECTION_MARKER, add_special_tokens=False)["input_ids"]
    tail += ids(tokenizer, REFERENCE) + [tokenizer.eos_token_id]
    prompt = full.input_ids[: len(full.input_ids) - len(draft) - len(tail)]
    assert prompt[0] == tokenizer.bos_token_id and len(prompt) > 5
    bos = tokenizer.bos_token_id

    # 3 tokens too long: the prompt loses 3 tokens after its BOS; the draft is whole.
    report = CorrectionReport()
    out = encode_correction(tokenizer, e, draft, len(full.input_ids) - 3, report=report)
    assert out.input_ids == [bos] + prompt[4:] + draft + tail
    assert out.labels == [IGNORE_INDEX] * (len(prompt) - 3 + len(draft)) + tail
    assert (report.prompts_cut, report.prompt_tokens_cut, report.drafts_cut) == (1, 3, 0)

    # The prompt down to BOS and its last token, then the draft from its end (its start stays).
    report = CorrectionReport()
    max_length = 2 + 4 + len(tail)
    out = encode_correction(tokenizer, e, draft, max_length, report=report)
    assert out.input_ids == [bos, prompt[-1]] + draft[:4] + tail
    assert len(out.input_ids) == max_length
    assert (report.prompt_tokens_cut, report.drafts_cut, report.draft_tokens_cut) == (
        len(prompt) - 2,
        1,
        len(draft) - 4,
    )
    assert "1 drafts cut from the end" in report.summary()

    # No room for a draft at all, then no room for the prompt: the marker and reference stay
    # whole or the example is refused.
    out = encode_correction(tokenizer, e, draft, 2 + len(tail))
    assert out.input_ids == [bos, prompt[-1]] + tail
    with pytest.raises(DataError, match="data.jsonl:1: field 'response'.*no room"):
        encode_correction(tokenizer, e, draft, 1 + len(tail))


TEXT = st.text(st.sampled_from(list("Tom has 12 apples.\n#### <<3+4=7>>")), min_size=1, max_size=60)


@given(
    prompt=TEXT,
    response=TEXT,
    draft=st.none() | st.integers(0, 50).map(lambda n: [5 + 7 * i % 300 for i in range(n)]),
    room=st.integers(-1, 70),
)
@settings(max_examples=80, deadline=None)
def test_truncation_policy_property(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, draft, room: int
) -> None:
    """Without a draft, exactly `encode_examples`; with one, the marker, reference and EOS are
    whole and trained, the prompt is BOS + a suffix, and the draft loses its end only once the
    prompt is down to BOS and one token. `room` is what max_length leaves beside the tail."""
    reference = ids(tokenizer, response)
    e = Example("p", prompt, response, "math", "data.jsonl:1")
    marker = (
        tokenizer(CORRECTION_MARKER, add_special_tokens=False)["input_ids"]
        if draft is not None
        else []
    )
    tail = marker + reference + [tokenizer.eos_token_id]
    max_length = len(tail) + room
    if room < 2:  # not even BOS and one prompt token
        with pytest.raises(DataError, match="data.jsonl:1: field 'response'"):
            encode_correction(tokenizer, e, draft, max_length)
        return
    out = encode_correction(tokenizer, e, draft, max_length)
    if draft is None:
        assert out == sft(tokenizer, e, max_length)
        return
    full_prompt = sft(tokenizer, e, 10_000).input_ids[: -len(reference) - 1]
    # Nothing is cut that need not be.
    assert len(out.input_ids) == min(max_length, len(full_prompt) + len(draft) + len(tail))
    assert out.labels == [IGNORE_INDEX] * (len(out.input_ids) - len(tail)) + tail
    context = out.input_ids[: len(out.input_ids) - len(tail)]
    n_prompt = max(2, len(context) - len(draft))  # the draft is whole or the prompt is minimal
    kept_prompt, kept_draft = context[:n_prompt], context[n_prompt:]
    assert kept_prompt[0] == tokenizer.bos_token_id
    assert kept_prompt[1:] == full_prompt[len(full_prompt) - n_prompt + 1 :]
    assert kept_draft == draft[: len(kept_draft)]


def test_cut_variants() -> None:
    rng = random.Random(0)
    reference = [1, 2, 3, 4, 5]
    draft = [1, 2, 9, 4, 7, 8]
    assert cut_draft(draft, reference, "whole", rng) == draft
    assert cut_draft(draft, reference, "first_divergence", rng) == [1, 2, 9]
    assert cut_draft([7, 2, 3], reference, "first_divergence", rng) == [7]
    assert cut_draft([1, 2], reference, "first_divergence", rng) == [1, 2]  # stopped early
    assert cut_draft([1, 2, 3, 4, 5, 6, 7], reference, "first_divergence", rng) == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    cuts = [cut_draft(draft, reference, "random", random.Random(s)) for s in range(300)]
    assert {len(c) for c in cuts} == set(range(1, len(draft) + 1))
    assert all(c == draft[: len(c)] for c in cuts)
    assert cut_draft([], reference, "random", rng) == []
    with pytest.raises(ValueError, match="cut variant"):
        cut_draft(draft, reference, "longest", rng)


WRONG = "Tom now has 5*3 = <<5*3=15>>15 apples.\n#### 15"
RIGHT = "Tom has 5 + 3 = 8 coins.\n#### 8"  # the right answer, worded otherwise (a noun too)


def drafts_for(tokenizer: PreTrainedTokenizerBase) -> dict[str, list[list[int]]]:
    eos = tokenizer.eos_token_id
    wrong, right = ids(tokenizer, WRONG) + [eos], ids(tokenizer, RIGHT) + [eos]
    return {
        "ex0": [wrong, right, ids(tokenizer, REFERENCE) + [eos], [eos]],
        "ex1": [wrong],
        "ex2": [right, wrong[:-3]],  # the second was cut by max_new_tokens: no EOS
    }


def samples(rows: list[dict]) -> list[tuple[str, str]]:
    return [(r["id"], r["meta"]["sample"]) for r in rows if r["draft_ids"] is not None]


def test_build_counts_and_rows(tokenizer: PreTrainedTokenizerBase) -> None:
    examples = [example(i) for i in range(4)]
    rows, report = build_rac_samples(
        tokenizer,
        examples,
        drafts_for(tokenizer),
        variant="first_divergence",
        mix=0.5,
        right_drafts="correct",
    )
    assert report == {
        "examples": 4,
        "drafts": 7,
        "empty": 1,
        "equal_to_reference": 1,
        "right": 3,
        "wrong": 3,
        "keep": 0,
        "confirm": 0,
        "correct": 5,
        "echo": 0,
        "plain": 5,
        "rows": 10,
    }
    assert [r["id"] for r in rows if r["draft_ids"] is not None] == [
        "ex0#rac0",
        "ex0#rac1",
        "ex1#rac0",
        "ex2#rac0",
        "ex2#rac1",
    ]
    assert len({r["id"] for r in rows}) == len(rows)
    # 5 plain samples from 4 examples: each once, one of them twice.
    plain = {r["id"] for r in rows if r["draft_ids"] is None}
    assert len(plain) == 5 and {f"ex{i}#sft0" for i in range(4)} < plain
    assert len([i for i in plain if i.endswith("#sft1")]) == 1
    assert all(r["response"] == REFERENCE for r in rows)
    first = rows[0]
    assert first["prompt"] == QUESTION and first["task"] == "math"
    assert first["meta"] == {"num_steps": 1, "source_id": "ex0", "draft": 0, "sample": "correct"}
    # first_divergence: the wrong draft up to its first differing token, EOS dropped.
    wrong = drafts_for(tokenizer)["ex0"][0]
    assert first["draft_ids"] == cut_draft(
        wrong[:-1], ids(tokenizer, REFERENCE), "first_divergence", random.Random()
    )
    assert len(first["draft_ids"]) < len(wrong) - 1


def test_keep_or_correct_follows_the_scorer(tokenizer: PreTrainedTokenizerBase) -> None:
    """A right answer in other words (another noun) is kept, not corrected: the sample repeats
    the whole draft after the marker, whatever the cut, so the text that inference scores is
    still right. A wrong answer is corrected. The reference itself is right: kept too."""
    examples = [example(i) for i in range(3)]
    drafts = drafts_for(tokenizer)
    rows, report = build_rac_samples(
        tokenizer, examples, drafts, variant="first_divergence", mix=1.0
    )
    assert samples(rows) == [
        ("ex0#rac0", "correct"),
        ("ex0#rac1", "keep"),
        ("ex0#rac2", "keep"),
        ("ex1#rac0", "correct"),
        ("ex2#rac0", "keep"),
        ("ex2#rac1", "correct"),
    ]
    assert (report["keep"], report["correct"], report["right"], report["wrong"]) == (3, 3, 3, 3)
    by_id = {r["id"]: r for r in rows}
    keep, equal, correct = by_id["ex0#rac1"], by_id["ex0#rac2"], by_id["ex0#rac0"]
    assert keep["draft_ids"] == drafts["ex0"][1][:-1] and keep["response"] == RIGHT
    assert equal["draft_ids"] == ids(tokenizer, REFERENCE) and equal["response"] == REFERENCE
    assert correct["response"] == REFERENCE and len(correct["draft_ids"]) < len(
        ids(tokenizer, WRONG)
    )

    (loaded,) = [e for e in load_rows(rows) if e.id == "ex0#rac1"]
    out = encode_correction(tokenizer, loaded, keep["draft_ids"], 256)
    marker = ids(tokenizer, CORRECTION_MARKER)
    tail = marker + ids(tokenizer, RIGHT) + [tokenizer.eos_token_id]
    assert out.input_ids[-len(tail) - len(keep["draft_ids"]) :] == keep["draft_ids"] + tail
    assert out.labels[-len(tail) :] == tail
    generation = tokenizer.decode(out.input_ids[-len(tail) - len(keep["draft_ids"]) :])
    assert math_exact_match(final_answer_text(generation, CORRECTION_MARKER), REFERENCE)

    # confirm: the same samples as keep, each right draft followed by the fixed confirmation,
    # which inference reads as the draft's answer.
    rows, report = build_rac_samples(
        tokenizer, examples, drafts, variant="first_divergence", mix=1.0, right_drafts="confirm"
    )
    assert samples(rows) == [(i, "correct" if k == "correct" else "confirm") for i, k in [
        ("ex0#rac0", "correct"), ("ex0#rac1", "keep"), ("ex0#rac2", "keep"),
        ("ex1#rac0", "correct"), ("ex2#rac0", "keep"), ("ex2#rac1", "correct"),
    ]]  # fmt: skip
    assert (report["confirm"], report["keep"], report["correct"]) == (3, 0, 3)
    confirm = {r["id"]: r for r in rows}["ex0#rac1"]
    assert confirm["draft_ids"] == keep["draft_ids"] and confirm["response"] == CONFIRMATION
    generation = tokenizer.decode(keep["draft_ids"]) + CORRECTION_MARKER + CONFIRMATION
    assert math_exact_match(final_answer_text(generation, CORRECTION_MARKER), REFERENCE)

    # drop: right drafts make nothing; correct: right ones are corrected, the reference skipped.
    rows, report = build_rac_samples(tokenizer, examples, drafts, right_drafts="drop", mix=1.0)
    assert samples(rows) == [
        ("ex0#rac0", "correct"),
        ("ex1#rac0", "correct"),
        ("ex2#rac1", "correct"),
    ]
    assert (report["keep"], report["correct"], report["plain"]) == (0, 3, 0)
    rows, _ = build_rac_samples(tokenizer, examples, drafts, right_drafts="correct", mix=1.0)
    assert [i for i, _ in samples(rows)] == [
        "ex0#rac0",
        "ex0#rac1",
        "ex1#rac0",
        "ex2#rac0",
        "ex2#rac1",
    ]


def test_postfix_drafts_are_kept_or_corrected_by_the_postfix_scorer(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """A postfix draft is judged by its symbols (`postfix_match`), not by its tokens nor by a
    number: the reference's symbols spaced otherwise are kept, other symbols (a wrong order,
    one too many) corrected."""
    reference = "a b c * +"
    e = Example("pf0", "Write in postfix notation: a + b * c", reference, "postfix", "data.jsonl:1")
    texts = ("a b + c *", "a  b c * +", reference, "a b c * + c")
    drafts = {"pf0": [ids(tokenizer, t) + [tokenizer.eos_token_id] for t in texts]}
    assert drafts["pf0"][1] != drafts["pf0"][2]  # right, in other tokens
    rows, report = build_rac_samples(tokenizer, [e], drafts, variant="first_divergence", mix=1.0)
    assert samples(rows) == [
        ("pf0#rac0", "correct"),
        ("pf0#rac1", "keep"),
        ("pf0#rac2", "keep"),
        ("pf0#rac3", "correct"),
    ]
    assert (report["right"], report["wrong"], report["equal_to_reference"]) == (2, 2, 1)
    responses = [r["response"] for r in rows]
    assert responses == [reference, "a  b c * +", reference, reference]
    assert all(is_right("postfix", r, reference) for r in responses)
    rows, report = build_rac_samples(tokenizer, [e], drafts, right_drafts="drop", mix=1.0)
    assert samples(rows) == [("pf0#rac0", "correct"), ("pf0#rac3", "correct")]


def load_rows(rows: list[dict]) -> list[Example]:
    return [Example(r["id"], r["prompt"], r["response"], r["task"], meta=r["meta"]) for r in rows]


def test_echo_matches_the_draft_samples_with_the_reference(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Echo: the rows the drafts would make, same ids and number, each prompt | reference |
    marker | reference EOS; the plain samples are the same."""
    examples = [example(i) for i in range(3)]
    drafts = drafts_for(tokenizer)
    for right_drafts in ("keep", "drop"):
        arm, _ = build_rac_samples(tokenizer, examples, drafts, right_drafts=right_drafts)
        echo, report = build_rac_samples(
            tokenizer, examples, drafts, variant="echo", right_drafts=right_drafts
        )
        assert [r["id"] for r in echo] == [r["id"] for r in arm]
        assert report["echo"] == len(samples(arm)) and report["keep"] == report["correct"] == 0
        assert [r for r in echo if r["draft_ids"] is None] == [
            r for r in arm if r["draft_ids"] is None
        ]
        for row in echo:
            if row["draft_ids"] is not None:
                assert row["meta"]["sample"] == "echo"
                assert (row["draft_ids"], row["response"]) == (ids(tokenizer, REFERENCE), REFERENCE)


def test_build_mix_and_refusals(tokenizer: PreTrainedTokenizerBase) -> None:
    examples = [example(i) for i in range(3)]
    drafts = drafts_for(tokenizer)
    # 3 corrections at mix 0.25 need 9 plain samples: each of the 3 examples three times.
    rows, report = build_rac_samples(tokenizer, examples, drafts, right_drafts="drop", mix=0.25)
    plain = [r["id"] for r in rows if r["draft_ids"] is None]
    assert report["plain"] == 9 and len(rows) == 12
    assert sorted(plain) == sorted(f"ex{i}#sft{r}" for i in range(3) for r in range(3))

    # A task without a scorer: every draft that differs from the reference is corrected.
    for right_drafts in ("keep", "drop"):
        with pytest.raises(ValueError, match=f"right_drafts='{right_drafts}'.*only tasks math, "):
            build_rac_samples(tokenizer, [example(0, "qa")], {}, right_drafts=right_drafts)
    rows, report = build_rac_samples(
        tokenizer, [example(0, "qa")], {"ex0": drafts["ex1"]}, right_drafts="correct"
    )
    assert report["right"] is None and report["correct"] == 1
    with pytest.raises(ValueError, match="mix"):
        build_rac_samples(tokenizer, examples, drafts, mix=0.0)
    with pytest.raises(ValueError, match="right_drafts must be one of"):
        build_rac_samples(tokenizer, examples, drafts, right_drafts="only_wrong")
    with pytest.raises(ValueError, match="not in the examples"):
        build_rac_samples(tokenizer, examples[:1], drafts)


def test_build_is_deterministic(tokenizer: PreTrainedTokenizerBase) -> None:
    examples = [example(i) for i in range(5)]
    drafts = drafts_for(tokenizer)

    def build(seed: int) -> list[dict]:
        return build_rac_samples(tokenizer, examples, drafts, variant="random", mix=0.3, seed=seed)[
            0
        ]

    assert build(0) == build(0)
    assert any(build(0) != build(seed) for seed in range(1, 5))


def test_final_answer_text() -> None:
    text = f"Tom has 15.{CORRECTION_MARKER}Tom has 9.{CORRECTION_MARKER}Tom has 8.\n#### 8"
    assert final_answer_text(text, CORRECTION_MARKER) == "Tom has 8.\n#### 8"
    assert final_answer_text("#### 8", CORRECTION_MARKER) == "#### 8"
    assert final_answer_text("a FIX b FIX c", marker=" FIX ") == "c"
    # A confirmation stands for the answer before its marker, however many came before.
    assert final_answer_text(f"a FIX b FIX  {CONFIRMATION}\n", marker=" FIX ") == "b"
    assert final_answer_text(f"a FIX {CONFIRMATION} FIX {CONFIRMATION}", marker=" FIX ") == "a"
    assert final_answer_text(f"a FIX {CONFIRMATION} and more", marker=" FIX ") != "a"
    with pytest.raises(ValueError, match="marker"):
        final_answer_text("x", marker="")


def test_the_gate_threshold_is_chosen_by_the_scorer() -> None:
    """`choose_threshold` scores each threshold's gated answers: a draft confirmed where its
    confirmation is at least that probable, the second pass elsewhere."""

    def row(draft: str, second: str, probability: float) -> dict:
        generation = f"{draft}{CORRECTION_MARKER}{second}"
        return {"generation": generation, "reference": "a b +", "confirm_probability": probability}

    rows = [
        row("a b +", "a b -", 0.4),  # a right draft that a rewrite breaks
        row("a b *", "a b +", 0.05),  # a wrong draft that a rewrite repairs
        row("a b +", CONFIRMATION, 0.8),  # confirmed by the second pass itself
        row("a b *", "a b -", 0.02),  # wrong either way
    ]
    threshold, table = choose_threshold(rows, "postfix", CORRECTION_MARKER)
    assert [t["threshold"] for t in table] == list(GATE_THRESHOLDS)
    correct = {t["threshold"]: t["correct"] for t in table}
    rewrites = {t["threshold"]: t["rewrites"] for t in table}
    assert [correct[t] for t in GATE_THRESHOLDS] == [2, 2, 2, 3, 3, 3, 2, 2, 2, 2]
    assert [rewrites[t] for t in (0.0, 0.03, 0.1, 0.5, 0.9, None)] == [0, 1, 2, 3, 3, 3]
    assert threshold == 0.1  # the lowest of the best
    text = gated(rows[1]["generation"], 0.05, 0.05, CORRECTION_MARKER)
    assert text == f"a b *{CORRECTION_MARKER}{CONFIRMATION}"
    assert gated(rows[1]["generation"], 0.05, None, CORRECTION_MARKER) == rows[1]["generation"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cli_round_trip(tokenizer: PreTrainedTokenizerBase, tmp_path: Path, capsys) -> None:
    tokenizer.save_pretrained(tmp_path / "tok")
    data = write_jsonl(
        tmp_path / "train.jsonl",
        [{"id": f"ex{i}", "question": QUESTION, "answer": REFERENCE} for i in range(3)],
    )
    drafts = drafts_for(tokenizer)
    generations = [
        {"id": f"{source}-s{k}", "generation_ids": d, "meta": {"source_id": source, "sample": k}}
        for source, ds in drafts.items()
        for k, d in enumerate(ds)
    ]
    gen = write_jsonl(tmp_path / "drafts.jsonl", generations)
    out = tmp_path / "rac.jsonl"
    argv = ["--data", str(data), "--drafts", str(gen), "--tokenizer", str(tmp_path / "tok")]
    options = ["--variant", "first_divergence", "--mix", "0.5", "--right_drafts", "drop"]
    options += ["--seed", "3"]
    main([*argv, "--output", str(out), *options])
    printed = capsys.readouterr().out
    assert '"keep": 0, "confirm": 0, "correct": 3' in printed and "wrote 6 rows" in printed

    # as the loader reads them: GSM8K rows carry their reference's number of reasoning lines
    examples = [
        Example(f"ex{i}", QUESTION, REFERENCE, "math", meta={"num_steps": 1}) for i in range(3)
    ]
    expected, _ = build_rac_samples(
        tokenizer,
        examples,
        drafts,
        variant="first_divergence",
        mix=0.5,
        right_drafts="drop",
        seed=3,
    )
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines == expected
    loaded, _ = load_examples(str(out), task="math")
    draft_ids = read_draft_ids(out, len(tokenizer))
    assert [(e.id, draft_ids[e.id]) for e in loaded] == [
        (r["id"], r["draft_ids"]) for r in expected
    ]
    for e in loaded:
        assert encode_correction(tokenizer, e, draft_ids[e.id], 256).num_trained > 0

    plain_data = write_jsonl(
        tmp_path / "plain.jsonl", [{"id": "a", "prompt": "q", "response": "r"}]
    )
    with pytest.raises(DataError, match=r"plain.jsonl:1: field 'draft_ids': missing"):
        read_draft_ids(plain_data, len(tokenizer))

    bad = write_jsonl(
        tmp_path / "bad.jsonl", [generations[0], {"id": "nope", "generation_ids": []}]
    )
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'id': 'nope' is not an example"):
        main(
            [
                "--data",
                str(data),
                "--drafts",
                str(bad),
                "--tokenizer",
                str(tmp_path / "tok"),
                "--output",
                str(out),
            ]
        )


def test_cli_keeps_right_drafts_and_checks_that_their_text_fits(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path, capsys
) -> None:
    """By default a right draft is kept; the fit check encodes each row's own target (a keep's
    is its draft, here longer than the reference) and names the data's line."""
    tokenizer.save_pretrained(tmp_path / "tok")
    data = write_jsonl(
        tmp_path / "train.jsonl", [{"id": "ex0", "question": QUESTION, "answer": REFERENCE}]
    )
    long_right = "Tom had 5 coins, then 3 more coins, so 5 + 3 = 8 coins in all.\n#### 8"
    gen = write_jsonl(
        tmp_path / "drafts.jsonl",
        [{"id": "ex0", "generation_ids": ids(tokenizer, long_right)}],
    )
    argv = ["--data", str(data), "--drafts", str(gen), "--tokenizer", str(tmp_path / "tok")]
    argv += ["--output", str(tmp_path / "rac.jsonl"), "--mix", "1.0"]
    main(argv)
    assert '"keep": 1, "confirm": 0, "correct": 0' in capsys.readouterr().out
    row = json.loads((tmp_path / "rac.jsonl").read_text())
    assert (row["response"], row["meta"]["sample"]) == (long_right, "keep")

    # Room for the reference after the marker, not for the draft again.
    tail = len(ids(tokenizer, CORRECTION_MARKER)) + len(ids(tokenizer, REFERENCE)) + 1
    assert len(ids(tokenizer, long_right)) > len(ids(tokenizer, REFERENCE)) + 2
    with pytest.raises(DataError, match=r"train.jsonl:1: field 'response'.*no room"):
        main([*argv, "--max_length", str(tail + 2)])


def test_guard_a_correction_sample_with_a_masked_eos_is_refused(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """With pad = EOS, the correction sample still trains its final EOS; the same sample with
    pads masked by id (the classic collator bug) loses it and is refused, naming the example."""
    same = copy.deepcopy(tokenizer)
    same.pad_token = same.eos_token
    e = example(4)
    draft = ids(same, "Tom now has 5*3 = <<5*3=15>>15 apples.\n#### 15")
    built = encode_correction(same, e, draft, 256)
    assert built.labels[-1] == same.eos_token_id == same.pad_token_id
    masked = Encoded(e.id, built.input_ids, built.labels[:-1] + [IGNORE_INDEX])
    with pytest.raises(DataError, match=r"^data\.jsonl:5: .*'ex4': the final EOS"):
        check_sample(e, masked, same.eos_token_id, len(ids(same, REFERENCE)))
