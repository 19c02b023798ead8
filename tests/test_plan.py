"""The pipeline's plan: every stage waits for the stages whose outputs it reads, a run reusing a
base plans no base stage, DPO continues each chosen method from one set of pairs, the task
reaches every stage, and extra splits are evaluated and reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_tools.config import parse_config
from data_tools.scoring import CONFIRMATION
from data_tools.tokenizer_training import TokenizerArgs
from generate.args import GenerateArgs
from generate.error_injection import InjectionArgs
from generate.error_propagation import ErrorPropagationArgs
from generate.exposure_bias import ExposureArgs
from methods.correction import CORRECTION_MARKER
from pipeline.args import PipelineArgs
from pipeline.plan import Stage, build_plan
from pipeline.report import report, wall_time
from runtime.args import DataArgs, ModelArgs


def plan_of(*argv: str):
    (args,) = parse_config((PipelineArgs,), ["--config", "configs/compare_demo.yaml", *argv])
    return build_plan(args)


def options(stage: Stage) -> dict[str, str]:
    """A stage's options, the last of a repeated one winning (as the tools read them)."""
    return dict(zip(stage.args[::2], stage.args[1::2], strict=False))


def test_stages_wait_for_what_they_read() -> None:
    plan = plan_of("--bash_rounds", "2", "--rac_rounds", "3")
    after = {s.name: set(s.after) for s in plan.stages}
    names = [s.name for s in plan.stages]
    for stage in plan.stages:  # an order that runs every stage after its inputs
        assert all(names.index(a) < names.index(stage.name) for a in stage.after)
    assert after["sft_base"] == {"data", "tokenizer"}
    assert after["bash_predictions_2"] == {"data", "bash_round1"}
    assert after["bash_round2"] == {"data", "bash_round1", "bash_predictions_2"}
    assert after["rac_drafts_2"] == {"data", "rac_round1"}
    assert after["rac_round3"] == {"data", "rac_round2", "rac_build_3"}
    assert after["eval_test_rac_self_correct"] == {"data", "rac_round3"}
    assert set(plan.evaluations) == {"sft_base", "sft", "bash", "rac", "rac_self_correct", "scs"}


def test_rounds_draft_with_the_newest_model_and_share_the_budget() -> None:
    """BASH's and RAC's rounds: each round's model tokens come from the previous round's model
    (the first from the SFT base), each round trains method_steps / rounds steps from it with
    its own seed, and the last round's model is the one evaluated."""
    plan = plan_of("--bash_rounds", "3", "--rac_rounds", "3", "--seed", "7")
    stages, run = {s.name: s for s in plan.stages}, plan.run_dir
    for method, tokens in (("bash", "bash_predictions"), ("rac", "rac_drafts")):
        model = run / "sft_base/export"
        for r in (1, 2, 3):
            made, train = options(stages[f"{tokens}_{r}"]), options(stages[f"{method}_round{r}"])
            assert made["--model_name_or_path"] == str(model)
            assert train["--model_name_or_path"] == str(model)
            assert (train["--max_steps"], train["--seed"]) == ("50", str(6 + r))
            model = Path(train["--output_dir"]) / "export"
        assert options(stages[f"eval_test_{method}"])["--model_name_or_path"] == str(model)
    for r in (1, 2, 3):
        build = options(stages[f"rac_build_{r}"])
        assert build["--drafts"] == options(stages[f"rac_drafts_{r}"])["--output"]
        assert options(stages[f"rac_round{r}"])["--data"] == build["--output"]
        assert build["--seed"] == str(6 + r)
    for option in ("--bash_rounds", "--rac_rounds"):
        for rounds in ("0", "4"):  # 150 steps do not split into 4 equal rounds
            with pytest.raises(ValueError, match=f"{option[2:]} {rounds}: method_steps"):
                plan_of(option, rounds)


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
    starts = {"sft": "sft", "rac": "rac/round1", "bash": "bash/round1"}
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


def test_the_postfix_task_makes_its_data_and_every_stage_is_told_it() -> None:
    plan = plan_of(
        *("--task", "postfix", "--eval_splits", "test_long", "--dpo_after", "rac"),
        *("--synthetic_sizes", "train=300,validation=24,test=24,test_long=24"),
        *("--wandb_project", "p"),
    )
    stages = {s.name: s for s in plan.stages}
    data = stages["data"]
    assert data.module == "data_tools.postfix"
    assert options(data)["--test_long"] == "24" and "--shifted_steps" not in data.args
    told = [s for s in plan.stages if s.module != "data_tools.tokenizer_training" and s != data]
    assert {s.module for s in told} == {
        "train",
        "generate",
        "generate.score",
        "methods.correction",
        "methods.preference_pairs",
    }
    assert all(options(s)["--task"] == "postfix" for s in told)
    assert stages["eval_test_long_rac+dpo"].after == ("rac+dpo", "data")
    assert options(stages["eval_test_long_sft"])["--data"] == str(
        plan.run_dir / "data/test_long.jsonl"
    )
    assert set(plan.split_evaluations) == {"test_long"}
    assert set(plan.split_evaluations["test_long"]) == set(plan.evaluations)


