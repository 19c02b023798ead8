"""Tokenized examples held as token arrays, written once per node and memory-mapped by its ranks.

As `Encoded` lists (ids and labels), a token takes about 120 bytes (bench/data_memory.py), and
every rank used to tokenize the whole dataset and hold its own copy. A store keeps all the tokens in one array
(uint16 when the vocabulary fits, else int32) and, per example, its length and how many leading
positions are masked: labels are always `[IGNORE_INDEX] * masked + input_ids[masked:]` (the
prompt; its first token only with `loss_on` "all"; RAC's prompt and draft), so they take no
room (an example of another form is refused). Written in a folder named by a hash of all that
decides the tokens (`store_key`), published by one rename, the store is mapped read-only by
every process, which share its pages. An example is rebuilt as an `Encoded` (lists) when it is
read, so the code that trains on it is unchanged.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
from transformers import PreTrainedTokenizerBase

from data_tools.atomic import atomic_dir, write_json
from data_tools.schema import Example
from data_tools.tokenization import IGNORE_INDEX, Encoded, TruncationReport, encode_examples

FORMAT = 1  # of the files; part of the key, so that another layout is another folder
CHUNK = 4096  # examples tokenized (and held as lists) at a time
# One file per column: every example's tokens one after the other, then one value per example,
# the ids' UTF-8 bytes one after the other. The tokens' type depends on the vocabulary.
COLUMNS = {
    "tokens": None,
    "lengths": "int32",
    "masked": "int32",
    "ids": "uint8",
    "id_lengths": "int32",
}
META = "meta.json"  # the dtype, the truncation summary and the key's options; written last


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "int32"


def _starts(lengths: np.ndarray) -> np.ndarray:
    """Each item's offset in its column, and the end: n + 1 values."""
    starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    return starts


class TokenStore(Sequence[Encoded]):
    """Examples as columns of arrays, in memory or mapped from a folder; `store[i]` is the i-th
    example as `encode_examples` made it, `store[a:b]` a list of them. `summary` is what the
    truncation policy did, kept so that a store read again reports it too."""

    def __init__(self, columns: dict[str, np.ndarray], summary: str) -> None:
        self.tokens, self.ids = columns["tokens"], columns["ids"]
        self.lengths, self.masked = columns["lengths"], columns["masked"]
        self._starts, self._id_starts = _starts(self.lengths), _starts(columns["id_lengths"])
        self.summary = summary

    @classmethod
    def open(cls, folder: Path) -> TokenStore:
        """The store written in `folder`, memory-mapped read-only."""
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        columns = {}
        for name, dtype in COLUMNS.items():
            path, dtype = folder / f"{name}.bin", dtype or meta["token_dtype"]
            # An empty file cannot be mapped.
            columns[name] = (
                np.memmap(path, dtype=dtype, mode="r")
                if path.stat().st_size
                else np.empty(0, dtype)
            )
        return cls(columns, meta["summary"])

    def __len__(self) -> int:
        return len(self.lengths)

    @overload
    def __getitem__(self, index: int) -> Encoded: ...

    @overload
    def __getitem__(self, index: slice) -> list[Encoded]: ...

    def __getitem__(self, index: int | slice) -> Encoded | list[Encoded]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = range(len(self))[index]  # IndexError past the end, as a list (iteration stops on it)
        input_ids = self.tokens[self._starts[i] : self._starts[i + 1]].tolist()
        masked = int(self.masked[i])
        id_bytes = self.ids[self._id_starts[i] : self._id_starts[i + 1]].tobytes()
        return Encoded(id_bytes.decode(), input_ids, [IGNORE_INDEX] * masked + input_ids[masked:])

    def counts(self, indices: Sequence[int]) -> tuple[int, int]:
        """The trained tokens and all tokens of the examples at `indices`, from the columns:
        train counts them for every global batch."""
        rows = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[rows].astype(np.int64)
        return int((lengths - self.masked[rows]).sum()), int(lengths.sum())

    @property
    def token_bytes(self) -> int:
        return self.tokens.nbytes


