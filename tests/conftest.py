"""Shared fixtures: a small tokenizer trained once per session on the synthetic task; the real
SmolLM2-135M-Instruct folder and GSM8K (tests/real_model.py); a small disk to fill. The files
that take minutes are collected first."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from data_tools.synthetic_math import Difficulty, make_splits
from data_tools.tokenizer_training import train_tokenizer
from tests.real_model import gsm8k_folder, smollm2_folder

# The files that take minutes, longest first (measured on 2 cores, 2026-12-03). The test command
# (`-n 2 --dist loadfile`) gives each worker whole files in collection order: a long file
# collected last would run alone at the end.
LONGEST_FIRST = (
    "test_slurm",
    "test_train",
    "test_pipeline",
    "test_real_model",
    "test_signals",
    "test_checkpoint_integrity",
    "test_distributed",
    "test_checkpoints",
    "test_dpo_train",
    "test_generate",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: file order kept


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    """A 512-token sentencepiece tokenizer (BOS, EOS, pad; no chat template), trained in ~1 s."""
    rows = make_splits({"train": 500}, Difficulty(), seed=0)["train"]
    texts = [text for row in rows for text in (row["question"], row["answer"])]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tokenizer") / "tokenizer")


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as a local folder, imported once per test run (tests/real_model.py)."""
    return smollm2_folder(tmp_path_factory)


@pytest.fixture(scope="session")
def gsm8k() -> Path:
    """The folder of the real GSM8K's train.jsonl and test.jsonl, read in place."""
    return gsm8k_folder()


@dataclass(frozen=True)
class SmallDisk:
    path: Path

    def resize(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A tmpfs of 4 KiB, for the test to size (`resize`) and fill. Mounting needs root."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(disk)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (it needs root): no full-disk test")
    try:
        yield SmallDisk(disk)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)