def test_task_difficulty_reaches_the_generator_and_unknown_knobs_are_refused() -> None:
    plan = plan_of(
        *("--task", "postfix", "--task_difficulty", "operands=abcdefgh,max_operators=12"),
    )
    data = options({s.name: s for s in plan.stages}["data"])
    assert data["--operands"] == "abcdefgh" and data["--max_operators"] == "12"
    math = options({s.name: s for s in plan_of("--task_difficulty", "max_steps=4").stages}["data"])
    assert math["--max_steps"] == "4"
    for wrong in ("max_steps=4", "operands", "operands="):  # math's knob, no value
        with pytest.raises(ValueError, match="not key=value pairs of the postfix generator"):
            plan_of("--task", "postfix", "--task_difficulty", wrong)
    with pytest.raises(ValueError, match="task_difficulty: an option of the generated tasks"):
        plan_of("--task_difficulty", "max_steps=4", "--data_dir", "somewhere")


def test_extra_splits_evaluate_every_model_beside_the_report_split(tmp_path) -> None:
    plan = plan_of("--shifted_steps", "6-8,10", "--eval_splits", "test_6to8,test_10")
    stages = {s.name: s for s in plan.stages}
    run = plan.run_dir
    data = stages["data"].args
    assert data[data.index("--shifted_steps") :][:3] == ("--shifted_steps", "6-8", "10")
    assert options(stages["sft_base"])["--task"] == "math"  # the default task, as before
    for split in ("test_6to8", "test_10"):
        evaluations = plan.split_evaluations[split]
        assert set(evaluations) == set(plan.evaluations)
        for model, path in evaluations.items():
            stage = stages[f"eval_{split}_{model}"]
            assert options(stage)["--data"] == str(run / "data" / f"{split}.jsonl")
            assert stage.output == path == run / "eval" / split / f"{model}.jsonl"
            assert "data" in stage.after
        assert options(stages[f"eval_{split}_rac_self_correct"])["--self_correct"] == "true"
    assert plan.evaluations["sft"] == run / "eval/test/sft.jsonl"  # the report split's, as before
    assert len({s.output for s in plan.stages}) == len(plan.stages)
    # A run from a base evaluates on the base's splits: its shifted ones too.
    plan = plan_of("--base_dir", str(tmp_path), "--methods", "sft", "--eval_splits", "test_10")
    assert plan.split_evaluations["test_10"] == {
        "sft_base": tmp_path / "eval/test_10/sft_base.jsonl",
        "sft": plan.run_dir / "eval/test_10/sft.jsonl",
    }
    assert options(plan.stages[-1])["--data"] == str(tmp_path / "data/test_10.jsonl")


def test_a_task_or_split_the_pipeline_cannot_make_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"task 'qa': the pipeline runs the tasks \['math', 'p"):
        plan_of("--task", "qa")
    with pytest.raises(ValueError, match="shifted_steps: an option of the synthetic math"):
        plan_of("--task", "postfix", "--shifted_steps", "6-8")
    with pytest.raises(ValueError, match="shifted_steps: an option of the synthetic math"):
        plan_of("--data_dir", str(tmp_path), "--shifted_steps", "6-8")
    with pytest.raises(ValueError, match=r"eval_splits \['test_long'\]: data_tools.synthetic"):
        plan_of("--eval_splits", "test_long")
    with pytest.raises(ValueError, match=r"eval_splits \['test_6to8'\]: .*test_long"):
        plan_of("--task", "postfix", "--eval_splits", "test_6to8")
    with pytest.raises(ValueError, match="not the report split 'test'"):
        plan_of("--eval_splits", "test")
    with pytest.raises(ValueError, match="name each split once"):
        plan_of("--shifted_steps", "10", "--eval_splits", "test_10,test_10")
    with pytest.raises(ValueError, match="shifted_steps: expected a count or range"):
        plan_of("--shifted_steps", "six")


