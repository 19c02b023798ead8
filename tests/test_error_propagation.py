"""Induced against propagated errors, on hand-made answers to one problem: a local error is a step
wrong on its own terms, and a step that goes on correctly from a wrong value is not one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_tools.atomic import write_jsonl
from data_tools.schema import DataError
from data_tools.synthetic_math import Difficulty, make_splits
from generate.error_propagation import (
    Chain,
    local_errors,
    main,
    read_chains,
    reference_steps,
    step_lines,
    summarise,
)
from methods.correction import CORRECTION_MARKER

# Tom has 5 apples, buys 3 more, ends up with twice as many, gives away 4.
REFERENCE = (
    "Tom now has 5+3 = <<5+3=8>>8 apples.\n"
    "Tom now has 8*2 = <<8*2=16>>16 apples.\n"
    "Tom now has 16-4 = <<16-4=12>>12 apples.\n"
    "#### 12"
)


def answer(*steps: str, final: str) -> str:
    return "\n".join([*(f"Tom now has {s} coins." for s in steps), f"#### {final}"])


def judged(generation: str) -> list[tuple[str, ...]]:
    return local_errors(step_lines(generation), reference_steps(REFERENCE, "here"))


CORRECT = answer("5+3 = <<5+3=8>>8", "8*2 = <<8*2=16>>16", "16-4 = <<16-4=12>>12", final="12")
# A slip at step 1, then every step right from the model's own wrong value.
PROPAGATED = answer("5+3 = <<5+3=9>>9", "9*2 = <<9*2=18>>18", "18-4 = <<18-4=14>>14", final="14")
# A slip at step 1, a wrong operand at step 2 (times 3), step 3 right from its own value.
TWICE = answer("5+3 = <<5+3=9>>9", "9*3 = <<9*3=27>>27", "27-4 = <<27-4=23>>23", final="23")
UNPARSEABLE = answer("Tom buys some more", "8*2 = <<8*2=16>>16", "16-4 = <<16-4=12>>12", final="12")


def test_a_correct_chain_has_no_local_error() -> None:
    assert judged(CORRECT) == [(), (), ()]  # another noun ("coins") is no error


def test_an_induced_error_then_propagated() -> None:
    assert judged(PROPAGATED) == [("arithmetic",), (), ()]


def test_a_chain_that_derails_twice() -> None:
    assert judged(TWICE) == [("arithmetic",), ("operand",), ()]


def test_unparseable_lines_are_local_errors_and_the_next_start_is_not_checked() -> None:
    assert judged(UNPARSEABLE) == [("unparseable",), (), ()]
    assert judged("I do not know.") == [("unparseable",)]
    assert judged("") == []


def test_each_reason() -> None:
    # The first step must start from the question's 5; then from the model's own result, not
    # from the reference's (16): a model that ignores its own scratchpad.
    start = answer("6+3 = <<6+3=9>>9", "8*2 = <<8*2=16>>16", "16-4 = <<16-4=12>>12", final="12")
    assert judged(start) == [("start",), ("start",), ()]
    # The line's two copies of the step must agree.
    assert judged(answer("5+3 = <<5+3=8>>9", final="9")) == [("arithmetic",)]
    assert judged(answer("5-3 = <<5-3=2>>2", final="2")) == [("operand",)]
    extra = answer(
        "5+3 = <<5+3=8>>8",
        "8*2 = <<8*2=16>>16",
        "16-4 = <<16-4=12>>12",
        "12/3 = <<12/3=4>>4",
        final="4",
    )
    assert judged(extra) == [(), (), (), ("extra",)]
    assert judged(answer("5/2 = <<5/2=2>>2", final="2")) == [("arithmetic", "operand")]


def test_reference_answers_of_the_generator_are_right_chains() -> None:
    rows = make_splits({"test": 50}, Difficulty(operations="+-*/", max_steps=8), seed=3)["test"]
    for row in rows:
        steps = reference_steps(row["answer"], row["id"])
        assert len(steps) == row["num_steps"]
        assert local_errors(step_lines(row["answer"]), steps) == [()] * row["num_steps"]


def test_summary_conditions_on_earlier_errors() -> None:
    chains = [
        Chain("correct", judged(CORRECT), 0, True),
        Chain("propagated", judged(PROPAGATED), 0, False),
        Chain("twice", judged(TWICE), 0, False),
        Chain("short", judged(answer("5+3 = <<5+3=8>>8", final="8")), 2, False),
    ]
    result = summarise(chains)
    assert (result["examples"], result["steps"], result["steps_parsed"]) == (4, 10, 10)
    assert result["missing_steps"] == 2
    assert result["reasons"] == {
        "unparseable": 0,
        "arithmetic": 2,
        "start": 0,
        "operand": 1,
        "extra": 0,
    }
    # Clean context: 3 + 1 + 1 + 1 steps, 2 of them wrong (the slips at step 1).
    assert result["no_earlier_error"] == {"steps": 6, "local_errors": 2, "rate": 2 / 6}
    # After an error: steps 2 and 3 of "propagated" and "twice", 1 of them wrong.
    assert result["after_an_error"] == {"steps": 4, "local_errors": 1, "rate": 1 / 4}
    assert result["all_steps"]["local_errors"] == 3
    assert result["exposure_bias"] == pytest.approx(1 / 4 - 2 / 6)
    assert result["final_answer_wrong"] == {"count": 3, "rate": 0.75}
    second = result["per_position"][1]
    assert second["step"] == 2
    assert second["no_earlier_error"] == {"steps": 1, "local_errors": 0, "rate": 0.0}
    assert second["after_an_error"] == {"steps": 2, "local_errors": 1, "rate": 0.5}
    assert [p["all_steps"]["steps"] for p in result["per_position"]] == [4, 3, 3]


def row(row_id: str, generation: str) -> dict:
    return {
        "id": row_id,
        "prompt": "Tom has 5 apples. ...",
        "reference": REFERENCE,
        "generation": generation,
    }


def test_the_command_writes_json_and_plot(tmp_path: Path) -> None:
    generations = tmp_path / "test.jsonl"
    # A self-correcting generation is judged after its last marker.
    corrected = PROPAGATED + CORRECTION_MARKER + CORRECT
    write_jsonl(generations, [row("a", CORRECT), row("b", PROPAGATED), row("c", corrected)])
    result = main(["--generations", str(generations), "--output_dir", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "error_propagation.json").read_text()) == result
    assert (tmp_path / "out" / "error_propagation.png").read_bytes().startswith(b"\x89PNG")
    assert result["final_answer_wrong"]["count"] == 1
    assert result["all_steps"] == {"steps": 9, "local_errors": 1, "rate": 1 / 9}


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"generation": None}, r"test.jsonl:2: field 'generation'"),
        ({"reference": "#### 12"}, r"test.jsonl:2: field 'reference': no step lines"),
        ({"reference": "Tom has 12.\n#### 12"}, r"test.jsonl:2: field 'reference': step line 1"),
        ({"id": "a"}, r"test.jsonl:2: field 'id': duplicate id 'a'"),
    ],
)
def test_bad_rows_name_their_line_and_field(tmp_path: Path, bad: dict, match: str) -> None:
    path = tmp_path / "test.jsonl"
    write_jsonl(path, [row("a", CORRECT), {**row("b", CORRECT), **bad}])
    with pytest.raises(DataError, match=match):
        read_chains(path, CORRECTION_MARKER)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "test.jsonl").write_text("")
    with pytest.raises(DataError, match="no generations"):
        read_chains(tmp_path / "test.jsonl", CORRECTION_MARKER)
