"""Shared fixtures: a small tokenizer trained once per session on the synthetic task."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerBase

from data_tools.synthetic_math import Difficulty, make_splits
from data_tools.tokenizer_training import train_tokenizer


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    """A 512-token sentencepiece tokenizer (BOS, EOS, pad; no chat template), trained in ~1 s."""
    rows = make_splits({"train": 500}, Difficulty(), seed=0)["train"]
    texts = [text for row in rows for text in (row["question"], row["answer"])]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tokenizer") / "tokenizer")
