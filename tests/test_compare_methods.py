"""The methods' comparison (bench/compare_methods.py) finds each method's model in its runs."""

from __future__ import annotations

from bench.compare_methods import trained_model


def test_a_methods_model_is_its_last_rounds(tmp_path) -> None:
    for folder in ("bash/round1", "bash/round2", "bash/round10", "rac/round1", "sft"):
        (tmp_path / folder / "export").mkdir(parents=True)
    assert trained_model(tmp_path, "bash") == tmp_path / "bash/round10/export"
    assert trained_model(tmp_path, "rac") == tmp_path / "rac/round1/export"
    assert trained_model(tmp_path, "sft") == tmp_path / "sft/export"
