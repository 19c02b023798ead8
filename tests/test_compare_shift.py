"""The study (bench/compare_shift.py): a record made under another config is refused, the tuning
chooses by its fixed rule, and the summary pools the seeds' per-problem answers into the paired
tests it prints."""

from __future__ import annotations

import json
import random

import pytest

from bench import compare_shift
from bench.compare_dpo import mcnemar
from bench.compare_shift import CompareShiftArgs, answers, load, summarise
from data_tools.bootstrap import paired_bootstrap, paired_bootstrap_scores
from data_tools.schema import DataError
from methods.correction import CORRECTION_MARKER


def bits(rng: random.Random, p: float, n: int = 60) -> str:
    return "".join("1" if rng.random() < p else "0" for _ in range(n))


def record(seed: int) -> dict:
    rng = random.Random(seed)
    models = {}
    for model, p in (("sft", 0.5), ("bash", 0.6), ("rac", 0.55), ("sft_base", 0.45)):
        models[model] = {
            "answers": {"test": bits(rng, p), "test_10": bits(rng, p / 2)},
            "passes": {
                "test": {"first_pass_exact_match": 0.5, "right_to_wrong": 3, "wrong_to_right": 5}
            }
            if model == "rac"
            else {},
            "cost": {"trained_tokens": 1000 * (seed + 1), "forward_sequences": 10},
            "changed_fraction": 0.1 if model == "bash" else None,
            "diagnostics": {
                "error_propagation/test_10": {
                    "no_earlier_error": 0.25,
                    "after_an_error": None,  # no step came after an error
                    "exposure_bias": None,
                    "first_step": 0.125,
                    "missing_steps": 0.5,
                    "reasons": {"arithmetic": 1200, "operand": 0},
                }
            }
            if model == "bash"
            else {},
        }
    return {"stamp": "x", "seed": seed, "models": models}


def test_a_record_of_another_config_is_refused(tmp_path) -> None:
    args = CompareShiftArgs(results_dir=str(tmp_path))
    path = tmp_path / "seed0.json"
    assert load(path, args.stamp()) is None
    path.write_text(json.dumps(record(0) | {"stamp": args.stamp()}))
    assert load(path, args.stamp())["seed"] == 0
    other = CompareShiftArgs(results_dir=str(tmp_path), pipeline_options="--sft_steps 5")
    assert other.stamp() != args.stamp()
    with pytest.raises(ValueError, match=r"seed0\.json: made under another config"):
        load(path, other.stamp())


def test_the_summary_pools_the_seeds_against_sft_continued(capsys) -> None:
    records = [record(0), record(1), record(2)]
    summary = summarise(records)
    assert summary["seeds"] == [0, 1, 2]
    for split in ("test", "test_10"):
        row = summary["splits"][split]["bash"]
        a = [[c == "1" for c in r["models"]["bash"]["answers"][split]] for r in records]
        b = [[c == "1" for c in r["models"]["sft"]["answers"][split]] for r in records]
        assert row["exact_match"] == [sum(x) / 60 for x in a]
        assert row["difference"] == pytest.approx(
            [(sum(x) - sum(y)) / 60 for x, y in zip(a, b, strict=True)]
        )
        assert [tuple(t) for t in row["mcnemar"]] == [
            mcnemar(x, y) for x, y in zip(a, b, strict=True)
        ]
        assert row["pooled"] == paired_bootstrap(sum(a, []), sum(b, []))
        assert "difference" not in summary["splits"][split]["sft"]
    printed = capsys.readouterr().out
    assert "### test_10 (seeds 0, 1, 2): against SFT continued" in printed
    assert "| bash | 0.100 | - | - | - | 2,000 | 10 |" in printed  # changed fraction, cost
    assert "| rac | - | 0.5 | 3 | 5 |" in printed
    assert "Diagnostics, seed 0" in printed
    assert "| bash | test_10 | 0.250 | - | - | 0.125 | 0.500 | arithmetic 1,200 |" in printed


