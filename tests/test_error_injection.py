"""Error injection: the wrong value goes exactly where asked (line K's result, both copies, nothing
else), continuations are told apart as recovered, consistent or derailed, and a run on a tiny
model accounts for every example."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from data_tools.schema import DataError, Example
from data_tools.synthetic_math import Difficulty, make_splits
from data_tools.tokenization import encode_examples, encode_prompts
from generate.error_injection import (
    Injected,
    InjectionArgs,
    classify,
    contexts,
    inject,
    main,
    next_from,
    prepare,
)
from generate.error_propagation import parse_step, step_lines
from tests.models import problems_and_model

# Tom has 5 apples, buys 3 more, ends up with twice as many, gives away 8: the last line's
# result (8) is also written as the value it starts from and as the operand.
LINES = (
    "Tom now has 5+3 = <<5+3=8>>8 apples.",
    "Tom now has 8*2 = <<8*2=16>>16 apples.",
    "Tom now has 16-8 = <<16-8=8>>8 apples.",
)
REFERENCE = "\n".join([*LINES, "#### 8"])


def example(answer: str = REFERENCE, id: str = "tom") -> Example:
    return Example(id, "Tom has 5 apples. ...", answer, "math")


@pytest.mark.parametrize("k", [1, 2, 3])
def test_only_line_k_changes_and_only_its_result(k: int) -> None:
    for seed in range(20):
        item = prepare(example(), k, seed, max_offset=5)
        assert item is not None and item.step == k
        assert item.prefix.endswith("\n")  # the model goes on with the next line
        lines = item.prefix.split("\n")[:-1]
        assert lines[: k - 1] == list(LINES[: k - 1])  # earlier lines untouched, later ones gone
        assert len(lines) == k
        right = parse_step(LINES[k - 1])
        written = parse_step(lines[k - 1])
        assert item.right == right.y and item.wrong != right.y
        assert 1 <= abs(item.wrong - right.y) <= 5 and item.wrong >= 1
        # x, op and b as they were; the result wrong in both places, so the line still agrees
        assert (written.x, written.op, written.b, written.y) == (
            right.x,
            right.op,
            right.b,
            item.wrong,
        )
        assert written.agrees
        head, _, _ = LINES[k - 1].partition("<<")
        assert (
            lines[k - 1]
            == f"{head}<<{right.x}{right.op}{right.b}={item.wrong}>>{item.wrong} apples."
        )


def test_the_wrong_value_is_seeded_and_both_ways() -> None:
    draws = [prepare(example(), 2, seed, 5).wrong for seed in range(60)]
    assert draws == [prepare(example(), 2, seed, 5).wrong for seed in range(60)]
    assert {w > 16 for w in draws} == {True, False}  # above and below the right value
    assert len(set(draws)) > 5
    other_id = [prepare(example(id="ana"), 2, seed, 5).wrong for seed in range(60)]
    assert other_id != draws


def test_the_consistent_answer_follows_the_later_steps() -> None:
    for k, later in [(1, lambda w: w * 2 - 8), (2, lambda w: w - 8), (3, lambda w: w)]:
        item = prepare(example(), k, 0, 5)
        assert item.right_answer == "8"
        assert item.consistent_answer == str(later(item.wrong))


def test_the_wrong_value_keeps_later_divisions_whole() -> None:
    answer = "Ana now has 12/3 = <<12/3=4>>4 pens.\nAna now has 4/2 = <<4/2=2>>2 pens.\n#### 2"
    for seed in range(30):
        item = prepare(example(answer), 1, seed, 5)
        assert item.wrong % 2 == 0 and item.wrong >= 1
        assert item.consistent_answer == str(item.wrong // 2)
    with pytest.raises(DataError, match="within 1 of 4"):  # 3 and 5 are odd
        prepare(example(answer), 1, 0, 1)


def test_no_value_below_one() -> None:
    answer = "Ana now has 3-2 = <<3-2=1>>1 pens.\n#### 1"
    assert {prepare(example(answer), 1, seed, 3).wrong for seed in range(30)} == {2, 3, 4}


def test_too_few_steps_and_bad_lines() -> None:
    assert prepare(example(), 4, 0, 5) is None
    with pytest.raises(DataError, match="step line 2"):
        prepare(example(REFERENCE.replace("<<8*2=16>>", "")), 1, 0, 5)
    with pytest.raises(ValueError, match="one result written twice"):
        inject("Tom now has 5+3 = <<5+3=8>>9 apples.", 7)


# Step 1 of REFERENCE with 8 made 9: from 9 the later steps give 9*2-8 = 10.
AT_1 = Injected("tom", 1, right=8, wrong=9, prefix="", right_answer="8", consistent_answer="10")


def going_on(*steps: str, final: str | None = None) -> str:
    """A continuation: step lines ("8*2=16"), then the final answer when given."""
    lines = [f"Tom now has {s.split('=')[0]} = <<{s}>>{s.split('=')[1]} apples." for s in steps]
    return "\n".join(lines + ([f"#### {final}"] if final else []))


@pytest.mark.parametrize(
    ("continuation", "starts", "outcome"),
    [
        (going_on("8*2=16", "16-8=8", final="8"), "right", "recovered"),  # back on the chain
        # from the right value, a slip later: recovered from the injected error all the same
        (going_on("8*2=16", "16-8=9", final="9"), "right", "recovered"),
        (going_on("9*2=16", "16-8=8", final="8"), "wrong", "recovered"),  # right in the end
        (going_on("9*2=18", "18-8=10", final="10"), "wrong", "consistent"),  # sound from 9
        (going_on("9*2=18", "18-8=10"), "wrong", "consistent"),  # no "####": its last number
        (going_on("9*2=17", "17-8=9", final="9"), "wrong", "derailed"),  # a new error
        (going_on("7*2=14", "14-8=6", final="6"), "other", "derailed"),
        (going_on("9*3=27", final="19"), "wrong", "derailed"),
        ("apples apples apples", "none", "derailed"),
        ("", "none", "derailed"),  # the prefix's numbers (9) never count
    ],
)
def test_classify(continuation: str, starts: str, outcome: str) -> None:
    assert next_from(AT_1, continuation) == starts
    assert classify(AT_1, continuation) == outcome


def test_classify_at_the_last_step() -> None:
    item = Injected("tom", 3, right=8, wrong=6, prefix="", right_answer="8", consistent_answer="6")
    assert classify(item, "#### 8") == "recovered"
    assert classify(item, "#### 6") == "consistent"
    assert classify(item, "#### 7") == "derailed"


def test_the_context_is_what_training_shows(tokenizer) -> None:
    """prompt + prefix tokens are the start of the training sequence of an answer that begins with
    the injected prefix: the model continues a context laid out as those it learnt from."""
    rows = make_splits({"train": 20}, Difficulty(), seed=4)["train"]
    for row in rows:
        e = Example(row["id"], row["question"], row["answer"], "math")
        for k in range(1, len(step_lines(e.response)) + 1):
            item = prepare(e, k, 0, 5)
            rest = "\n".join(e.response.split("\n")[k:])
            prompts, _ = encode_prompts(tokenizer, [e.prompt], 256)
            (context,) = contexts(tokenizer, prompts, [item.prefix])
            trained = Example(e.id, e.prompt, item.prefix + rest, "math")
            encoded = encode_examples(tokenizer, [trained], 512)[0][0]
            assert encoded.input_ids[: len(context)] == context


def test_bad_options() -> None:
    for steps in ("0", "1,,2", "a", ""):
        with pytest.raises(ValueError, match="inject_at"):
            InjectionArgs("out", inject_at=steps)
    assert InjectionArgs("out", inject_at="3,1,3").step_list() == [1, 3]
    with pytest.raises(ValueError, match="max_offset"):
        InjectionArgs("out", max_offset=0)


def test_a_run_accounts_for_every_example(tmp_path: Path, tokenizer) -> None:
    files = problems_and_model(tmp_path, tokenizer, 10, seed=5)
    out = tmp_path / "out"
    result = main(
        [
            *("--model_name_or_path", str(files / "model"), "--data", str(files / "data.jsonl")),
            *("--output_dir", str(out), "--inject_at", "1,2,4", "--batch_size", "4"),
            *("--max_new_tokens", "24", "--precision", "fp32"),
        ]
    )
    assert json.loads((out / "error_injection.json").read_text()) == result
    rows = [json.loads(line) for line in (out / "error_injection.jsonl").open()]
    assert [s["step"] for s in result["per_step"]] == [1, 2, 4]
    for s in result["per_step"]:
        assert sum(s["counts"].values()) == s["examples"]
        assert s["examples"] + s["too_short"] == result["examples"] == 10
        judged = [r for r in rows if r["step"] == s["step"]]
        assert len(judged) == s["examples"]
        assert all(r["prefix"].count("\n") == s["step"] for r in judged)
        assert sum(s["next_step_from"].values()) == s["examples"]
    assert result["per_step"][0]["too_short"] == 0  # every problem has a first step
    assert len(rows) == sum(s["examples"] for s in result["per_step"])
    assert matplotlib.image.imread(out / "error_injection.png").shape[-1] in (3, 4)
