"""Load a dataset (a local file or a Hugging Face hub name) into `Example`s, checking every row.

Each known layout has an adapter that maps a row to a prompt and a response; "auto" picks the
adapter from the first row's columns. Bad rows stop the load with a `DataError` that names the
file, line (or row) and field, or, with `skip_invalid`, are skipped and counted: never dropped
silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import datasets
from datasets.exceptions import DatasetsError

from data_tools.errors import non_finite, open_input
from data_tools.schema import TASKS, DataError, Example

log = logging.getLogger(__name__)

Row = dict[str, Any]
Adapted = tuple[str, str, dict[str, Any]]  # prompt, response, meta
ID_FIELDS = ("id", "prompt_id")
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
T = TypeVar("T")


def text_field(row: Row, key: str, where: str, *, optional: bool = False, field: str = "") -> str:
    """A string field that must be present and not blank (or, if optional, may be absent).
    `field` names it in errors when it is nested (e.g. "messages[2].content")."""
    field = field or key
    value = row.get(key)
    if value is None:
        if optional:
            return ""
        raise DataError(where, field, "missing (or null)")
    if not isinstance(value, str):
        raise DataError(where, field, f"expected a string, got {type(value).__name__}")
    if not optional and not value.strip():
        raise DataError(where, field, "empty or whitespace only")
    return value


def _count(row: Row, key: str, where: str) -> int | None:
    """A non-negative integer field, or None when absent. A float column of a .json or .parquet
    file holds whole numbers as 3.0 (taken as 3); NaN, infinities, fractions, booleans and
    negatives are refused: written on to a jsonl file, NaN would not even be JSON."""
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(where, key, f"expected a non-negative integer, got {value!r}")
    return value


def _gsm8k(row: Row, where: str) -> Adapted:
    """A question and its worked answer. The number of reasoning steps (for accuracy by problem
    length) is the row's `num_steps`, or else the answer's lines before GSM8K's "####" line."""
    question, answer = text_field(row, "question", where), text_field(row, "answer", where)
    steps = _count(row, "num_steps", where)
    if steps is None:
        steps = sum(1 for line in answer.split("####")[0].splitlines() if line.strip())
    return question, answer, {"num_steps": steps}


def _tldr(row: Row, where: str) -> Adapted:
    return text_field(row, "prompt", where), text_field(row, "label", where), {}


def _plain(row: Row, where: str) -> Adapted:
    return text_field(row, "prompt", where), text_field(row, "response", where), {}


def _alpaca(row: Row, where: str) -> Adapted:
    instruction, extra = (
        text_field(row, "instruction", where),
        text_field(row, "input", where, optional=True),
    )
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return prompt, text_field(row, "output", where), {}


def message_turns(messages: object, where: str, field: str) -> list[tuple[str, Row]]:
    """(role, message) for each message of a chat list ([{"role", "content"}, ...]), its role
    checked; `field` names the list in errors. The contents are checked by the caller, which
    knows which turns it reads."""
    if messages is None:
        raise DataError(where, field, "missing (or null)")
    if not isinstance(messages, list):
        raise DataError(where, field, f"expected a list, got {type(messages).__name__}")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataError(where, f"{field}[{i}]", f"expected an object, got {type(m).__name__}")
        turns.append((text_field(m, "role", where, field=f"{field}[{i}].role"), m))
    return turns


def history_prompt(history: list[tuple[str, str]]) -> str:
    """The prompt of the (role, content) turns before a response. A single user turn is the
    prompt verbatim; a longer history (system prompt, earlier turns) is flattened into one text,
    "Role: content" per turn separated by blank lines, because the prompt is later wrapped as
    one user message."""
    if len(history) == 1 and history[0][0] == "user":
        return history[0][1]
    return "\n\n".join(f"{role.capitalize()}: {content}" for role, content in history)


def _messages(row: Row, where: str) -> Adapted:
    """The last assistant message is the response; the turns before it are the prompt
    (`history_prompt`). Turns after the last assistant reply are ignored."""
    turns = message_turns(row.get("messages"), where, "messages")
    last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=None)
    if last is None:
        raise DataError(where, "messages", "no assistant reply to use as the response")
    if last == 0:
        raise DataError(where, "messages", "nothing before the assistant reply to use as prompt")
    response = text_field(turns[last][1], "content", where, field=f"messages[{last}].content")
    history = [
        (role, text_field(m, "content", where, field=f"messages[{i}].content"))
        for i, (role, m) in enumerate(turns[:last])
    ]
    return history_prompt(history), response, {}


