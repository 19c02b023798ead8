"""Shared fixtures: a small tokenizer trained once per session on the synthetic task; the real
SmolLM2-135M-Instruct folder and GSM8K (tests/real_model.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from data_tools.synthetic_math import Difficulty, make_splits
from data_tools.tokenizer_training import train_tokenizer
from tests.real_model import gsm8k_folder, smollm2_folder


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