def test_postfix_records_pool_the_edit_similarity_too(tmp_path, capsys) -> None:
    path = tmp_path / "sft.jsonl"
    rows = [("a b +", "a b +"), ("a b c * +", "a b * c +"), ("a b", "a b - c +")]
    path.write_text(
        "".join(
            json.dumps({"id": str(i), "generation": g, "reference": r}) + "\n"
            for i, (g, r) in enumerate(rows)
        )
    )
    bits, _, graded = answers(path, "postfix")
    assert bits == "100" and graded == [1.0, 0.6, 0.4]  # 2 of 5 symbols wrong; 3 missing of 5
    assert answers(path, "postfix")[2] is not None and "edit_similarity" not in record(0)

    records = [record(0), record(1)]
    for r in records:
        rng = random.Random(r["seed"])
        for entry in r["models"].values():
            entry["edit_similarity"] = {"test": [round(rng.random(), 4) for _ in range(60)]}
    summary = summarise(records)
    scores = [r["models"]["bash"]["edit_similarity"]["test"] for r in records]
    base = [r["models"]["sft"]["edit_similarity"]["test"] for r in records]
    row = summary["edit_similarity"]["test"]["bash"]
    assert row["pooled"] == paired_bootstrap_scores(sum(scores, []), sum(base, []))
    assert row["difference"] == pytest.approx(
        [sum(s) / 60 - sum(b) / 60 for s, b in zip(scores, base, strict=True)]
    )
    assert "### test, edit similarity: against SFT continued" in capsys.readouterr().out
    assert "edit_similarity" not in summarise([record(0)])  # math's records have none


def test_tuning_ranks_bash_by_exact_match_and_rac_by_its_worse_mode(tmp_path, monkeypatch) -> None:
    """The choice over fixed validation scores: RAC's best direct variant loses to one whose
    self-correct mode does not collapse; each 2-round trial continues its method's best variant
    and wins only when better (RAC's here, BASH's not)."""
    direct = {
        "rac_keep_whole": (0.70, 0.10),
        "rac_correct_whole": (0.66, 0.64),
        "rac_correct_whole_2_rounds": (0.65, 0.65),
    }
    bash = {"bash_p0.5_ramp32": 0.72, "bash_p0.5_ramp32_2_rounds": 0.64}

    def fake_pipeline(args, run_dir, *options):
        name = run_dir.name
        if "--methods" in options and options[options.index("--methods") + 1] == "rac":
            d, s = direct.get(name, (0.5, 0.5))
            return {"rac": {"exact_match": d}, "rac_self_correct": {"exact_match": s}}
        return {"bash": {"exact_match": bash.get(name, 0.6)}}

    monkeypatch.setattr(compare_shift, "pipeline", fake_pipeline)
    tuning = compare_shift.tune(CompareShiftArgs(output_dir=str(tmp_path)), tmp_path / "base")
    chosen = {m: name for m, (name, _) in tuning["chosen"].items()}
    assert chosen == {
        "bash": "bash p0.5 ramp32",
        "rac": "rac correct whole, 2 rounds",
        "scs": "scs p0.5 ramp32",
        "rac_echo": "rac correct whole, 2 rounds, echo",
    }
    rac_options = tuning["chosen"]["rac"][1]
    assert rac_options[-2:] == ["--rac_rounds", "2"] and "--bash_rounds" not in rac_options
    assert tuning["chosen"]["rac_echo"][1][-4:] == ["--rac_rounds", "2", "--rac_variant", "echo"]
    rows = {r["variant"]: r for r in tuning["validation"]}
    assert rows["rac keep whole"]["self_correct_exact_match"] == 0.10
    assert "self_correct_exact_match" not in rows["bash p0.5"]
    assert "bash p0.5 ramp32, 2 rounds" in rows


def test_an_amended_arm_is_paired_over_the_seeds_that_have_it(capsys) -> None:
    records = [record(0), record(1), record(2)]
    for r in records[1:]:  # seed 0's record was written before the arm was added
        r["models"]["rac_confirm"] = r["models"]["rac"] | {
            "answers": {"test": "1" * 60, "test_10": "0" * 60}
        }
    row = summarise(records)["splits"]["test"]["rac_confirm"]
    sft = [r["models"]["sft"]["answers"]["test"].count("1") / 60 for r in records[1:]]
    assert row["exact_match"] == [1.0, 1.0]
    assert row["difference"] == pytest.approx([1 - s for s in sft])
    assert "| rac_confirm (seeds 1, 2) | 1.000, 1.000 |" in capsys.readouterr().out


