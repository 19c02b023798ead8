"""Preference pairs: every layout read to the same pair, every kind of bad row refused with its
file:line:field (in-process, and as one error line from `generate` and `train`), the encoding
(one prompt for both responses, the loss on the responses only, the overlong policies), and the
pairs made from the model's own samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from data_tools.preferences import encode_pairs, load_preferences
from data_tools.schema import DataError, Example, Preference
from data_tools.tokenization import IGNORE_INDEX, prompt_ids, response_ids
from methods.preference_pairs import build_pairs
from tests.launch import run
from tests.models import MODELS
from tests.test_bad_input import assert_one_error_line


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


GOOD = {"id": "p0", "prompt": "Ann has 3 pens. How many?", "chosen": "#### 3", "rejected": "#### 4"}
LAYOUTS = {
    "strings": GOOD,
    "explicit_prompt": {  # TRL's conversational format
        "id": "p0",
        "prompt": [user(GOOD["prompt"])],
        "chosen": [assistant("#### 3")],
        "rejected": [assistant("#### 4")],
    },
    "conversations": {  # UltraFeedback-binarized: whole conversations, the prompt copied beside
        "prompt_id": "p0",
        "prompt": GOOD["prompt"],
        "chosen": [user(GOOD["prompt"]), assistant("#### 3")],
        "rejected": [user(GOOD["prompt"]), assistant("#### 4")],
        "score_chosen": 8.0,
    },
}


def write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_reads_as_the_same_pair(tmp_path: Path, layout: str) -> None:
    path = write(tmp_path / "pairs.jsonl", [LAYOUTS[layout]])
    (pair,), skipped = load_preferences(str(path))
    assert skipped == 0
    assert pair == Preference("p0", GOOD["prompt"], "#### 3", "#### 4", f"{path}:1")


def test_a_history_is_flattened_as_for_messages(tmp_path: Path) -> None:
    history = [{"role": "system", "content": "Be brief."}, user("2 + 2?")]
    row = {"chosen": [*history, assistant("4")], "rejected": [*history, assistant("5")]}
    (pair,), _ = load_preferences(str(write(tmp_path / "pairs.jsonl", [row])))
    assert pair.prompt == "System: Be brief.\n\nUser: 2 + 2?"
    (again,), _ = load_preferences(str(write(tmp_path / "again.jsonl", [row])))
    assert pair.id == again.id and len(pair.id) == 16  # no id: a stable hash of the texts


def test_parquet_and_a_dataset_folder_load_through_datasets(tmp_path: Path) -> None:
    rows = [LAYOUTS["conversations"], {**LAYOUTS["conversations"], "prompt_id": "p1"}]
    Dataset.from_list(rows).to_parquet(tmp_path / "pairs.parquet")
    pairs, _ = load_preferences(str(tmp_path / "pairs.parquet"))
    assert [(p.id, p.chosen, p.origin) for p in pairs] == [
        ("p0", "#### 3", f"{tmp_path / 'pairs.parquet'}[row 0]"),
        ("p1", "#### 3", f"{tmp_path / 'pairs.parquet'}[row 1]"),
    ]
    folder = tmp_path / "hub_like"  # what load_dataset(name) reads, a split per file
    folder.mkdir()
    write(folder / "test_prefs.jsonl", rows)
    pairs, _ = load_preferences(str(folder), split="test")
    assert [p.origin for p in pairs] == [f"{folder}[test] row 0", f"{folder}[test] row 1"]


BAD_ROWS = [  # (row, field, problem): row 2 of a file whose row 1 is good
    ({"prompt": "q", "rejected": "b"}, "chosen", "missing"),
    ({**GOOD, "id": "p1", "chosen": 5}, "chosen", "expected a string, got int"),
    ({**GOOD, "id": "p1", "rejected": "  "}, "rejected", "empty or whitespace only"),
    ({**GOOD, "id": "p1", "prompt": None}, "prompt", "missing"),
    ({**GOOD, "id": "p1", "rejected": "#### 3 "}, "rejected", "the same text as chosen"),
    ({**GOOD, "id": "p0"}, "id", "duplicate id 'p0'"),
    ({**GOOD, "id": True}, "id", "expected a string or integer"),
    ({**GOOD, "id": "p1", "score": float("nan")}, "score", "not a finite number"),
    (
        {"chosen": [user("q"), assistant("a"), user("more?")], "rejected": [user("q")]},
        "chosen",
        "does not end with an assistant turn (its last is 'user')",
    ),
    ({"chosen": [], "rejected": [user("q"), assistant("b")]}, "chosen", "an empty conversation"),
    ({"chosen": "a", "rejected": ["b"], "prompt": "q"}, "rejected[0]", "expected an object"),
    (
        {"chosen": [{"role": "assistant"}], "rejected": "b", "prompt": "q"},
        "chosen[0].content",
        "missing",
    ),
    ({"chosen": [{"content": "a"}], "rejected": "b", "prompt": "q"}, "chosen[0].role", "missing"),
    ({"chosen": "a", "rejected": "b", "prompt": {"q": 1}}, "prompt", "expected a string, got dict"),
    (
        {"chosen": [user("q"), assistant("a")], "rejected": [user("other q"), assistant("b")]},
        "rejected",
        "its prompt turns differ from chosen's",
    ),
    (
        {"prompt": [user("q"), 3], "chosen": [assistant("a")], "rejected": [assistant("b")]},
        "prompt[1]",
        "expected an object, got int",
    ),
]


@pytest.mark.parametrize(("row", "field", "problem"), BAD_ROWS)
def test_a_bad_row_is_refused_naming_file_line_and_field(
    tmp_path: Path, row: dict, field: str, problem: str
) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(row, allow_nan=True) + "\n")
    with pytest.raises(DataError) as raised:
        load_preferences(str(path))
    assert str(raised.value).startswith(f"{path}:2: field '{field}': {problem}")
    # skip_invalid skips it, and says so
    pairs, skipped = load_preferences(str(path), skip_invalid=True)
    assert [p.id for p in pairs] == ["p0"] and skipped == 1


def test_rows_of_another_layout_or_none_are_no_pairs(tmp_path: Path) -> None:
    path = write(tmp_path / "sft.jsonl", [{"prompt": "q", "response": "a"}])
    with pytest.raises(DataError, match=f"{path}:1: field 'chosen': missing"):
        load_preferences(str(path))
    with pytest.raises(DataError, match="no preference pairs: all 1 rows are invalid"):
        load_preferences(str(path), skip_invalid=True)
    with pytest.raises(DataError, match="no preference pairs"):
        load_preferences(str(write(tmp_path / "empty.jsonl", [])))


def test_a_pair_shares_its_prompt_tokens_and_trains_on_its_responses(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    pair = Preference("p", "Tom has 12 apples and buys 4 more. How many?", "#### 16", "It is 15.")
    prompt = prompt_ids(tokenizer, [pair.prompt])[0]
    chosen, rejected = response_ids(tokenizer, [pair.chosen, pair.rejected])
    eos = tokenizer.eos_token_id
    ((encoded,), report) = encode_pairs(tokenizer, [pair], 512)
    assert report.prompts_cut == 0
    for side, response in ((encoded.chosen, chosen), (encoded.rejected, rejected)):
        assert side.input_ids == prompt + response + [eos]
        assert side.labels == [IGNORE_INDEX] * len(prompt) + response + [eos]
    # Cut to fit the longer response: both sides keep the same prompt tokens, template whole.
    longer = max(len(chosen), len(rejected)) + 1
    ((cut,), report) = encode_pairs(tokenizer, [pair], len(prompt) - 3 + longer)
    assert (report.prompts_cut, report.prompt_tokens_cut) == (1, 3)
    kept = len(prompt) - 3
    assert cut.chosen.input_ids[:kept] == cut.rejected.input_ids[:kept]
    assert cut.chosen.input_ids[:kept] == prompt[:1] + prompt[4:]  # BOS, then the text's end
    assert cut.chosen.labels[kept:] == chosen + [eos] and cut.rejected.labels[kept:] == rejected + [
        eos
    ]


def test_overlong_pairs_are_refused_or_skipped_and_counted(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    short = Preference("short", "1 + 1?", "#### 2", "#### 3", "pairs.jsonl:1")
    long = Preference("long", "1 + 1?", "#### 2", "The answer is " + "2 " * 40, "pairs.jsonl:2")
    with pytest.raises(DataError, match="pairs.jsonl:2: field 'rejected': .* leave no room"):
        encode_pairs(tokenizer, [short, long], 40)
    with pytest.raises(DataError, match="pairs.jsonl:1: field 'prompt': .* exceed max_length=12"):
        encode_pairs(tokenizer, [short], 12, "error")
    encoded, report = encode_pairs(tokenizer, [short, long], 40, "skip")
    assert [e.id for e in encoded] == ["short"] and report.skipped_ids == ["long"]
    assert "2 preference pairs: 0 prompts cut" in report.summary()
    assert "1 skipped as too long (first: ['long'])" in report.summary()


def test_pairs_from_samples_prefer_a_right_one_and_skip_prompts_without_a_wrong_one(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    examples = [
        Example(f"e{i}", f"What is {i} + 1?", f"{i} + 1 = {i + 1}\n#### {i + 1}", "math")
        for i in range(4)
    ]

    def ids(*texts: str) -> list[list[int]]:
        return response_ids(tokenizer, texts)

    samples = {
        "e0": ids("#### 5", "#### 1", "#### 7"),  # wrong, right, wrong
        "e1": ids("#### 9", "#### 8"),  # all wrong: the reference is chosen
        "e2": ids("#### 3", "#### 3"),  # all right: skipped
        # e3: no samples, skipped
    }
    rows, report = build_pairs(tokenizer, examples, samples)
    assert [(r["id"], r["chosen"], r["rejected"]) for r in rows] == [
        ("e0", "#### 1", "#### 5"),
        ("e1", examples[1].response, "#### 9"),
    ]
    assert rows[1]["meta"] == {"chosen": "reference", "rejected": "sample 0"}
    assert report == {
        "prompts": 4,
        "samples": 7,
        "empty": 0,
        "right": 3,
        "wrong": 4,
        "pairs": 2,
        "chosen_reference": 1,
        "skipped_no_wrong": 1,
        "skipped_no_samples": 1,
    }


def test_pairs_from_postfix_samples_follow_its_scorer(tokenizer: PreTrainedTokenizerBase) -> None:
    e = Example("p0", "Write in postfix notation: a + b", "a b +", "postfix")
    samples = {"p0": response_ids(tokenizer, ["a + b", "a  b +"])}  # wrong; right, spaced otherwise
    rows, report = build_pairs(tokenizer, [e], samples)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("a  b +", "a + b")]
    assert (report["right"], report["wrong"]) == (1, 1)
    with pytest.raises(ValueError, match=r"only tasks math, postfix have; .* \['qa'\]"):
        build_pairs(tokenizer, [Example("q0", "Why?", "Because.", "qa")], {})


# --- the tools, as processes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad_pairs") / "pairs.jsonl"
    return write(path, [GOOD, {**GOOD, "id": "p1", "rejected": GOOD["chosen"]}])


def test_generate_refuses_a_bad_pair_in_one_line(bad_pairs: Path, tmp_path: Path) -> None:
    out = tmp_path / "ref.jsonl"
    args = ["--model_name_or_path", str(tmp_path / "never_loaded"), "--data", str(bad_pairs)]
    result = run("generate", [*args, "--pair_logps", "true", "--output", str(out)], check=False)
    assert_one_error_line(result, f"error: {bad_pairs}:2: field 'rejected': the same text")
    assert not out.exists()


def test_train_refuses_a_bad_pair_in_one_line(
    bad_pairs: Path, tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "model.json").write_text(json.dumps(MODELS["llama-32"]))
    args = ["--model_config", str(tmp_path / "model.json"), "--tokenizer", str(tmp_path / "tok")]
    args += ["--data", str(bad_pairs), "--output_dir", str(tmp_path / "out"), "--mode", "dpo"]
    args += ["--reference_logps", str(tmp_path / "never_read.jsonl"), "--precision", "fp32"]
    result = run("train", args, check=False)
    assert_one_error_line(result, f"error: {bad_pairs}:2: field 'rejected': the same text")
    assert not (tmp_path / "out" / "checkpoints").exists()
