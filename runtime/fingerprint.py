"""Fingerprints of a tokenizer and of a checkpoint's weights, stored beside self-generated data
(BASH's tokens, DPO's reference log-probabilities) so that training refuses data made by another
tokenizer or another model; and the comparison of a recorded run's options with a resume's."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from data_tools.schema import DataError


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """The vocabulary, the special tokens and the chat template: what decides the token ids."""
    state = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": tokenizer.chat_template,
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 16 MB pieces, once per process while the file's
    inode, size and modification time stay the same (a training start asks twice: the token
    store's key and the run identity)."""
    stat = path.stat()
    return _sha256(path.resolve(), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.cache
def _sha256(path: Path, inode: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def model_fingerprint(name_or_path: str | None) -> str:
    """A hash of the weight files of a local model folder; for a hub name, of the cached
    snapshot's weight files; "new" stands for a model initialised from a config."""
    if name_or_path is None:
        return "new"
    folder = Path(name_or_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name_or_path, allow_patterns=["*.safetensors"]))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{name_or_path}: no .safetensors weights to fingerprint")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def check_fingerprints(row: dict[str, Any], where: str, tokenizer_fp: str, model_fp: str) -> None:
    """Refuse a row of self-generated data (`where`: its file:line) made by another tokenizer or
    by other weights than the run's (`tokenizer_fingerprint`, `model_fingerprint`)."""
    for field, expected, what in (
        ("tokenizer_fingerprint", tokenizer_fp, "another tokenizer than this run's"),
        ("model_fingerprint", model_fp, "other weights than those this run starts from"),
    ):
        if row.get(field) != expected:
            raise DataError(
                where, field, f"made with {what} ({row.get(field)} != {expected}); regenerate them"
            )


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key recorded -> current` for every option whose value differs (or is only in one)."""
    return [
        f"{key} {recorded.get(key, '(not recorded)')!r} -> {current.get(key, '(not recorded)')!r}"
        for key in dict.fromkeys([*recorded, *current])
        if recorded.get(key) != current.get(key)
    ]
