"""bench/gpu_check.sh at its tiny size on CPU, so that the GPU check still runs the day a GPU
is lent: every phase finishes and records finite, positive figures (or, for continuous
batching, "unavailable" with its reason)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from tests.launch import REPO, env

TINY = ["--size", "tiny", "--steps", "2", "--warmup_steps", "1"]


def numbers(value: object, path: str = "") -> list[tuple[str, float]]:
    """Every number under `value` (booleans are settings, not measurements), with its path."""
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in numbers(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [n for i, v in enumerate(value) for n in numbers(v, f"{path}[{i}]")]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [(path, value)]
    return []


def test_tiny_run_records_every_measurement(tmp_path: Path) -> None:
    output = tmp_path / "gpu_check.json"
    result = subprocess.run(
        ["bash", "bench/gpu_check.sh", *TINY, "--output", str(output)],
        cwd=REPO,
        env=env(GPU_CHECK_TIMEOUT="120"),
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    r = json.loads(output.read_text())
    assert r["complete"] and r["size"] == "tiny" and r["precision"] == "fp32"
    assert all(r["versions"][p] for p in ("torch", "transformers", "deepspeed")) and r["device"]

    settings = {(t["attn_implementation"], t["gradient_checkpointing"]) for t in r["training"]}
    assert settings == {(a, c) for a in ("sdpa", "eager") for c in (False, True)}
    for t in r["training"]:
        assert {"tokens_per_s", "mfu", "peak_memory_bytes", "last_loss"} <= t.keys()
    assert set(r["ratios"]["checkpointing_on_over_off"]) == {"sdpa", "eager"}
    assert r["generation"]["static"]["tokens_per_s"] > 0
    assert r["teacher_forced"]["tokens_per_s"] > 0
    continuous = r["generation"]["continuous"]
    if continuous["status"] == "unavailable":
        assert continuous["reason"]
    else:
        assert continuous["status"] == "ok" and continuous["tokens_per_s"] > 0
        assert 0 <= continuous.pop("same_as_static") <= 1  # a fraction: 0 is a finding
    measured = numbers({k: r[k] for k in ("peak_matmul", "training", "ratios", "generation")})
    measured += numbers({k: r[k] for k in ("teacher_forced", "model", "peak_memory_bytes")})
    bad = [(p, v) for p, v in measured if not (math.isfinite(v) and v > 0)]
    assert not bad, bad
    assert "| training, ZeRO-2 | sdpa, checkpointing off |" in result.stdout
