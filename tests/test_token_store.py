"""The token store: the examples `encode_examples` makes, held as arrays, written once per node
under a key of what decides the tokens, and read back by every rank."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from data_tools import token_store
from data_tools.atomic import atomic_dir
from data_tools.schema import DataError, Example
from data_tools.synthetic_math import Difficulty, make_splits
from data_tools.token_store import (
    TokenStore,
    build_store,
    encode_in_chunks,
    write_store,
)
from data_tools.tokenization import IGNORE_INDEX, Encoded, TruncationReport, encode_examples
from methods.correction import encode_correction
from runtime.args import DataArgs
from runtime.distributed import free_port
from runtime.forked import run_forked
from tests.launch import REPO, env
from train import setup as train_setup

# (max_length, overlong, loss_on): nothing cut, prompts cut, examples skipped.
POLICIES = [
    (512, "truncate", "response"),
    (512, "truncate", "all"),
    (72, "truncate", "response"),
    (72, "truncate", "all"),
    (72, "skip", "response"),
    (72, "skip", "all"),
]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return make_splits({"train": 60}, Difficulty(max_steps=4), seed=3)["train"]


@pytest.fixture(scope="module")
def examples(rows: list[dict]) -> list[Example]:
    # Short and long responses, so that max_length 72 cuts some prompts and skips some examples.
    return [
        Example(f"ex{i}", r["question"], r["answer"][: 20 + 7 * (i % 9)], "math", None)
        for i, r in enumerate(rows)
    ]


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 7 examples, so that a chunk's end falls inside the data."""
    monkeypatch.setattr(token_store, "CHUNK", 7)


def stored(
    tokenizer: PreTrainedTokenizerBase, examples: list[Example], folder: Path | None, *policy
) -> TokenStore:
    report = TruncationReport()
    encoded = encode_in_chunks(tokenizer, examples, *policy, report)
    if folder is None:
        return build_store(encoded, report.summary, len(tokenizer))
    write_store(folder, encoded, report.summary, len(tokenizer), {"policy": policy})
    return TokenStore.open(folder)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("on_disk", [False, True])
def test_store_holds_what_encode_examples_makes(
    tokenizer, examples, small_chunks, tmp_path: Path, policy: tuple, on_disk: bool
) -> None:
    expected, report = encode_examples(tokenizer, examples, *policy)
    store = stored(tokenizer, examples, tmp_path / "store" if on_disk else None, *policy)
    assert list(store) == expected  # ids, input_ids, labels, order
    assert store.summary == report.summary()
    assert store[-1] == expected[-1] and store[3:11:2] == expected[3:11:2]
    with pytest.raises(IndexError):
        store[len(expected)]
    assert store.tokens.dtype.name == "uint16"  # a 512-token vocabulary
    rows = [0, 5, 2, len(expected) - 1]
    assert store.counts(rows) == (
        sum(expected[i].num_trained for i in rows),
        sum(len(expected[i].input_ids) for i in rows),
    )
    if policy[0] == 72:  # the policy did something
        assert report.skipped_ids if policy[1] == "skip" else report.prompts_cut


def test_an_empty_store(tokenizer, tmp_path: Path) -> None:
    for folder in (None, tmp_path / "empty"):
        store = stored(tokenizer, [], folder, 512, "truncate", "response")
        assert len(store) == 0 and list(store) == [] and store.summary.startswith("0 examples")
    with pytest.raises(ValueError, match="overlong"):
        stored(tokenizer, [], None, 512, "drop", "response")


def test_labels_of_another_form_are_refused() -> None:
    odd = Encoded("odd", [5, 6, 7, 8], [IGNORE_INDEX, 6, IGNORE_INDEX, 8])
    with pytest.raises(ValueError, match="'odd': its labels"):
        build_store([odd], str, 512)


def test_an_interrupted_write_leaves_no_store(tokenizer, examples, small_chunks, tmp_path) -> None:
    """A write that fails halfway (here, after two chunks) publishes nothing; a folder that a
    killed writer left (hidden, `.tmp`) is not a store; the next write makes the whole store."""

    def failing():
        for i, e in enumerate(encode_examples(tokenizer, examples, 512)[0]):
            if i == 15:
                raise KeyboardInterrupt
            yield e

    folder = tmp_path / "cache" / "key"
    with pytest.raises(KeyboardInterrupt):
        write_store(folder, failing(), str, len(tokenizer), {})
    assert list((tmp_path / "cache").iterdir()) == []
    killed = tmp_path / "cache" / ".key.abc.tmp"
    killed.mkdir()
    (killed / "tokens.bin").write_bytes(b"\0" * 10)
    write_store(folder, encode_examples(tokenizer, examples, 512)[0], str, len(tokenizer), {})
    assert list(TokenStore.open(folder)) == encode_examples(tokenizer, examples, 512)[0]


