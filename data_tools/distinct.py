"""Drawing a synthetic task's problems so that no question is in two splits: a test problem the
model trained on would measure memory, not the skill."""

from __future__ import annotations

from collections.abc import Callable


def draw_distinct(
    n: int, make: Callable[[], dict | None], seen: set[str], what: str = "problems"
) -> list[dict]:
    """`n` rows from `make` (None: a draw it rejects) whose questions are not in `seen`, which
    gains them; a difficulty too narrow to give them is refused rather than looped on."""
    rows: list[dict] = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n:
            raise ValueError(
                f"only {len(rows)} distinct {what} in {attempts} draws: widen the difficulty"
            )
        row = make()
        if row is not None and row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return rows