# Checked in this order by "auto": the first layout whose columns the row has wins.
ADAPTERS: dict[str, tuple[tuple[str, ...], Callable[[Row, str], Adapted]]] = {
    "gsm8k": (("question", "answer"), _gsm8k),
    "messages": (("messages",), _messages),
    "alpaca": (("instruction", "output"), _alpaca),
    "tldr": (("prompt", "label"), _tldr),
    "plain": (("prompt", "response"), _plain),
}
FORMATS = ("auto", *ADAPTERS)


def detect_format(row: Row, where: str) -> str:
    for fmt, (columns, _) in ADAPTERS.items():
        if all(c in row for c in columns):
            return fmt
    known = "; ".join(f"{fmt}: {', '.join(cols)}" for fmt, (cols, _) in ADAPTERS.items())
    raise DataError(
        where,
        None,
        f"no known layout fits the columns {sorted(row)}; known layouts (format: columns) are "
        f"{known}. Pass format= explicitly or convert the data.",
    )


def content_id(*texts: str) -> str:
    """A stable id for rows without one: the same texts always get the same id."""
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]


def row_id(row: Row, where: str) -> str | None:
    for key in ID_FIELDS:
        value = row.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise DataError(where, key, f"expected a string or integer, got {type(value).__name__}")
        if not str(value).strip():
            raise DataError(where, key, "empty or whitespace only")
        return str(value)
    return None


def jsonl_rows(path: Path) -> Iterator[tuple[str, Row | DataError]]:
    """Our own reader, so that every error names its line. Bad lines are yielded as errors so
    that the caller can skip them and go on."""
    with open_input(path) as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield where, DataError(where, None, f"invalid UTF-8 at byte {e.start}: {e.reason}")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield where, DataError(where, None, f"malformed JSON: {e}")
                continue
            if not isinstance(row, dict):
                yield (
                    where,
                    DataError(where, None, f"expected a JSON object, got {type(row).__name__}"),
                )
                continue
            if (field := non_finite(row)) is not None:
                yield (
                    where,
                    DataError(where, field, "not a finite number (NaN and Infinity are not JSON)"),
                )
                continue
            yield where, row


def jsonl_objects(path: str | Path) -> Iterator[tuple[str, Row]]:
    """("path:LINE", row) for every non-blank line of a jsonl file; the first bad line raises."""
    for where, row in jsonl_rows(Path(path)):
        if isinstance(row, DataError):
            raise row
        yield where, row


def unique_id(row: Row, where: str, seen: dict[str, str]) -> str:
    """The "id" of a row of our own files (drafts, predictions): a non-blank string, not in
    `seen` (id -> where, which this fills): a second row for an id would replace the first."""
    row_id = row.get("id")
    if not isinstance(row_id, str) or not row_id.strip():
        raise DataError(where, "id", f"expected a non-blank string, got {row_id!r}")
    if row_id in seen:
        raise DataError(where, "id", f"duplicate id {row_id!r}, first at {seen[row_id]}")
    seen[row_id] = where
    return row_id


def check_covered(
    path: str, seen: Mapping[str, str], found: Mapping[str, object], ids: Sequence[str], what: str
) -> None:
    """Refuse a file of self-generated data (BASH's predictions, DPO's reference
    log-probabilities) that has no rows (`seen`: every row's id), or no row `found` for some of
    the `ids` a run needs."""
    if not seen:
        raise DataError(path, None, f"no {what}")
    missing = [i for i in ids if i not in found]
    if missing:
        raise DataError(
            path, "id", f"no {what} for {len(missing)} of the run's items (first: {missing[:3]})"
        )


def token_ids(value: object, where: str, field: str, vocab_size: int) -> list[int]:
    """`value` checked as the token ids of a vocabulary of `vocab_size`: a list of integers in
    [0, vocab_size). A float (even 3.0), a boolean or an id outside the vocabulary is refused,
    never rounded, kept or clipped: it would put another token, or none, into a training context."""
    if not isinstance(value, list):
        raise DataError(where, field, f"expected a list of token ids, got {type(value).__name__}")
    for i, token in enumerate(value):
        if isinstance(token, bool) or not isinstance(token, int):
            raise DataError(where, f"{field}[{i}]", f"expected an integer token id, got {token!r}")
        if not 0 <= token < vocab_size:
            raise DataError(
                where,
                f"{field}[{i}]",
                f"token id {token} is outside the vocabulary (0 to {vocab_size - 1})",
            )
    return value


