"""The packages form layers, each importing only those below it, and no module imports an
entrypoint (`<package>/__main__.py`): entrypoints run as processes, libraries are imported.

    data_tools  <  runtime  <  methods  <  train, generate  <  pipeline  <  slurm, bench

(`tests` sit on top and drive entrypoints in-process.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.models import REPO

BELOW = {
    "data_tools": set(),
    "runtime": {"data_tools"},
    "methods": {"data_tools", "runtime"},
    "train": {"data_tools", "runtime", "methods"},
    "generate": {"data_tools", "runtime", "methods"},
    "pipeline": {"data_tools", "runtime", "methods", "train", "generate"},
    "slurm": {"data_tools", "runtime", "methods", "train", "generate", "pipeline"},
    "bench": {"data_tools", "runtime", "methods", "train", "generate", "pipeline"},
}


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


@pytest.mark.parametrize("package", sorted(BELOW))
def test_imports_run_downward_only(package: str) -> None:
    wrong = []
    for path in sorted((REPO / package).glob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in BELOW and top != package and top not in BELOW[package]:
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
            if name.endswith(".__main__"):
                wrong.append(f"{path.relative_to(REPO)} imports the entrypoint {name}")
    assert not wrong, "\n".join(wrong)


def test_every_package_has_a_layer() -> None:
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages <= set(BELOW), f"place {sorted(packages - set(BELOW))} in BELOW"
