"""The pipeline's plan: every stage waits for the stages whose outputs it reads, and a run
reusing a base plans no base stage."""

from __future__ import annotations

import pytest

from data_tools.config import parse_config
from pipeline.args import PipelineArgs
from pipeline.plan import build_plan


def plan_of(*argv: str):
    (args,) = parse_config((PipelineArgs,), ["--config", "configs/compare_demo.yaml", *argv])
    return build_plan(args)


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
        args = dict(zip(stage.args[::2], stage.args[1::2], strict=False))
        if stage.module == "train":
            assert args["--lora_rank"] == "16" and args["--max_eval_examples"] == "32"
        if stage.name.startswith("eval_"):
            assert args["--limit"] == "50"