def _masked(e: Encoded) -> int:
    """How many leading labels `e` masks; refuses labels not of the form the store rebuilds."""
    masked = e.labels.count(IGNORE_INDEX)
    if len(e.labels) != len(e.input_ids) or e.labels[masked:] != e.input_ids[masked:]:
        raise ValueError(
            f"example {e.id!r}: its labels are not the masked prefix then its input ids; "
            "a token store cannot hold them"
        )
    return masked


def _columns(encoded: Iterable[Encoded], dtype: str) -> Iterator[dict[str, np.ndarray]]:
    """The columns of `encoded`, CHUNK examples at a time."""
    encoded = iter(encoded)
    while chunk := list(itertools.islice(encoded, CHUNK)):
        tokens = np.fromiter(
            itertools.chain.from_iterable(e.input_ids for e in chunk), dtype=np.int64
        )
        if len(tokens) and (tokens.min() < 0 or tokens.max() > np.iinfo(dtype).max):
            raise ValueError(f"a token id out of {dtype}'s range: {tokens.min()}..{tokens.max()}")
        ids = [e.id.encode() for e in chunk]
        yield {
            "tokens": tokens.astype(dtype),
            "lengths": np.array([len(e.input_ids) for e in chunk], dtype=np.int32),
            "masked": np.array([_masked(e) for e in chunk], dtype=np.int32),
            "ids": np.frombuffer(b"".join(ids), dtype=np.uint8),
            "id_lengths": np.array([len(i) for i in ids], dtype=np.int32),
        }


def build_store(
    encoded: Iterable[Encoded], summary: Callable[[], str], vocab_size: int
) -> TokenStore:
    """A store in this process's memory (a dry run's, or data without a file to key a cache
    by). `summary` is read once `encoded` is consumed."""
    dtype, parts = token_dtype(vocab_size), {name: [] for name in COLUMNS}
    for columns in _columns(encoded, dtype):
        for name, column in columns.items():
            parts[name].append(column)
    dtypes = {name: column_dtype or dtype for name, column_dtype in COLUMNS.items()}
    return TokenStore(
        {
            name: np.concatenate(parts[name]) if parts[name] else np.empty(0, dtypes[name])
            for name in COLUMNS
        },
        summary(),
    )


def write_store(
    folder: Path,
    encoded: Iterable[Encoded],
    summary: Callable[[], str],
    vocab_size: int,
    key: dict[str, Any],
) -> None:
    """Write the store of `encoded` to `folder`, a chunk at a time, all or nothing: a crash
    leaves a hidden temporary folder, never `folder`; if another process (another node's)
    published `folder` first, its copy is kept. `key` (the options it was made with) is recorded
    for the reader; `summary` is read once `encoded` is consumed."""
    dtype = token_dtype(vocab_size)
    with atomic_dir(folder, keep_existing=True) as tmp:
        files = {name: (tmp / f"{name}.bin").open("wb") for name in COLUMNS}
        try:
            for columns in _columns(encoded, dtype):
                for name, column in columns.items():
                    files[name].write(column.tobytes())
            for f in files.values():
                f.flush()
                os.fsync(f.fileno())
        finally:
            for f in files.values():
                f.close()
        write_json(
            tmp / META, {"format": FORMAT, "token_dtype": dtype, "summary": summary(), **key}
        )


def store_key(options: dict[str, Any]) -> str:
    """The folder name for a store made with `options`: everything that decides its tokens (the
    data file's digest, the tokenizer's fingerprint, the data options), JSON-serialisable."""
    text = json.dumps({"format": FORMAT, **options}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_in_chunks(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    max_length: int,
    overlong: str,
    loss_on: str,
    report: TruncationReport,
) -> Iterator[Encoded]:
    """`encode_examples` over `examples` CHUNK at a time, so that only one chunk is held as
    lists; what its truncation policy did is counted into `report`."""
    report.examples = len(examples)
    # No examples: one call all the same, which refuses a wrong `overlong` or `loss_on`.
    for start in range(0, max(len(examples), 1), CHUNK):
        encoded, part = encode_examples(
            tokenizer, examples[start : start + CHUNK], max_length, overlong, loss_on
        )
        report.prompts_cut += part.prompts_cut
        report.prompt_tokens_cut += part.prompt_tokens_cut
        report.skipped_ids += part.skipped_ids
        yield from encoded
