"""The methods' comparison (bench/compare_methods.py) and DPO's (bench/compare_dpo.py): each
method's model is found in its runs, and a study resumes from its records across sessions."""

from __future__ import annotations

import json

import pytest

from bench import compare_dpo, compare_methods
from bench.compare_dpo import CompareDPOArgs
from bench.compare_methods import trained_model


def test_a_methods_model_is_its_last_rounds(tmp_path) -> None:
    for folder in ("bash/round1", "bash/round2", "bash/round10", "rac/round1", "sft"):
        (tmp_path / folder / "export").mkdir(parents=True)
    assert trained_model(tmp_path, "bash") == tmp_path / "bash/round10/export"
    assert trained_model(tmp_path, "rac") == tmp_path / "rac/round1/export"
    assert trained_model(tmp_path, "sft") == tmp_path / "sft/export"


def row(exact_match: float) -> dict:
    return {
        "exact_match": exact_match,
        "by_steps": {"2": exact_match, "5": exact_match / 2},
        "train_wall_s": 10.0,
        "forward_sequences": 100,
        "trained_tokens": 1000,
    }


def test_the_study_resumes_from_its_records_and_refuses_another_base(
    tmp_path, monkeypatch, capsys
) -> None:
    """Tuning and each seed are recorded as they finish: a second call runs nothing and prints
    the same tables; a seed added later must continue the recorded base, by its fingerprint."""
    runs = []

    def fake_pipeline(run_dir, *options):
        runs.append(run_dir)
        if "--methods" in options and (method := options[options.index("--methods") + 1]):
            ran = {method: row(0.6 + 0.01 * len(runs))}
            if method == "rac":
                ran["rac_self_correct"] = row(0.2)
            return {**ran, "sft_base": row(0.5)}
        return {"sft_base": row(0.5)}

    monkeypatch.setattr(compare_methods, "pipeline", fake_pipeline)
    monkeypatch.setattr(compare_methods, "model_fingerprint", lambda path: "base-A")
    eb = {"positions": 9, "teacher_forced": 0.9, "free_running": 0.8}
    monkeypatch.setattr(compare_methods, "exposure_bias", lambda out, chosen: {"sft": eb})
    argv = ["--output_dir", str(tmp_path / "runs"), "--results_dir", str(tmp_path / "rec")]
    compare_methods.main([*argv, "--seeds", "0,1"])
    first = capsys.readouterr().out
    records = {p.name for p in (tmp_path / "rec").iterdir()}
    assert records == {"base.json", "tuning.json", "seed0.json", "seed1.json"}
    seed0 = json.loads((tmp_path / "rec/seed0.json").read_text())
    assert seed0["exposure_bias"] == {"sft": eb} and set(seed0["models"]) >= {"sft", "bash", "scs"}
    assert "exposure_bias" not in json.loads((tmp_path / "rec/seed1.json").read_text())

    runs.clear()
    compare_methods.main([*argv, "--seeds", "0,1"])
    assert runs == [] and capsys.readouterr().out == first

    monkeypatch.setattr(compare_methods, "model_fingerprint", lambda path: "base-B")
    with pytest.raises(ValueError, match="base.json: its runs continued the SFT base"):
        compare_methods.main([*argv, "--seeds", "0,1,2"])
    assert not (tmp_path / "rec/seed2.json").exists()


def test_a_dpo_seed_recorded_with_another_setting_is_refused(tmp_path, monkeypatch) -> None:
    def no_pipeline(run_dir, *options):
        raise AssertionError(f"ran {run_dir}")

    monkeypatch.setattr(compare_dpo, "pipeline", no_pipeline)
    stamp = CompareDPOArgs().stamp()
    models = {
        f"{m}+dpo": {
            "exact_match": 0.5,
            "start_exact_match": 0.4,
            "against_start": [3, 1, 0.625],
            "against_sft+dpo": [0, 0, 1.0],
            "preference_accuracy": 0.7,
            "reward_margin": 0.3,
        }
        for m in compare_dpo.STARTS
    }
    record = {"stamp": stamp, "seed": 0, "setting": "beta 0.1, lr 3e-4", "n": 4, "models": models}
    (tmp_path / "seed0.json").write_text(json.dumps(record))
    argv = ["--results_dir", str(tmp_path), "--output_dir", str(tmp_path), "--seeds", "0"]
    compare_dpo.main([*argv, "--setting", "beta 0.1, lr 3e-4"])  # read back, nothing run
    with pytest.raises(ValueError, match="made with DPO 'beta 0.1, lr 3e-4', not 'beta 0.1, lr"):
        compare_dpo.main([*argv, "--setting", "beta 0.1, lr 1e-5"])
