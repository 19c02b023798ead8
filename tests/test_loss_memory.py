"""`bench.loss_memory` at a tiny size, so that it keeps working: both arms run in their own
process and report the same loss, a peak and a time."""

from __future__ import annotations

import re

from bench.loss_memory import main


def test_both_arms_run_and_agree(capsys) -> None:
    main(
        ["--layers", "2", "--vocab_size", "64", "--max_length", "16", "--rows", "2", "--steps", "1"]
    )
    table = capsys.readouterr().out
    rows = re.findall(
        r"^\| (the model's own|trained positions' logits) \| ([\d.]+) \| (\d+) \|", table, re.M
    )
    assert [name for name, _, _ in rows] == ["the model's own", "trained positions' logits"]
    losses = [float(loss) for _, loss, _ in rows]
    assert abs(losses[0] - losses[1]) < 1e-4
    assert "trained / own" in table
