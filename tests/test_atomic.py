"""Atomic writes leave the mode an ordinary open or mkdir gives, not tempfile's private one, and
related files replaced together stay together on a full disk."""

from __future__ import annotations

import errno
import os

import pytest

from data_tools.atomic import atomic_dir, write_text, write_together


def test_written_files_and_folders_get_ordinary_modes(tmp_path) -> None:
    umask = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "d") as folder:
            (folder / "f").write_text("y")
        with open(tmp_path / "ordinary.txt", "w") as f:
            f.write("z")
        (tmp_path / "ordinary").mkdir()
    finally:
        os.umask(umask)

    def mode(name: str) -> int:
        return (tmp_path / name).stat().st_mode & 0o777

    assert mode("a.txt") == mode("ordinary.txt") == 0o644
    assert mode("d") == mode("ordinary") == 0o755


def test_files_replaced_together_are_all_kept_when_the_disk_fills(small_disk) -> None:
    small_disk.resize(256 << 10)
    summary, examples = small_disk.path / "summary.json", small_disk.path / "examples.jsonl"
    write_together({summary: "old\n", examples: "old\n"})
    with pytest.raises(OSError) as raised:  # the summary fits; the examples do not
        write_together({summary: "new\n", examples: "x" * (512 << 10)})
    assert raised.value.errno == errno.ENOSPC
    assert summary.read_text() == examples.read_text() == "old\n"
    assert sorted(p.name for p in small_disk.path.iterdir()) == ["examples.jsonl", "summary.json"]
    write_together({summary: "new\n", examples: "new\n"})
    assert summary.read_text() == examples.read_text() == "new\n"