def test_the_report_scores_by_the_task_and_has_a_column_per_extra_split(tmp_path, capsys) -> None:
    def generations(split: str, answers: list[str]) -> Path:
        path = tmp_path / f"{split}.jsonl"
        rows = [
            {"id": f"{split}{i}", "reference": "a b +", "generation": g, "meta": {"num_steps": 1}}
            for i, g in enumerate(answers)
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    test = generations("test", ["a b +", "a + b"])
    long = generations("test_long", ["a b +", "a  b +", "a", "b a +"])
    report(
        tmp_path,
        tmp_path,
        {"pretrained": test},
        [],
        {},
        task="postfix",
        splits={"test_long": {"pretrained": long}},
    )
    (row,) = json.loads((tmp_path / "results.json").read_text())
    assert (row["exact_match"], row["n"]) == (0.5, 2)  # postfix's exact match, not math's
    shifted = row["splits"]["test_long"]
    assert (shifted["exact_match"], shifted["n"], shifted["by_steps"]) == (0.5, 4, {"1": 0.5})
    header, _, line = (tmp_path / "results.md").read_text().splitlines()
    assert header.startswith("| method | exact match | test_long | trained tokens |")
    assert line.startswith("| pretrained | 0.500 (1/2) | 0.500 (2/4) | 0 |")
    assert line in capsys.readouterr().out


def test_diagnostics_are_stages_of_every_evaluated_model_with_their_tools_options() -> None:
    plan = plan_of(
        *("--shifted_steps", "10", "--eval_splits", "test_10", "--diagnostic_examples", "50"),
        *("--diagnostics", "exposure_bias,error_propagation,error_injection"),
        *("--max_prompt_length", "128"),
    )
    stages = {s.name: s for s in plan.stages}
    run, models = plan.run_dir, ["sft_base", "sft", "bash", "rac", "scs"]
    for split, evaluations in (("test", plan.evaluations), *plan.split_evaluations.items()):
        for model, generations in evaluations.items():  # rac_self_correct's too
            stage = stages[f"error_propagation_{split}_{model}"]
            (parsed,) = parse_config((ErrorPropagationArgs,), list(stage.args))
            assert parsed.generations == str(generations)
            assert stage.after == (f"eval_{split}_{model}",)
            out = run / "diagnostics" / split / model / "error_propagation"
            assert stage.output == out / "error_propagation.json"
    for model in models:
        for tool, kind in ((ExposureArgs, "exposure_bias"), (InjectionArgs, "error_injection")):
            stage = stages[f"{kind}_{model}"]
            model_args, data_args, args = parse_config(
                (ModelArgs, DataArgs, tool), list(stage.args)
            )
            assert data_args.data == str(run / "data/test.jsonl") and data_args.limit == 50
            assert args.output_dir == str(run / "diagnostics/test" / model / kind)
            assert stage.output == Path(args.output_dir) / f"{kind}.json"
            trained_by = {"bash": "bash_round1", "rac": "rac_round1"}.get(model, model)
            assert trained_by in stage.after
        assert args.step_list() == [1, 2, 3] and args.max_prompt_length == 128
    assert options(stages["eval_test_10_sft"])["--max_prompt_length"] == "128"
    assert "exposure_bias_rac_self_correct" not in stages  # the same model as rac's
    assert len({s.output for s in plan.stages}) == len(plan.stages)
    assert not any("diagnostics" in str(s.output) for s in plan_of().stages)  # off by default


def test_unknown_or_math_only_diagnostics_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown diagnostics \['loss'\]"):
        plan_of("--diagnostics", "exposure_bias,loss")
    with pytest.raises(ValueError, match=r"diagnostics \['error_injection'\]: .*task math"):
        plan_of("--task", "postfix", "--diagnostics", "exposure_bias,error_injection")
    assert "exposure_bias_sft" in {
        s.name for s in plan_of("--task", "postfix", "--diagnostics", "exposure_bias").stages
    }


def test_continuous_batching_reaches_the_greedy_generations_only() -> None:
    plan = plan_of("--continuous_batching", "true", "--dpo_after", "sft")
    generations = [s for s in plan.stages if s.module == "generate"]
    continuous = set()
    for stage in generations:
        (_, _, args) = parse_config((ModelArgs, DataArgs, GenerateArgs), list(stage.args))
        if args.continuous_batching:
            continuous.add(stage.name)
        greedy = not (args.do_sample or args.teacher_forced or args.pair_logps)
        assert args.continuous_batching == greedy, stage.name
    assert {"eval_test_sft", "eval_test_rac_self_correct", "rac_drafts_1"} <= continuous
    assert {"dpo_samples", "bash_predictions_1"} <= {s.name for s in generations} - continuous
    assert not any("--continuous_batching" in s.args for s in plan_of().stages)  # off by default


def test_rac_tokens_reach_the_embedded_tokenizer() -> None:
    stages = {s.name: s for s in plan_of("--rac_tokens", "true").stages}
    (args,) = parse_config((TokenizerArgs,), list(stages["tokenizer"].args))
    assert args.symbols == [CORRECTION_MARKER.strip(), CONFIRMATION]
    assert "--symbols" not in {s.name: s for s in plan_of().stages}["tokenizer"].args  # off
    with pytest.raises(ValueError, match="rac_tokens: an option of the embedded tokenizer"):
        plan_of("--rac_tokens", "true", "--model_name_or_path", "some/model")