def test_arms_added_later_run_on_the_seeds_from_amended_from(tmp_path, monkeypatch) -> None:
    """A seed's finished record gets only the arms it lacks, and seeds before AMENDED_FROM get
    none; a missing record runs every arm."""
    args = CompareShiftArgs(results_dir=str(tmp_path), output_dir=str(tmp_path / "runs"))
    chosen = {"bash": ("bash p0.5", ["--ss_p_max", "0.5"])}
    (tmp_path / "tuning.json").write_text(json.dumps({"stamp": args.stamp(), "chosen": chosen}))
    for seed in (0, 1):
        done = {"stamp": args.stamp(), "seed": seed, "models": {"sft": {}, "bash": {}}}
        (tmp_path / f"seed{seed}.json").write_text(json.dumps(done))
    ran = {}

    def fake_run_seed(args, seed, arms, path, record=None):
        ran[seed] = sorted(arms)
        record = record or {"stamp": args.stamp(), "seed": seed, "models": {}}
        record = record | {"models": record["models"] | dict.fromkeys(arms, {})}
        path.write_text(json.dumps(record))
        return record

    monkeypatch.setattr(compare_shift, "run_seed", fake_run_seed)
    monkeypatch.setattr(compare_shift, "summarise", lambda records: {})
    compare_shift.main(["--family", "math", "--seeds", "0,1,2", "--results_dir", str(tmp_path)])
    assert ran == {1: ["rac_confirm"], 2: ["bash", "rac_confirm", "sft"]}
    seed1 = json.loads((tmp_path / "seed1.json").read_text())
    assert set(seed1["models"]) == {"sft", "bash", "rac_confirm"}


def test_a_seed_keeps_each_finished_arm_and_adds_only_to_its_own_base(
    tmp_path, monkeypatch
) -> None:
    """The record is written after every arm, so an interrupted seed keeps what finished; arms
    are added to a record only when the base made now has the recorded base's weights."""
    args = CompareShiftArgs(results_dir=str(tmp_path), output_dir=str(tmp_path / "runs"))
    path = tmp_path / "seed1.json"

    def fake_pipeline(args, run_dir, *options):
        method = options[options.index("--methods") + 1]
        if method == "bash":
            raise KeyboardInterrupt  # the session ends during BASH
        return {method: {"splits": {}, "trained_tokens": 1, "forward_sequences": 1}}

    monkeypatch.setattr(compare_shift, "pipeline", fake_pipeline)
    monkeypatch.setattr(compare_shift, "model_fingerprint", lambda path: "base-1")
    monkeypatch.setattr(compare_shift, "answers", lambda path, task: ("101", {}, None))
    arms = {"sft": ("sft continued", []), "bash": ("bash p0.5", [])}
    with pytest.raises(KeyboardInterrupt):
        compare_shift.run_seed(args, 1, arms, path)
    kept = json.loads(path.read_text())
    assert kept["base"] == "base-1" and set(kept["models"]) == {"sft", "sft_base"}
    assert kept["models"]["sft"]["answers"] == {"test": "101"}

    monkeypatch.setattr(compare_shift, "model_fingerprint", lambda path: "base-2")
    with pytest.raises(ValueError, match=r"seed1\.json: its runs continued the SFT base base-1"):
        compare_shift.run_seed(args, 1, {"bash": arms["bash"]}, path, kept)


