"""The pipeline's plan: every stage waits for the stages whose outputs it reads, a run reusing a
base plans no base stage, and DPO continues each chosen method from one set of pairs."""

from __future__ import annotations

import pytest

from data_tools.config import parse_config
from pipeline.args import PipelineArgs
from pipeline.plan import Stage, build_plan
from pipeline.report import wall_time


def plan_of(*argv: str):
    (args,) = parse_config((PipelineArgs,), ["--config", "configs/compare_demo.yaml", *argv])
    return build_plan(args)


def options(stage: Stage) -> dict[str, str]:
    """A stage's options, the last of a repeated one winning (as the tools read them)."""
    return dict(zip(stage.args[::2], stage.args[1::2], strict=False))


def test_stages_wait_for_what_they_read() -> None:
    plan = plan_of("--bash_rounds", "2")
    after = {s.name: set(s.after) for s in plan.stages}
    names = [s.name for s in plan.stages]
    for stage in plan.stages:  # an order that runs every stage after its inputs
        assert all(names.index(a) < names.index(stage.name) for a in stage.after)
    assert after["sft_base"] == {"data", "tokenizer"}
    assert after["bash_predictions_2"] == {"data", "bash_round1"}
    assert after["bash_round2"] == {"data", "bash_round1", "bash_predictions_2"}
    assert after["rac"] == {"data", "sft_base", "rac_build"}
    assert after["eval_test_rac_self_correct"] == {"data", "rac"}
    assert set(plan.evaluations) == {"sft_base", "sft", "bash", "rac", "rac_self_correct", "scs"}


def test_a_run_from_a_base_plans_no_base_stage(tmp_path) -> None:
    plan = plan_of(
        "--base_dir", str(tmp_path / "base"), "--methods", "bash", "--report_split", "validation"
    )
    # Nothing waits for the base: it is finished before this run starts.
    assert {s.name: s.after for s in plan.stages} == {
        "bash_predictions_1": (),
        "bash_round1": ("bash_predictions_1",),
        "eval_validation_sft_base": (),
        "eval_validation_bash": ("bash_round1",),
    }
    assert plan.evaluations["sft_base"] == tmp_path / "base/eval/validation/sft_base.jsonl"


def test_a_plan_needs_a_model_and_known_methods() -> None:
    with pytest.raises(ValueError, match="give model_name_or_path .* or model_config"):
        build_plan(PipelineArgs(run_dir="runs/x"))
    with pytest.raises(ValueError, match=r"unknown methods \['dpo'\]"):
        plan_of("--methods", "sft,dpo")


def test_a_pretrained_start_is_evaluated_and_lora_reaches_every_training() -> None:
    (args,) = parse_config((PipelineArgs,), ["--config", "configs/smollm2_gsm8k.yaml"])
    plan = build_plan(args)
    stages = {s.name: s for s in plan.stages}
    assert list(plan.evaluations)[:2] == ["pretrained", "sft_base"]  # the zero-shot row first
    assert stages["eval_test_pretrained"].after == ()  # the given model: no stage makes it
    assert stages["sft_base"].after == ("holdout",)  # GSM8K has no validation split
    for stage in plan.stages:
        args = options(stage)
        if stage.module == "train":
            assert args["--lora_rank"] == "16" and args["--max_eval_examples"] == "32"
        if stage.name.startswith("eval_"):
            assert args["--limit"] == "50"


def test_dpo_continues_each_method_from_one_set_of_pairs_with_the_same_budget() -> None:
    plan = plan_of("--dpo_after", "sft,rac,bash", "--dpo_steps", "40")
    stages = {s.name: s for s in plan.stages}
    names = list(stages)
    run = plan.run_dir
    samples, pairs = options(stages["dpo_samples"]), options(stages["dpo_pairs"])
    assert samples["--model_name_or_path"] == str(run / "sft_base/export")  # the SFT base's
    assert (samples["--do_sample"], samples["--num_samples"], samples["--limit"]) == (
        "true",
        "4",
        "4800",
    )
    assert samples["--data"] == pairs["--data"] == str(run / "data/train.jsonl")
    assert options(stages["dpo_eval_pairs"])["--data"] == str(run / "data/validation.jsonl")
    assert stages["dpo_pairs"].after == ("data", "dpo_samples", "sft_base")
    starts = {"sft": "sft", "rac": "rac", "bash": "bash/round1"}
    budgets = set()
    for method, start in starts.items():
        train, name = options(stages[f"{method}+dpo"]), f"{method}+dpo"
        reference = options(stages[f"dpo_reference_{method}"])
        eval_reference = options(stages[f"dpo_eval_reference_{method}"])
        # The reference is the start: its model's log-probabilities of the shared pairs.
        assert reference["--model_name_or_path"] == train["--model_name_or_path"]
        assert train["--model_name_or_path"] == str(run / start / "export")
        assert reference["--pair_logps"] == eval_reference["--pair_logps"] == "true"
        assert reference["--data"] == train["--data"] == str(run / "dpo/pairs.jsonl")
        assert eval_reference["--data"] == train["--eval_data"] == str(run / "dpo/eval_pairs.jsonl")
        assert train["--reference_logps"] == reference["--output"]
        assert train["--eval_reference_logps"] == eval_reference["--output"]
        assert train["--mode"] == "dpo" and train["--output_dir"] == str(run / name)
        budgets.add((train["--max_steps"], train["--learning_rate"], train["--dpo_beta"]))
        assert {f"dpo_reference_{method}", "dpo_pairs"} <= set(stages[name].after)
        assert stages[f"eval_test_{name}"].after == (name, "data")
        assert plan.evaluations[name] == run / "eval/test" / f"{name}.jsonl"
        assert names.index(f"eval_test_{name}") > names.index(name)
    assert budgets == {("40", "0.0003", "0.1")}
    # Each stage has an output of its own: none is taken for done because another finished.
    assert len({s.output for s in plan.stages}) == len(plan.stages)


def test_dpo_is_off_by_default_and_needs_its_methods() -> None:
    assert not [s.name for s in plan_of().stages if "dpo" in s.name]
    with pytest.raises(ValueError, match=r"dpo_after \['rac'\]: .* add it to methods"):
        plan_of("--methods", "sft,bash", "--dpo_after", "sft,rac")


def test_dpo_samples_for_the_first_prompts_of_the_method_examples() -> None:
    for given, limit in (("100", "100"), ("100000", "4800")):
        plan = plan_of("--dpo_after", "sft", "--dpo_prompts", given)
        samples, pairs = (options(s) for s in plan.stages if s.name in ("dpo_samples", "dpo_pairs"))
        assert samples["--limit"] == pairs["--limit"] == limit


def test_a_rowswall_time_is_its_stages_or_not_recorded() -> None:
    """The cost of a row sums its stages' recorded times; one never recorded (a run stopped
    between a stage's end and its record) makes the whole unknown, not a smaller sum."""
    stages = [s.name for s in plan_of("--methods", "bash,rac", "--dpo_after", "rac").stages]
    timings = dict.fromkeys(stages, 1.0)
    assert wall_time("bash", stages, timings) == 2.0  # predictions and training, one round
    assert wall_time("rac_self_correct", stages, timings) == 3.0
    # RAC's three, the shared pairs' two and the reference and training of its DPO.
    assert wall_time("rac+dpo", stages, timings) == 7.0
    del timings["dpo_pairs"]
    assert wall_time("rac+dpo", stages, timings) is None
    assert wall_time("rac", stages, timings) == 3.0
