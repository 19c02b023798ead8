"""The records the loaders produce, whatever the source dataset looked like: examples (a prompt
and its response) and preference pairs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

TASKS = ("math", "summarization", "qa", "postfix")


class DataError(ValueError):
    """Bad input, with the file (or dataset), line (or row) and field it came from."""

    def __init__(self, where: str, field_name: str | None, problem: str):
        self.where, self.field_name, self.problem = where, field_name, problem
        at = f"{where}: field '{field_name}'" if field_name else where
        super().__init__(f"{at}: {problem}")

    def __reduce__(self) -> tuple:
        """Pickled by its parts, so that it crosses a process boundary (a forked tokenizer's)."""
        return DataError, (self.where, self.field_name, self.problem)


@dataclass(frozen=True)
class Example:
    """A prompt and its reference response.

    `origin` is "file:line" (or "dataset[split]:row") so that any later error can point at the
    input; `meta` carries task-specific extras (e.g. the number of reasoning steps).
    """

    id: str
    prompt: str
    response: str
    task: str
    origin: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Preference:
    """A prompt and two responses to it, the chosen one preferred to the rejected one (DPO's
    data). `origin` as for `Example`."""

    id: str
    prompt: str
    chosen: str
    rejected: str
    origin: str = ""
