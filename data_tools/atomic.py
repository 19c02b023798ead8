"""Atomic writes: a crash leaves either the old file or the complete new one, never half of one.
What is written gets the mode an ordinary `open` or `mkdir` would give (the temporary files and
folders of `tempfile` are private)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _temporary(path: Path) -> tuple[int, str]:
    """A new file beside `path`, hidden, with the mode an ordinary `open` would give."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any):
    """Open a temporary file beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_together(texts: Mapping[Path, str]) -> None:
    """Replace several related files (a summary and its examples) all or none: every new file is
    written in full before the first rename, and renames need no space, so a full disk or a
    crash while writing leaves every old file in place."""
    written: list[tuple[str, Path]] = []
    try:
        for path, text in texts.items():
            fd, tmp = _temporary(path)
            written.append((tmp, path))
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        for tmp, _ in written:
            Path(tmp).unlink(missing_ok=True)
        raise
    for tmp, path in written:
        os.replace(tmp, path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike, keep_existing: bool = False):
    """Yield a temporary folder beside `path`; it becomes `path` only if the block succeeds.
    With `keep_existing`, a `path` that another writer published meanwhile is kept and this
    folder dropped: for content named by its own hash, which writers on several nodes of a shared
    file system may build at once while readers already use the first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        tmp.chmod(0o777 & ~_umask())
        yield tmp
        if keep_existing:
            try:
                tmp.rename(path)  # fails on a folder that is there and not empty
            except OSError:
                if not path.is_dir():
                    raise
                shutil.rmtree(tmp)
            return
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
