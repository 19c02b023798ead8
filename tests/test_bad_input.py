"""Bad input into every reader of a file ends in a `DataError` that names the file, the line and
the field: never another exception, never a silent accept (issue 18).

The readers run in-process under hypothesis, each over one kind of malformed row at a time:
invalid JSON, a non-object, invalid UTF-8, a missing field, a wrong type, a blank string, NaN or
an infinity anywhere in the row, bad token ids (floats, booleans, negative, out of the
vocabulary), a duplicate id. A few real processes check the tools' one error path: exit status
2, one `error:` line on stderr, no traceback, nothing written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerBase

from data_tools.config import read_config
from data_tools.preferences import load_preferences
from data_tools.schema import DataError
from data_tools.scoring import score_file
from data_tools.sources import load_examples
from data_tools.tokenization import IGNORE_INDEX, Encoded, encode_examples, encode_prompts
from methods.correction import read_draft_ids, read_drafts
from methods.scheduled_sampling import load_predictions
from runtime.args import ModelArgs
from runtime.fingerprint import tokenizer_fingerprint
from tests.launch import run
from tests.models import MODELS

VOCAB = 50
ROWS = 4  # good rows per file; one of them is replaced by a bad one
FINGERPRINTS = {"tokenizer_fingerprint": "tok", "model_fingerprint": "new"}
# Two response positions per example, as the predictions' good rows have.
TRAIN_SET = [
    Encoded(f"ex{i}", [7, 8, 1, 2], [IGNORE_INDEX, IGNORE_INDEX, 1, 2]) for i in range(ROWS)
]
KNOWN_IDS = {f"ex{i}" for i in range(ROWS)}


@dataclass(frozen=True)
class Reader:
    """A reader of a file and what its rows must hold."""

    name: str
    good: Callable[[int], dict[str, Any]]  # the i-th valid row
    read: Callable[[Path], int]  # how many rows (examples, drafts...) it read
    required: tuple[str, ...]  # absent: an error
    texts: tuple[str, ...]  # non-blank strings
    strings: tuple[str, ...] = ()  # strings that may be blank (a generation may be empty)
    tokens: tuple[str, ...] = ()  # lists of token ids
    counts: tuple[str, ...] = ()  # non-negative integers
    objects: tuple[str, ...] = ()  # JSON objects when present
    lengths: tuple[str, ...] = ()  # one token per response position
    integer_id: bool = False  # an integer id is valid (data examples)


READERS = [
    Reader(
        "examples",
        lambda i: {
            "id": f"ex{i}",
            "question": f"{i} + 1?",
            "answer": f"#### {i + 1}",
            "num_steps": 1,
        },
        lambda p: len(load_examples(str(p), task="math", format="gsm8k")[0]),
        required=("question", "answer"),
        texts=("id", "question", "answer"),
        counts=("num_steps",),
        integer_id=True,
    ),
    Reader(
        "predictions",
        lambda i: {"id": f"ex{i}", "predictions": [i, 1], **FINGERPRINTS},
        lambda p: len(load_predictions(str(p), TRAIN_SET, "tok", "new", VOCAB)),
        required=("id", "predictions", *FINGERPRINTS),
        texts=("id", *FINGERPRINTS),
        tokens=("predictions",),
        lengths=("predictions",),
    ),
    Reader(
        "drafts",
        lambda i: {"id": f"ex{i}", "generation_ids": [3, i, 2], "meta": {}},
        lambda p: len(read_drafts(p, KNOWN_IDS, VOCAB)),
        required=("id", "generation_ids"),
        texts=("id",),
        tokens=("generation_ids",),
        objects=("meta",),
    ),
    Reader(
        "rac_rows",
        lambda i: {"id": f"ex{i}#rac0", "prompt": "q", "response": "r", "draft_ids": [i, 4]},
        lambda p: len(read_draft_ids(p, VOCAB)),
        required=("id", "draft_ids"),
        texts=("id",),
        tokens=("draft_ids",),
    ),
    Reader(
        "preferences",
        lambda i: {
            "id": f"ex{i}",
            "prompt": f"{i} + 1?",
            "chosen": f"#### {i + 1}",
            "rejected": "#### 0",
        },
        lambda p: len(load_preferences(str(p))[0]),
        required=("prompt", "chosen", "rejected"),
        texts=("id",),  # a list where a text goes is read as messages: tests/test_preferences.py
        integer_id=True,
    ),
    Reader(
        "generations",
        lambda i: {"id": f"ex{i}", "generation": f"#### {i}", "reference": f"#### {i}"},
        lambda p: score_file(p, "math")["summary"]["n"],
        required=("id", "generation", "reference"),
        texts=("id", "reference"),
        strings=("generation",),
    ),
]

NON_STRINGS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
BAD_TOKENS = st.one_of(
    st.floats(),  # 3.0 as much as 3.7, NaN and infinities
    st.booleans(),
    st.integers(max_value=-1),
    st.integers(min_value=VOCAB),
    st.text(max_size=3),
    st.none(),
    st.lists(st.integers(0, VOCAB - 1), max_size=2),
)
NOT_LISTS = st.one_of(
    st.booleans(),
    st.integers(),
    st.text(max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
BAD_COUNTS = st.one_of(
    st.integers(max_value=-1),
    st.booleans(),
    st.text(max_size=2),
    st.floats(2.1, 2.9),  # a fraction; a whole float (3.0) is taken as 3
)
INVALID_UTF8 = [b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf"]


def dumps(row: object) -> bytes:
    return json.dumps(row).encode()


def bad_row(data: st.DataObject, reader: Reader, k: int) -> tuple[bytes, str | None]:
    """Row `k` made bad in one way, and the field its error must name (None: the whole line)."""
    row = reader.good(k)
    kinds = ["json", "not_object", "utf8", "missing", "wrong_type", "non_finite"]
    kinds += ["blank"] * bool(set(reader.texts) & set(row))
    kinds += ["duplicate"] * (k > 0)
    for kind in ("tokens", "counts", "objects", "lengths"):
        kinds += [kind] * bool(getattr(reader, kind))
    kind = data.draw(st.sampled_from(kinds), label="kind")
    if kind == "json":  # a proper prefix of an object is never JSON
        text = dumps(row)
        return text[: data.draw(st.integers(1, len(text) - 1), label="cut")], None
    if kind == "not_object":
        not_object = st.one_of(NON_STRINGS, st.text(max_size=5)).filter(
            lambda v: not isinstance(v, dict)
        )
        value = data.draw(not_object, label="value")
        return dumps(value), None
    if kind == "utf8":
        text = dumps(row)
        at = data.draw(st.integers(0, len(text)), label="at")
        return text[:at] + data.draw(st.sampled_from(INVALID_UTF8)) + text[at:], None
    if kind == "missing":
        field = data.draw(st.sampled_from(reader.required), label="field")
        return dumps({key: value for key, value in row.items() if key != field}), field
    if kind == "wrong_type":
        field = data.draw(st.sampled_from(reader.texts + reader.strings), label="field")
        wrong = NON_STRINGS
        if field not in reader.required:  # absent (null) is valid for it
            wrong = wrong.filter(lambda v: v is not None)
        if field == "id" and reader.integer_id:
            wrong = wrong.filter(lambda v: isinstance(v, bool) or not isinstance(v, int))
        return dumps({**row, field: data.draw(wrong, label="value")}), field
    if kind == "blank":
        field = data.draw(st.sampled_from([f for f in reader.texts if f in row]), label="field")
        blank = data.draw(st.text(alphabet=" \t\n\r", max_size=4), label="blank")
        return dumps({**row, field: blank}), field
    if kind == "non_finite":
        return _non_finite(data, row)
    if kind == "duplicate":
        j = data.draw(st.integers(0, k - 1), label="j")
        return dumps({**row, "id": reader.good(j)["id"]}), "id"
    if kind == "tokens":
        field = data.draw(st.sampled_from(reader.tokens), label="field")
        ids = list(row[field])
        if data.draw(st.booleans(), label="whole list"):
            return dumps({**row, field: data.draw(NOT_LISTS, label="value")}), field
        i = data.draw(st.integers(0, len(ids) - 1), label="index")
        ids[i] = data.draw(BAD_TOKENS, label="token")
        return dumps({**row, field: ids}), f"{field}[{i}]"
    if kind == "counts":
        field = data.draw(st.sampled_from(reader.counts), label="field")
        return dumps({**row, field: data.draw(BAD_COUNTS, label="value")}), field
    if kind == "objects":
        field = data.draw(st.sampled_from(reader.objects), label="field")
        not_object = NON_STRINGS.filter(lambda v: v is not None and not isinstance(v, dict))
        return dumps({**row, field: data.draw(not_object, label="value")}), field
    field = data.draw(st.sampled_from(reader.lengths), label="field")  # lengths
    n = data.draw(st.integers(0, 5).filter(lambda n: n != len(row[field])), label="length")
    return dumps({**row, field: [1] * n}), field


def _non_finite(data: st.DataObject, row: dict[str, Any]) -> tuple[bytes, str]:
    """NaN, Infinity or -Infinity (or 1e999, which Python reads as infinity) in any field of the
    row, or in a new one, as the value, in a list or in an object."""
    key = data.draw(st.sampled_from([*row, "extra"]), label="key")
    value = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]), label="value")
    shape = data.draw(st.sampled_from(["value", "list", "object"]), label="shape")
    if shape == "value":
        placed, field = value, key
    elif shape == "list":
        i = data.draw(st.integers(0, 3), label="index")
        placed, field = [0] * i + [value], f"{key}[{i}]"
    else:
        placed, field = {"x": value}, f"{key}.x"
    text = json.dumps({**row, key: placed})  # NaN, Infinity, -Infinity: Python's, not JSON
    if data.draw(st.booleans(), label="as 1e999"):
        text = text.replace("Infinity", "1e999")
    return text.encode(), field


def write_rows(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.name)
def test_the_good_rows_are_read(tmp_path: Path, reader: Reader) -> None:
    """The baseline of the property below: without the bad row, the file is read whole."""
    path = write_rows(tmp_path / "rows.jsonl", [dumps(reader.good(i)) for i in range(ROWS)])
    assert reader.read(path) == ROWS


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.name)
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_bad_row_is_a_data_error_naming_file_line_and_field(
    tmp_path: Path, reader: Reader, data: st.DataObject
) -> None:
    k = data.draw(st.integers(0, ROWS - 1), label="bad row")
    line, field = bad_row(data, reader, k)
    lines = [dumps(reader.good(i)) for i in range(ROWS)]
    lines[k] = line
    path = write_rows(tmp_path / "rows.jsonl", lines)
    with pytest.raises(DataError) as raised:
        reader.read(path)
    e, where = raised.value, f"{path}:{k + 1}"
    assert (e.where, e.field_name) == (where, field), str(e)
    assert str(e).startswith(f"{where}: " + (f"field '{field}': " if field else ""))


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.name)
@pytest.mark.parametrize("content", [b"", b"\n", b" \n\n\t\n"])
def test_an_empty_file_is_an_error_naming_it(
    tmp_path: Path, reader: Reader, content: bytes
) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r": no \w+") as raised:
        reader.read(path)
    assert (raised.value.where, raised.value.field_name) == (str(path), None)


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.name)
@pytest.mark.parametrize("make", ["missing", "folder"])
def test_a_missing_path_is_an_error_naming_it(tmp_path: Path, reader: Reader, make: str) -> None:
    path = tmp_path / "rows.jsonl"
    if make == "folder":
        path.mkdir()
    with pytest.raises(DataError, match="no such file|a folder, not a file") as raised:
        reader.read(path)
    assert raised.value.where == str(path)


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.name)
@pytest.mark.parametrize("layout", ["parquet", "csv"])
def test_parquet_or_csv_where_jsonl_is_read(tmp_path: Path, reader: Reader, layout: str) -> None:
    # Parquet has no struct without fields: an empty object is left out.
    rows = [{k: v for k, v in reader.good(i).items() if v != {}} for i in range(ROWS)]
    path = tmp_path / "rows.jsonl"
    if layout == "parquet":
        Dataset.from_list(rows).to_parquet(path)
    else:
        path.write_text(
            ",".join(rows[0]) + "\n" + "".join(",".join(map(str, r.values())) + "\n" for r in rows)
        )
    with pytest.raises(DataError) as raised:
        reader.read(path)
    assert raised.value.where.startswith(f"{path}:")  # the line that is not a JSON object


def test_a_csv_or_an_unknown_suffix_is_refused_as_data(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("question,answer\nq,#### 1\n")
    with pytest.raises(DataError, match="unsupported file type") as raised:
        load_examples(str(path), task="math")
    assert raised.value.where == str(path)


def test_skip_invalid_that_skips_every_row_is_no_examples(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "bad.jsonl", [b"[1]", b'{"question": "q", "answer": " "}', b"{"])
    with pytest.raises(DataError, match=r": no examples: all 3 rows are invalid \(skip_invalid\)"):
        load_examples(str(path), task="math", skip_invalid=True)


@pytest.mark.parametrize(
    ("value", "expected"), [(3.0, 3), (math.nan, None), (2.5, None), (-1.0, None)]
)
def test_num_steps_of_a_parquet_column(tmp_path: Path, value: float, expected: int | None) -> None:
    """Parquet stores the column as floats; a whole number is taken, anything else refused."""
    path = tmp_path / "g.parquet"
    rows = [{"question": "q1", "answer": "#### 1", "num_steps": 1.0}]
    Dataset.from_list(
        [*rows, {"question": "q2", "answer": "#### 2", "num_steps": value}]
    ).to_parquet(path)
    if expected is not None:
        assert load_examples(str(path), task="math")[0][1].meta["num_steps"] == expected
        return
    with pytest.raises(DataError, match=r"\[row 1\]: field 'num_steps': expected a non-negative"):
        load_examples(str(path), task="math")


def test_a_draft_source_id_must_be_a_known_non_blank_string(tmp_path: Path) -> None:
    row = {"id": "ex0-s1", "generation_ids": [1], "meta": {"source_id": " "}}
    path = write_rows(tmp_path / "d.jsonl", [dumps(row)])
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'meta.source_id': expected a non-blank"):
        read_drafts(path, KNOWN_IDS, VOCAB)
    assert read_drafts(
        write_rows(path, [dumps({**row, "meta": {"source_id": "ex0"}})]), KNOWN_IDS, VOCAB
    ) == {"ex0": [[1]]}


def test_empty_inputs_tokenize_to_nothing(tokenizer: PreTrainedTokenizerBase) -> None:
    """The tokenizer refuses an empty batch (IndexError); the encoders return nothing instead."""
    encoded, report = encode_examples(tokenizer, [], 64)
    assert encoded == [] and report.examples == 0
    assert encode_prompts(tokenizer, [], 64) == ([], 0)


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        (b"data: [a, b\n", ":2", "not valid YAML"),
        (b"- a\n- b\n", "", "expected a mapping"),
        (b"learning_rate: .nan\n", "", "field 'learning_rate': not a finite number"),
        (b"task: {x: -.inf}\n", "", "field 'task.x': not a finite number"),
        (b"task: caf\xe9\n", "", "invalid UTF-8 at byte 9"),
    ],
)
def test_a_bad_config_file_is_a_data_error(
    tmp_path: Path, text: bytes, where: str, problem: str
) -> None:
    path = tmp_path / "run.yaml"
    path.write_bytes(text)
    with pytest.raises(DataError, match=problem) as raised:
        read_config(path)
    assert raised.value.where == f"{path}{where}"
    with pytest.raises(DataError, match="no such file"):
        read_config(tmp_path / "missing.yaml")


# --- the tools, as processes ------------------------------------------------------------------


def assert_one_error_line(result, *needles: str) -> None:
    """Exit status 2, no traceback, and one `error:` line, the last on stderr, naming `needles`.
    (Above it, only what libraries log at import, e.g. DeepSpeed's accelerator warning.)"""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], result.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def test_generate_refuses_an_empty_data_file(tmp_path: Path) -> None:
    empty, out = tmp_path / "empty.jsonl", tmp_path / "out.jsonl"
    empty.write_text("")
    args = ["--model_name_or_path", str(tmp_path / "never_loaded"), "--data", str(empty)]
    result = run("generate", [*args, "--output", str(out)], check=False)
    assert_one_error_line(result, f"error: {empty}: no examples")
    assert not out.exists()


def test_score_names_a_missing_generations_file(tmp_path: Path) -> None:
    missing = tmp_path / "gen.jsonl"
    result = run("generate.score", ["--generations", str(missing), "--task", "math"], check=False)
    assert_one_error_line(result, f"error: {missing}: no such file")


def test_correction_refuses_a_draft_out_of_the_vocabulary(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    tokenizer.save_pretrained(tmp_path / "tok")
    data = write_rows(
        tmp_path / "train.jsonl", [dumps({"id": "a", "question": "1 + 1?", "answer": "#### 2"})]
    )
    drafts = write_rows(
        tmp_path / "drafts.jsonl", [dumps({"id": "a", "generation_ids": [5, len(tokenizer)]})]
    )
    out = tmp_path / "rac.jsonl"
    args = ["--data", str(data), "--drafts", str(drafts), "--tokenizer", str(tmp_path / "tok")]
    result = run("methods.correction", [*args, "--output", str(out)], check=False)
    assert_one_error_line(
        result, f"{drafts}:1: field 'generation_ids[1]'", "outside the vocabulary"
    )
    assert not out.exists()


def test_train_refuses_predictions_with_a_float_token(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    """BASH's predictions are read before any step: a float id used to be cut to an int."""
    tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "model.json").write_text(json.dumps(MODELS["llama-32"]))
    data = write_rows(
        tmp_path / "train.jsonl", [dumps({"id": "a", "question": "1 + 1?", "answer": "#### 2"})]
    )
    fingerprints = {
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "model_fingerprint": "new",
    }
    predictions = write_rows(
        tmp_path / "pred.jsonl", [dumps({"id": "a", "predictions": [3.0, 4], **fingerprints})]
    )
    args = ["--model_config", str(tmp_path / "model.json"), "--tokenizer", str(tmp_path / "tok")]
    args += ["--data", str(data), "--output_dir", str(tmp_path / "out"), "--mode", "bash"]
    args += ["--predictions", str(predictions), "--max_steps", "1", "--micro_batch_size", "1"]
    result = run("train", [*args, "--precision", "fp32"], check=False)
    assert_one_error_line(result, f"{predictions}:1: field 'predictions[0]'", "got 3.0")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_an_unknown_or_unavailable_attention_is_refused_before_loading() -> None:
    with pytest.raises(ValueError, match=r"attn_implementation 'flash': choose one of"):
        ModelArgs(model_name_or_path="m", attn_implementation="flash")
    # On this CPU machine flash-attn cannot run: said in a sentence, not an ImportError later.
    with pytest.raises(ValueError, match="needs a CUDA GPU and the flash-attn package"):
        ModelArgs(model_name_or_path="m", attn_implementation="flash_attention_2")
    assert ModelArgs(model_name_or_path="m", attn_implementation="eager").attn_implementation
