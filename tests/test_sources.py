"""Loading: every adapter, stable ids, and bad input reported with its file, line and field."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from datasets import Dataset

from data_tools.schema import DataError
from data_tools.sources import content_id, load_examples

GSM8K = Path(__file__).resolve().parents[2] / "shared/data/gsm8k"


def write_jsonl(path: Path, rows: list[dict | str | bytes]) -> Path:
    """Rows as JSON objects, or raw lines (str/bytes) for deliberately broken input."""
    lines = [
        r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()
        for r in rows
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def gsm8k_row(i: int, **extra) -> dict:
    return {
        "question": f"How many apples, case {i}?",
        "answer": f"3+{i}=<<3+{i}={3 + i}>>{3 + i}\n#### {3 + i}",
        **extra,
    }


# --- adapters -------------------------------------------------------------------------------


def test_gsm8k_jsonl(tmp_path: Path) -> None:
    two_steps = {"answer": "3+1=<<3+1=4>>4\n4*2=<<4*2=8>>8\n\n#### 8"}
    rows = [gsm8k_row(0, num_steps=5), "", gsm8k_row(1), gsm8k_row(2, **two_steps)]
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    examples, skipped = load_examples(str(path), task="math")
    assert skipped == 0
    first, second, third = examples
    assert first.prompt == "How many apples, case 0?" and first.response.endswith("#### 3")
    # num_steps: the row's own, else the answer's reasoning lines (blank lines not counted)
    assert first.task == "math" and first.meta == {"num_steps": 5}
    assert second.meta == {"num_steps": 1} and third.meta == {"num_steps": 2}
    assert first.origin == f"{path}:1" and second.origin == f"{path}:3"  # the blank line counts


def test_tldr_json(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    rows = [{"prompt": "SUBREDDIT: r/x POST: long story TL;DR:", "label": " short story"}]
    path.write_text(json.dumps(rows))
    [example], _ = load_examples(str(path), task="summarization")
    assert (example.prompt, example.response) == (rows[0]["prompt"], rows[0]["label"])
    assert example.origin == f"{path}[row 0]"


def test_messages_parquet(tmp_path: Path) -> None:
    rows = [
        {
            "prompt": "Hi?",
            "prompt_id": "abc",
            "messages": [
                {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."},
            ],
        },
        {
            "prompt": "Go on",
            "prompt_id": "def",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Tell me."},
                {"role": "assistant", "content": "A story."},
                {"role": "user", "content": "Go on"},
                {"role": "assistant", "content": "The end."},
                {"role": "user", "content": "Thanks"},
            ],
        },
    ]
    path = tmp_path / "m.parquet"
    Dataset.from_list(rows).to_parquet(path)
    (single, multi), _ = load_examples(str(path), task="qa")
    assert (single.id, single.prompt, single.response) == ("abc", "Hi?", "Hello.")
    assert multi.id == "def" and multi.response == "The end."
    assert (
        multi.prompt == "System: Be brief.\n\nUser: Tell me.\n\nAssistant: A story.\n\nUser: Go on"
    )
    assert multi.origin == f"{path}[row 1]"


USER = {"role": "user", "content": "Hi?"}


@pytest.mark.parametrize(
    ("messages", "field", "problem"),
    [
        ([USER], "messages", "no assistant reply"),
        ([{"role": "assistant", "content": "Hello."}], "messages", "nothing before the assistant"),
        ("Hi?", "messages", "expected a list"),
        ([USER, "Hello."], "messages[1]", "expected an object"),
        ([USER, {"role": "assistant", "content": " "}], "messages[1].content", "empty"),
        ([{"content": "Hi?"}, {"role": "assistant"}], "messages[0].role", "missing"),
    ],
)
def test_messages_rejected(tmp_path: Path, messages, field: str, problem: str) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": messages}])
    with pytest.raises(DataError, match=problem) as e:
        load_examples(str(path), task="qa")
    assert (e.value.where, e.value.field_name) == (f"{path}:1", field)


def test_alpaca(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
        {"instruction": "Say bye.", "output": "bye"},
    ]
    examples, _ = load_examples(str(write_jsonl(tmp_path / "a.jsonl", rows)), task="qa")
    assert [e.prompt for e in examples] == ["Add.\n\n2 and 3", "Say hi.", "Say bye."]
    assert [e.response for e in examples] == ["5", "hi", "bye"]


def test_plain_with_ids_and_explicit_format(tmp_path: Path) -> None:
    rows = [{"id": "x1", "prompt": "p", "response": "r"}, {"id": 7, "prompt": "q", "response": "s"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    examples, _ = load_examples(str(path), task="qa", format="plain")
    assert [e.id for e in examples] == ["x1", "7"]
    with pytest.raises(DataError, match="field 'question'"):
        load_examples(str(path), task="qa", format="gsm8k")


def test_unknown_layout_lists_known_ones(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "u.jsonl", [{"text": "what?"}])
    with pytest.raises(DataError, match=r"no known layout.*\['text'\].*gsm8k: question, answer"):
        load_examples(str(path), task="qa", skip_invalid=True)  # not a row problem: never skipped


def test_hub_style_directory(tmp_path: Path) -> None:
    """A name that is not a file goes to `datasets.load_dataset(source, name, split=split)`,
    which also reads a local folder of split files: the hub path without the network."""
    (tmp_path / "ds").mkdir()
    for split in ("train", "test"):
        Dataset.from_list([{"prompt": f"{split} post", "label": "tl;dr"}]).to_parquet(
            tmp_path / f"ds/{split}.parquet"
        )
    [example], _ = load_examples(str(tmp_path / "ds"), task="summarization", split="test")
    assert example.prompt == "test post" and example.origin == f"{tmp_path / 'ds'}[test] row 0"


def test_limit_and_argument_checks(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "g.jsonl", [gsm8k_row(i) for i in range(5)])
    examples, _ = load_examples(str(path), task="math", limit=2)
    assert [e.prompt for e in examples] == [gsm8k_row(i)["question"] for i in range(2)]
    with pytest.raises(ValueError, match="task must be one of"):
        load_examples(str(path), task="maths")
    with pytest.raises(ValueError, match="format must be one of"):
        load_examples(str(path), task="math", format="csv")
    with pytest.raises(DataError, match="no such file"):
        load_examples(str(tmp_path / "missing.jsonl"), task="math")
    (tmp_path / "g.csv").write_text("question,answer\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_examples(str(tmp_path / "g.csv"), task="math")


# --- ids ------------------------------------------------------------------------------------


def test_ids_hashed_and_stable(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "g.jsonl", [gsm8k_row(i) for i in range(3)])
    first, _ = load_examples(str(path), task="math")
    second, _ = load_examples(str(path), task="math")
    assert [e.id for e in first] == [e.id for e in second]
    for e in first:
        assert e.id == hashlib.sha256(f"{e.prompt}\x00{e.response}".encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    "rows",
    [
        [gsm8k_row(0), gsm8k_row(1), gsm8k_row(0)],  # the same content, the same hash
        [gsm8k_row(0, id="a"), gsm8k_row(1, id="b"), gsm8k_row(2, id="a")],
    ],
)
def test_duplicate_ids(tmp_path: Path, rows: list[dict]) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    at = re.escape(str(path))
    with pytest.raises(DataError, match=rf"^{at}:3: field 'id': duplicate id .*, first at {at}:1$"):
        load_examples(str(path), task="math")
    examples, skipped = load_examples(str(path), task="math", skip_invalid=True)
    assert (len(examples), skipped) == (2, 1)


# --- bad input --------------------------------------------------------------------------------


BAD_LINES = [
    ('{"question": "q", "answer": ', None, "malformed JSON"),
    ({"question": "q"}, "answer", "missing"),
    ({"question": "q", "answer": "  \n"}, "answer", "empty or whitespace only"),
    (b'{"question": "caf\xe9?", "answer": "#### 1"}', None, "invalid UTF-8"),
    ({"question": ["q"], "answer": "#### 1"}, "question", "expected a string, got list"),
    ("[1, 2]", None, "expected a JSON object"),
]


@pytest.mark.parametrize(("line", "field", "problem"), BAD_LINES)
def test_bad_jsonl_line(tmp_path: Path, line, field: str | None, problem: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [gsm8k_row(0), line, gsm8k_row(2)])
    with pytest.raises(DataError) as e:
        load_examples(str(path), task="math")
    assert (e.value.where, e.value.field_name) == (f"{path}:2", field)
    assert problem in str(e.value) and str(e.value).startswith(f"{path}:2")
    examples, skipped = load_examples(str(path), task="math", skip_invalid=True)
    assert [e.origin for e in examples] == [f"{path}:1", f"{path}:3"] and skipped == 1


def test_skip_invalid_counts_every_bad_row(tmp_path: Path) -> None:
    rows = [gsm8k_row(0)] + [line for line, _, _ in BAD_LINES] + [gsm8k_row(1)]
    examples, skipped = load_examples(
        str(write_jsonl(tmp_path / "bad.jsonl", rows)), task="math", skip_invalid=True
    )
    assert (len(examples), skipped) == (2, len(BAD_LINES))


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
@pytest.mark.parametrize(
    ("bad", "field", "problem"),
    [
        ({"question": "q", "answer": None}, "answer", "missing"),
        ({"question": "q", "answer": ""}, "answer", "empty"),
    ],
)
def test_bad_row_in_json_and_parquet(
    tmp_path: Path, suffix: str, bad: dict, field: str, problem: str
) -> None:
    path = tmp_path / f"bad{suffix}"
    rows = [gsm8k_row(0), bad, gsm8k_row(2)]
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        Dataset.from_list(rows).to_parquet(path)
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}\[row 1\]: field '{field}': {problem}"
    ):
        load_examples(str(path), task="math")
    assert load_examples(str(path), task="math", skip_invalid=True)[1] == 1


def test_non_string_in_parquet(tmp_path: Path) -> None:
    path = tmp_path / "n.parquet"
    Dataset.from_list([{"prompt": "p", "response": 42}]).to_parquet(path)
    with pytest.raises(
        DataError,
        match=rf"^{re.escape(str(path))}\[row 0\]: field 'response': expected a string, got int",
    ):
        load_examples(str(path), task="qa")


def test_unreadable_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[{"question": ')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: cannot read as json"):
        load_examples(str(path), task="math")


# --- the real data set ----------------------------------------------------------------------


@pytest.mark.parametrize(("split", "size"), [("train", 7473), ("test", 1319)])
def test_real_gsm8k(split: str, size: int) -> None:
    path = GSM8K / f"{split}.jsonl"
    if not path.is_file():
        pytest.skip(f"GSM8K not found at {path} (it lives in ../shared beside the repository)")
    examples, skipped = load_examples(str(path), task="math")
    assert (len(examples), skipped) == (size, 0)
    assert all(e.id == content_id(e.prompt, e.response) for e in examples)
    assert [e.id for e in load_examples(str(path), task="math", limit=50)[0]] == [
        e.id for e in examples[:50]
    ]
    assert all("####" in e.response for e in examples)