def test_a_store_published_first_is_kept(tmp_path: Path) -> None:
    """Two nodes on a shared file system may build the same key at once: the second rename
    keeps the first copy, which the first node's ranks may already have mapped."""
    folder = tmp_path / "key"
    with atomic_dir(folder, keep_existing=True) as tmp:
        (tmp / "meta.json").write_text("first")
    with atomic_dir(folder, keep_existing=True) as tmp:
        (tmp / "meta.json").write_text("second")
    assert (folder / "meta.json").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def write_data(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_the_cache_is_built_once_and_keyed_by_what_decides_the_tokens(
    tokenizer, rows, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    log = tmp_path / "tokenized.log"  # written by the forked child that tokenizes

    def counting(*args, **kwargs):
        with log.open("a") as f:
            f.write("tokenized\n")
        return encode_in_chunks(*args, **kwargs)

    monkeypatch.setattr(train_setup, "encode_in_chunks", counting)
    data, cache = write_data(tmp_path / "train.jsonl", rows), tmp_path / "tokenized"
    data_args = DataArgs(data, max_length=100, overlong="skip")

    first = train_setup.encode(tokenizer, data_args, cache=cache)
    printed = capsys.readouterr().out
    again = train_setup.encode(tokenizer, data_args, cache=cache)
    assert log.read_text() == "tokenized\n" and capsys.readouterr().out == printed
    assert "skipped as too long" in printed and str(cache) in printed
    assert list(first) == list(again)
    examples = data_args.load()
    assert list(again) == encode_examples(tokenizer, examples, 100, "skip")[0]
    assert len(list(cache.iterdir())) == 1

    # Every option that changes the tokens is another key; so is other data in the same file.
    train_setup.encode(tokenizer, data_args, cache=cache, loss_on="all")
    train_setup.encode(tokenizer, DataArgs(data, max_length=110, overlong="skip"), cache=cache)
    train_setup.encode(
        tokenizer, DataArgs(data, max_length=100, overlong="skip", limit=10), cache=cache
    )
    train_setup.encode(tokenizer, data_args, cache=cache, marker=None, limit=5, split="test")
    write_data(tmp_path / "train.jsonl", rows[:-1])
    changed = train_setup.encode(tokenizer, data_args, cache=cache)
    assert changed.summary.startswith("59 examples")
    assert len(log.read_text().split()) == 6 and len(list(cache.iterdir())) == 6


DISTRIBUTED = """
import hashlib, json, sys
from pathlib import Path
from runtime import distributed
from runtime.args import DataArgs
from runtime.modeling import load_tokenizer
from train import setup

tokenizer_path, data, cache, log, max_length = sys.argv[-5:]  # after --local_rank
rank, world = distributed.init()
real = setup.encode_in_chunks
def counting(*args, **kwargs):
    with open(log, "a") as f:
        f.write(f"{rank}\\n")
    return real(*args, **kwargs)
setup.encode_in_chunks = counting
store = setup.encode(load_tokenizer(tokenizer_path), DataArgs(data, max_length=int(max_length)), cache=Path(cache))
digest = hashlib.sha256(json.dumps([vars(e) for e in store]).encode()).hexdigest()
Path(log).with_name(f"rank{rank}.txt").write_text(f"{len(store)} {type(store.tokens).__name__} {digest}")
"""


def launch(script: Path, *args: str) -> subprocess.CompletedProcess:
    launcher = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), str(script)]
    return subprocess.run(
        [*launcher, *args],
        cwd=REPO,
        env=env(PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_two_ranks_tokenize_once_and_share_the_store(tokenizer, rows, tmp_path: Path) -> None:
    """Under the launcher, local rank 0 tokenizes while rank 1 waits; both map the same files.
    Data that local rank 0 refuses stops both ranks, with its error, rather than rank 1 waiting
    forever."""
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    script, log = tmp_path / "encode.py", tmp_path / "tokenized.log"
    script.write_text(DISTRIBUTED)
    data = write_data(tmp_path / "train.jsonl", rows)
    args = [str(tmp_path / "tokenizer"), data, str(tmp_path / "cache"), str(log)]
    result = launch(script, *args, "160")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert log.read_text() == "0\n"
    seen = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert seen[0] == seen[1] and seen[0][:2] == [str(len(rows)), "memmap"]

    result = launch(script, *args, "100")  # some responses leave no room for their prompt
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "a local rank 0 failed: DataError: " in output and "leave no room" in output


def test_a_data_error_in_the_forked_tokenizer_reaches_the_run(tokenizer, rows, tmp_path) -> None:
    """The store is written by a forked child; its refusal of the data is raised in the run as
    the same DataError (naming the example's line), and nothing is cached."""
    data, cache = write_data(tmp_path / "train.jsonl", rows), tmp_path / "tokenized"
    with pytest.raises(DataError, match=r"train.jsonl:1: field 'prompt'") as error:
        train_setup.encode(tokenizer, DataArgs(data, max_length=100, overlong="error"), cache=cache)
    assert error.value.field_name == "prompt"
    assert not cache.exists() or list(cache.iterdir()) == []


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("no")


def test_run_forked_raises_what_the_child_raised() -> None:
    def unpicklable() -> None:
        raise Unpicklable("lost type")

    with pytest.raises(RuntimeError, match="Unpicklable: lost type"):
        run_forked(unpicklable)
    with pytest.raises(RuntimeError, match="ended without a word"):
        run_forked(lambda: os._exit(3))
    run_forked(lambda: None)


def test_rac_samples_are_held_as_made(tokenizer, examples) -> None:
    """RAC masks prompt and draft: the same form, one longer masked prefix."""
    drafts = [None, [], *(tokenizer(e.response)["input_ids"][1:9] for e in examples[2:])]
    samples = [
        encode_correction(tokenizer, e, d, 160) for e, d in zip(examples, drafts, strict=True)
    ]
    store = build_store(samples, lambda: "rac", len(tokenizer))
    assert list(store) == samples
    assert store.counts(range(len(samples)))[0] == sum(s.num_trained for s in samples)