def test_a_confirming_rac_arm_gets_the_gate_chosen_on_its_validation(
    tmp_path, monkeypatch, capsys
) -> None:
    """A RAC arm that confirms right drafts also runs on validation, where the gate's threshold
    is chosen; its gated answers on the test splits join the record (and a record that lacks
    them gets them), and an arm that now answers otherwise than recorded is refused."""
    args = CompareShiftArgs(
        family="postfix", results_dir=str(tmp_path), output_dir=str(tmp_path / "runs")
    )
    options = ["--rac_right_drafts", "confirm", "--rac_variant", "whole"]
    assert compare_shift.is_gated(options)
    assert not compare_shift.is_gated([*options, "--rac_variant", "echo"])
    seen = []

    def row(draft: str, second: str, probability: float) -> dict:
        text = f"{draft}{CORRECTION_MARKER}{second}"
        return {
            "id": draft,
            "generation": text,
            "reference": "a b +",
            "confirm_probability": probability,
        }

    # validation: confirming at >= 0.1 repairs one draft and keeps one; test: one of each
    generations = {
        "validation": [row("a b +", "a b -", 0.4), row("a b *", "a b +", 0.05)],
        "test": [row("a b +", "a b -", 0.5), row("a c *", "a b +", 0.01)],
        "test_long": [row("a b +", "a b -", 0.02)],
    }

    def fake_pipeline(args, run_dir, *options):
        seen.append(options)
        method = options[options.index("--methods") + 1]
        for split, rows in generations.items():
            for model in {"": ["sft_base"], "rac": ["rac", "rac_self_correct"]}.get(
                method, [method]
            ):
                path = run_dir / "eval" / split / f"{model}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                direct = model == "rac"  # its answers are the drafts
                lines = [r | {"generation": r["id"]} if direct else r for r in rows]
                path.write_text("".join(json.dumps(r) + "\n" for r in lines))
        done = {"splits": ["validation", "test_long"], "trained_tokens": 1, "forward_sequences": 1}
        return {method: done}

    monkeypatch.setattr(compare_shift, "pipeline", fake_pipeline)
    monkeypatch.setattr(compare_shift, "model_fingerprint", lambda path: "base-0")
    path = tmp_path / "seed1.json"
    arms = {"sft": ("sft continued", []), "rac": ("rac confirm whole", options)}
    record = compare_shift.run_seed(args, 1, arms, path)
    assert "--eval_splits" not in seen[1]  # SFT continued: the config's splits
    assert seen[2][-2:] == ("--eval_splits", "validation,test_long")
    gated = record["models"]["rac_gated"]
    assert gated["gate"]["threshold"] == 0.1
    # test: the right draft confirmed (p 0.5), the wrong one rewritten right (p 0.01)
    assert gated["answers"] == {"test": "11", "test_long": "0"}
    assert record["models"]["rac_self_correct"]["answers"] == {"test": "01", "test_long": "0"}
    assert set(record["models"]["rac"]["answers"]) == {"test", "test_long"}
    gates = summarise([record])["gates"]["rac_gated"]
    assert gates["gated_minus_direct"] == {"test": [0.5], "test_long": [-1.0]}
    assert "| rac_gated | 0.1 | 2/1 | 1/0 | 1/2 | +0.500 | -1.000 |" in capsys.readouterr().out

    # A record without the gate gets it, from the RAC arm run again; one whose RAC arm now
    # answers otherwise is refused.
    tuning = {"stamp": args.stamp(), "chosen": {"rac": arms["rac"]}}
    (tmp_path / "tuning.json").write_text(json.dumps(tuning))
    monkeypatch.setattr(compare_shift, "summarise", lambda records: {})
    argv = ["--family", "postfix", "--seeds", "1", "--results_dir", str(tmp_path)]
    argv += ["--output_dir", str(tmp_path / "runs")]
    del record["models"]["rac_gated"]
    path.write_text(json.dumps(record))
    compare_shift.main(argv)
    record = json.loads(path.read_text())
    assert record["models"]["rac_gated"] == gated
    del record["models"]["rac_gated"]
    record["models"]["rac"]["answers"]["test"] = "00"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="rac answers otherwise than recorded"):
        compare_shift.main(argv)

    # A self-correcting generation made before generate recorded the probability is named.
    stale = tmp_path / "runs" / "test" / "seed1" / "rac" / "eval" / "validation"
    lines = (stale / "rac_self_correct.jsonl").read_text().splitlines()
    unrecorded = {k: v for k, v in json.loads(lines[0]).items() if k != "confirm_probability"}
    (stale / "rac_self_correct.jsonl").write_text(json.dumps(unrecorded) + "\n")
    with pytest.raises(DataError, match="field 'confirm_probability': missing: made before"):
        compare_shift.gate(stale.parents[1], ["test"], "postfix")
