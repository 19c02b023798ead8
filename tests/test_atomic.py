"""Atomic writes leave the mode an ordinary open or mkdir gives, not tempfile's private one."""

from __future__ import annotations

import os

from data_tools.atomic import atomic_dir, write_text


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
