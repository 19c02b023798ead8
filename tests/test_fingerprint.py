"""A file's hash is computed once per process until the file changes."""

from __future__ import annotations

import hashlib
import os

from runtime.fingerprint import _sha256, file_sha256


def test_a_file_is_hashed_once_until_it_changes(tmp_path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("one\n")
    assert file_sha256(data) == hashlib.sha256(b"one\n").hexdigest()
    hits = _sha256.cache_info().hits
    assert file_sha256(data) == hashlib.sha256(b"one\n").hexdigest()
    assert _sha256.cache_info().hits == hits + 1  # not read again
    replacement = tmp_path / "new.jsonl"
    replacement.write_text("two\n")  # the same size, written as an atomic replace
    os.replace(replacement, data)
    assert file_sha256(data) == hashlib.sha256(b"two\n").hexdigest()