def source_rows(source: str, name: str | None, split: str) -> Iterator[tuple[str, Row | DataError]]:
    """(where, row) pairs; `where` is "path:LINE" (1-based), "path[row N]" or "dataset[split] row N"
    (N 0-based, as in `ds[N]`)."""
    path = Path(source)
    if path.is_file() and path.suffix not in LOCAL_SUFFIXES:
        raise DataError(source, None, f"unsupported file type; expected one of {LOCAL_SUFFIXES}")
    if path.suffix in LOCAL_SUFFIXES:
        if not path.is_file():
            raise DataError(source, None, "no such file")
        if path.suffix == ".jsonl":
            yield from jsonl_rows(path)
            return
        builder = path.suffix.removeprefix(".")
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        except (DatasetsError, ValueError) as e:
            raise DataError(source, None, f"cannot read as {builder}: {e.__cause__ or e}") from e
        for i, row in enumerate(ds):
            yield f"{source}[row {i}]", row
        return
    try:
        ds = datasets.load_dataset(source, name, split=split)
    except (DatasetsError, OSError, ValueError) as e:
        raise DataError(source, None, f"no such file, nor a dataset that loads: {e}") from e
    for i, row in enumerate(ds):
        yield f"{source}[{split}] row {i}", row


def load_records(
    source: str,
    reader: Callable[[Row, str], Callable[[Row, str], tuple[str, T]]],
    *,
    what: str,
    name: str | None = None,
    split: str = "train",
    limit: int | None = None,
    skip_invalid: bool = False,
) -> tuple[list[T], int]:
    """The first `limit` valid records of `source` and how many invalid rows were skipped.

    `source` is a .jsonl/.json/.parquet file or a hub dataset (`name` is its config). `reader`
    sees the first readable row and returns the function that makes a row's (id, record): data
    in no layout it knows is not a bad row, and fails even with `skip_invalid`. Ids must be
    unique. No record at all is an error ("no `what`").
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    records: list[T] = []
    seen: dict[str, str] = {}
    skipped = 0
    read = None
    for where, row in source_rows(source, name, split):
        if limit is not None and len(records) >= limit:
            break
        if read is None and not isinstance(row, DataError):
            read = reader(row, where)
        try:
            if isinstance(row, DataError):
                raise row
            id_, record = read(row, where)
            if id_ in seen:
                raise DataError(where, "id", f"duplicate id {id_!r}, first at {seen[id_]}")
        except DataError as e:
            if not skip_invalid:
                raise
            skipped += 1
            log.warning("skipped: %s", e)
            continue
        seen[id_] = where
        records.append(record)
    if not records:  # an empty file would make an empty output, and a run of nothing
        why = f": all {skipped} rows are invalid (skip_invalid)" if skipped else ""
        raise DataError(source, None, f"no {what}{why}")
    return records, skipped


def load_examples(
    source: str,
    *,
    task: str,
    format: str = "auto",
    name: str | None = None,
    split: str = "train",
    limit: int | None = None,
    skip_invalid: bool = False,
) -> tuple[list[Example], int]:
    """The first `limit` valid examples of `source` and how many invalid rows were skipped
    (`load_records`). `format` "auto" takes the layout of the first row's columns. Ids are the
    row's `id` (or `prompt_id`) when it has one, else a hash of the text.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")

    def reader(first: Row, where: str) -> Callable[[Row, str], tuple[str, Example]]:
        adapter = ADAPTERS[detect_format(first, where) if format == "auto" else format][1]

        def example(row: Row, where: str) -> tuple[str, Example]:
            prompt, response, meta = adapter(row, where)
            id_ = row_id(row, where) or content_id(prompt, response)
            return id_, Example(id_, prompt, response, task, where, meta)

        return example

    return load_records(
        source,
        reader,
        what="examples",
        name=name,
        split=split,
        limit=limit,
        skip_invalid=skip_invalid,
    )
