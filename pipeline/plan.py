"""The comparison as a list of stages: what each runs, what marks it done, what it waits for.

The plan is data: `pipeline` runs it stage by stage on this machine, a scheduler can submit it
as dependent jobs. Every path is known before anything runs, so the plan of a half-finished run
is the same plan: a stage is done when its output exists.

The base stages (task, tokenizer, the SFT model every method starts from) come first, then one
stage-builder per method (`METHODS`), each returning the model it trained, then DPO from the
models of the methods in `dpo_after` (`dpo_stages`), then the evaluations and the diagnostics
of every evaluated model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from data_tools import postfix, synthetic_math
from data_tools.postfix import SPLITS as POSTFIX_SPLITS
from data_tools.scoring import CONFIRMATION
from data_tools.synthetic_math import step_ranges
from methods.correction import CORRECTION_MARKER
from pipeline.args import PipelineArgs

DIAGNOSTICS = ("exposure_bias", "error_propagation", "error_injection")
MATH_DIAGNOSTICS = ("error_propagation", "error_injection")  # they parse the math task's steps
DPO_SUFFIX = "+dpo"  # the model "<method>+dpo": DPO from the method's model
GENERATORS = {"math": "data_tools.synthetic_math", "postfix": "data_tools.postfix"}  # by task
DIFFICULTY = {"math": synthetic_math.Difficulty, "postfix": postfix.Difficulty}


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # run as `python -m module` or `deepspeed --module module`
    args: tuple[str, ...]
    output: Path  # exists once the stage has finished (written last, atomically)
    distributed: bool  # started by the deepspeed launcher with the run's processes
    after: tuple[str, ...]  # stages whose outputs this one reads

    def done(self) -> bool:
        return self.output.exists()


@dataclass(frozen=True)
class Plan:
    run_dir: Path
    base_dir: Path  # where data, tokenizer and the SFT base live (run_dir unless reused)
    stages: tuple[Stage, ...]
    evaluations: dict[str, Path]  # generation file on the evaluation split, by reported model
    split_evaluations: dict[str, dict[str, Path]]  # the same on each of eval_splits, by split


def round_folders(method_dir: Path) -> list[Path]:
    """The round folders (`round<r>`, `Builder.round_train`) of a method trained in rounds, in
    round order (round10 after round9)."""
    rounds = [p for p in method_dir.glob("round*") if p.is_dir()]
    return sorted(rounds, key=lambda p: int(p.name.removeprefix("round")))


class Builder:
    """Collects stages; a stage waits for every earlier stage that made a path in its args.
    Knows the run's paths and how to add a training or a generation stage."""

    def __init__(self, args: PipelineArgs) -> None:
        self.args = args
        self.run = Path(args.run_dir)
        self.base = Path(args.base_dir) if args.base_dir else self.run
        self.data = self.base / "data"  # the task made here (or train/validation held out)
        given = Path(args.data_dir) if args.data_dir else self.data
        names = ("train", "validation", "test", *args.eval_split_list())
        self.splits = {s: given / f"{s}.jsonl" for s in names}
        # A task without a validation split (GSM8K) gets one held out from its training data.
        self.holdout = bool(args.data_dir) and not self.splits["validation"].exists()
        if self.holdout:
            self.splits |= {s: self.data / f"{s}.jsonl" for s in ("train", "validation")}
        self.tokenizer = args.model_name_or_path or str(self.base / "tokenizer")
        self.sft = self.base / "sft_base" / "export"
        self.stages: list[Stage] = []
        self.made_by: dict[str, str] = {}

    def add(
        self,
        name: str,
        module: str,
        args: list[str],
        output: Path,
        *,
        distributed: bool = False,
        makes: tuple[Path, ...] = (),
    ) -> None:
        after = tuple(dict.fromkeys(self.made_by[a] for a in args if a in self.made_by))
        self.stages.append(Stage(name, module, tuple(args), output, distributed, after))
        for path in (output, *makes):
            self.made_by[str(path)] = name

    def tracking(self, name: str) -> list[str]:
        """A logging stage's wandb options: the run's project and group, the stage's name."""
        if not self.args.wandb_project:
            return []
        project, group = self.args.wandb_project, self.args.group()
        return ["--wandb_project", project, "--wandb_group", group, "--run_name", name]

    def train(
        self, name: str, out: Path, model: list[str], steps: int, lr: float, *extra: str
    ) -> Path:
        a = self.args
        self.add(
            name,
            "train",
            [
                *model,
                *("--output_dir", str(out), "--max_steps", str(steps)),
                *("--learning_rate", str(lr), "--data", str(self.splits["train"])),
                *("--seed", str(a.seed), "--max_length", str(a.max_length)),
                *("--micro_batch_size", str(a.micro_batch_size)),
                *("--deepspeed_config", a.deepspeed_config, "--task", a.task),
                *("--eval_data", str(self.splits["validation"])),
                *("--max_eval_examples", str(a.max_eval_examples)),
                *self.lora(),
                *self.tracking(name),
                *extra,  # later options win: a method may set its own data or seed
            ],
            out / "export_check.json",
            distributed=True,
            makes=(out / "export",),
        )
        return out / "export"

    def generate(self, name: str, model: Path, split: Path, out: Path, *extra: str) -> Path:
        a = self.args
        options = dict(zip(extra[::2], extra[1::2], strict=True))
        greedy = all(
            options.get(f) != "true" for f in ("--do_sample", "--teacher_forced", "--pair_logps")
        )
        self.add(
            name,
            "generate",
            ["--model_name_or_path", str(model), "--data", str(split), "--task", a.task]
            + ["--output", str(out), "--max_new_tokens", str(a.max_new_tokens)]
            + ["--max_prompt_length", str(a.max_prompt_length)]
            + ["--max_length", str(a.max_length), "--seed", str(a.seed)]
            + (["--continuous_batching", "true"] if a.continuous_batching and greedy else [])
            + [*self.tracking(name), *extra],
            out,
            distributed=True,
        )
        return out

    def lora(self) -> list[str]:
        a = self.args
        if a.lora_rank == 0:
            return []
        return ["--lora_rank", str(a.lora_rank), "--lora_target_modules", a.lora_target_modules]

    def method_train(self, name: str, out: Path, *extra: str) -> Path:
        """A method's training from the SFT base: the same examples, steps and rate for all."""
        a = self.args
        start = ["--model_name_or_path", str(self.sft)]
        return self.train(name, out, start, a.method_steps, a.method_learning_rate, *extra)

    def round_train(self, method: str, r: int, rounds: int, model: Path, *extra: str) -> Path:
        """Round `r` of a method trained in `rounds`: from `model` (the previous round's, the
        first from the SFT base), its share of the methods' steps, with its own seed."""
        a = self.args
        return self.train(
            f"{method}_round{r}",
            self.run / method / f"round{r}",
            ["--model_name_or_path", str(model)],
            a.method_steps // rounds,
            a.method_learning_rate,
            *extra,
            *("--seed", str(a.seed + r - 1)),  # each round its own order (and RAC's samples)
        )

    def schedule(self) -> list[str]:
        """BASH's and SCS's scheduled-sampling options."""
        a = self.args
        return [
            *("--ss_schedule", a.ss_schedule, "--ss_p_max", str(a.ss_p_max)),
            *("--ss_warmup_steps", str(a.ss_warmup_steps)),
            *("--ss_ramp_steps", str(a.ss_ramp_steps)),
            *("--ss_position_ramp", str(a.ss_position_ramp)),
        ]


def base_stages(b: Builder) -> None:
    """The task, the tokenizer and the SFT model every method starts from: made here, or reused
    from base_dir (a finished run) to compare seeds and variants of the methods from one base."""
    a = b.args
    if not a.base_dir and b.holdout:
        b.add(
            "holdout",
            "data_tools.holdout",
            ["--data", str(Path(a.data_dir) / "train.jsonl"), "--output_dir", str(b.data)]
            + ["--validation_size", str(a.validation_size), "--seed", str(a.seed)],
            b.splits["validation"],
            makes=(b.splits["train"],),
        )
    if not a.base_dir and not a.data_dir:
        sizes = dict(kv.split("=") for kv in a.synthetic_sizes.split(","))
        shifted = a.shifted_step_list()
        b.add(
            "data",
            GENERATORS[a.task],
            ["--output_dir", str(b.data), "--seed", str(a.seed)]
            + [arg for k, v in (sizes | difficulty(a)).items() for arg in (f"--{k}", v)]
            + (["--shifted_steps", *shifted] if shifted else []),
            b.data / "difficulty.json",
            makes=tuple(b.splits.values()),
        )
    if a.base_dir:
        return
    if a.model_name_or_path is None:
        b.add(
            "tokenizer",
            "data_tools.tokenizer_training",
            ["--data", str(b.splits["train"]), "--output_dir", b.tokenizer]
            + (["--symbols", CORRECTION_MARKER.strip(), CONFIRMATION] if a.rac_tokens else []),
            Path(b.tokenizer),
        )
        start = ["--model_config", a.model_config, "--tokenizer", b.tokenizer]
    else:
        start = ["--model_name_or_path", a.model_name_or_path]
    b.train(
        "sft_base",
        b.base / "sft_base",
        start,
        a.sft_steps,
        a.sft_learning_rate,
        *("--warmup_steps", "20"),
    )


def sft_stages(b: Builder) -> Path:
    """SFT continued: the baseline with the methods' budget."""
    return b.method_train("sft", b.run / "sft", "--limit", str(b.args.method_examples))


def scs_stages(b: Builder) -> Path:
    """Online scheduled sampling: the model's tokens made at every step, no offline stage."""
    n = str(b.args.method_examples)
    return b.method_train("scs", b.run / "scs", "--limit", n, "--mode", "scs", *b.schedule())


def bash_stages(b: Builder) -> Path:
    """BASH: per round, the newest model's predictions on the method examples, then training
    on them for the round's share of the steps."""
    a, out, n = b.args, b.run / "bash", str(b.args.method_examples)
    model, sampling = b.sft, []
    if a.bash_temperature > 0:
        sampling = ["--do_sample", "true", "--temperature", str(a.bash_temperature)]
    for r in range(1, a.bash_rounds + 1):
        predictions = b.generate(
            f"bash_predictions_{r}",
            model,
            b.splits["train"],
            out / f"round{r}_predictions.jsonl",
            *("--teacher_forced", "true", "--limit", n),
            *sampling,
        )
        model = b.round_train(
            "bash",
            r,
            a.bash_rounds,
            model,
            *("--limit", n, "--mode", "bash", "--predictions", str(predictions)),
            *b.schedule(),
        )
    return model


def rac_stages(b: Builder) -> Path:
    """RAC: per round, the newest model's drafts, the correction samples built from them, then
    training on them for the round's share of the steps (SCoRe and STaSC report that one
    offline round of correction traces collapses into rewriting)."""
    a, out, n = b.args, b.run / "rac", str(b.args.method_examples)
    prompts = a.rac_prompts or round(a.method_examples * a.rac_mix)
    model = b.sft
    for r in range(1, a.rac_rounds + 1):
        drafts = b.generate(
            f"rac_drafts_{r}",
            model,
            b.splits["train"],
            out / f"round{r}_drafts.jsonl",
            *("--limit", str(min(prompts, a.method_examples))),
        )
        samples = out / f"round{r}_train.jsonl"
        b.add(
            f"rac_build_{r}",
            "methods.correction",
            ["--data", str(b.splits["train"]), "--limit", n, "--drafts", str(drafts)]
            + ["--task", a.task, "--tokenizer", str(b.sft), "--output", str(samples)]
            + ["--variant", a.rac_variant, "--mix", str(a.rac_mix)]
            + ["--right_drafts", a.rac_right_drafts]
            + ["--seed", str(a.seed + r - 1), "--max_length", str(a.max_length)],
            samples,
        )
        model = b.round_train(
            "rac",
            r,
            a.rac_rounds,
            model,
            *("--mode", "rac", "--data", str(samples), "--data_format", "plain"),
        )
    return model


def preference_pairs(b: Builder, name: str, split: str, prompts: int) -> Path:
    """Pairs from the SFT base's own samples on the first `prompts` of a split: several sampled
    answers per prompt, scored; chosen a right one (or the reference), rejected a wrong one."""
    a, out = b.args, b.run / "dpo"
    samples = b.generate(
        f"dpo_{name}samples",
        b.sft,
        b.splits[split],
        out / f"{name}samples.jsonl",
        *("--do_sample", "true", "--num_samples", str(a.dpo_samples_per_prompt)),
        *("--limit", str(prompts)),
    )
    pairs = out / f"{name}pairs.jsonl"
    b.add(
        f"dpo_{name}pairs",
        "methods.preference_pairs",
        ["--data", str(b.splits[split]), "--limit", str(prompts), "--samples", str(samples)]
        + ["--task", a.task, "--tokenizer", str(b.sft), "--output", str(pairs)],
        pairs,
    )
    return pairs


def dpo_stages(b: Builder, models: dict[str, Path]) -> dict[str, Path]:
    """DPO from each of the `dpo_after` methods' models ("<method>+dpo"): one set of pairs for
    all (training prompts; held-out pairs from validation prompts for the preference accuracy),
    and per method its model's log-probabilities of them, the reference that its DPO, of the
    same budget for every method, starts from."""
    a = b.args
    if not a.dpo_list():
        return {}
    prompts = min(a.dpo_prompts or a.method_examples, a.method_examples)
    pairs = preference_pairs(b, "", "train", prompts)
    eval_pairs = preference_pairs(b, "eval_", "validation", a.max_eval_examples)
    trained = {}
    for method in a.dpo_list():
        name, start = method + DPO_SUFFIX, models[method]
        reference, eval_reference = (
            b.generate(
                f"dpo_{kind}reference_{method}",
                start,
                data,
                b.run / name / f"{kind}reference.jsonl",
                *("--pair_logps", "true"),
            )
            for kind, data in (("", pairs), ("eval_", eval_pairs))
        )
        trained[name] = b.train(
            name,
            b.run / name,
            ["--model_name_or_path", str(start)],
            a.dpo_steps,
            a.dpo_learning_rate,
            *("--mode", "dpo", "--dpo_beta", str(a.dpo_beta), "--data", str(pairs)),
            *("--reference_logps", str(reference), "--eval_data", str(eval_pairs)),
            *("--eval_reference_logps", str(eval_reference)),
        )
    return trained


METHODS: dict[str, Callable[[Builder], Path]] = {
    "sft": sft_stages,
    "bash": bash_stages,
    "rac": rac_stages,
    "scs": scs_stages,
}


def base_models(b: Builder) -> dict[str, Path]:
    """The models every run evaluates beside its methods': the SFT base, and a pretrained start
    (its zero-shot row)."""
    models = {"sft_base": b.sft}
    if b.args.model_name_or_path:
        models = {"pretrained": Path(b.args.model_name_or_path), **models}
    return models


def evaluation_stages(b: Builder, models: dict[str, Path]) -> dict[str, dict[str, Path]]:
    """Every model greedy on the report split and on each of eval_splits (the base models too),
    RAC also drafting then correcting; with wandb, each evaluation scored into its own run. The
    generation files by split, then by model."""
    a = b.args
    limit = ["--limit", str(a.report_examples)] if a.report_examples else []
    evaluations = {}
    for name in (a.report_split, *a.eval_split_list()):
        split = b.splits[name]
        on_split = {
            model: b.generate(
                f"eval_{name}_{model}",
                path,
                split,
                b.base / "eval" / name / f"{model}.jsonl",
                *limit,
            )
            for model, path in base_models(b).items()
        }
        for method, model in models.items():
            on_split[method] = b.generate(
                f"eval_{name}_{method}",
                model,
                split,
                b.run / "eval" / name / f"{method}.jsonl",
                *limit,
            )
        if "rac" in models:
            on_split["rac_self_correct"] = b.generate(
                f"eval_{name}_rac_self_correct",
                models["rac"],
                split,
                b.run / "eval" / name / "rac_self_correct.jsonl",
                *("--self_correct", "true"),
                *limit,
            )
        if a.wandb_project:
            for model, path in on_split.items():
                stage = f"score_{name}_{model}"
                b.add(
                    stage,
                    "generate.score",
                    ["--generations", str(path), "--task", a.task, *b.tracking(stage)],
                    path.with_suffix(".summary.json"),
                )
        evaluations[name] = on_split
    return evaluations


def diagnostic_output(root: Path, split: str, model: str, diagnostic: str) -> Path:
    """Where a run (`root`) keeps a diagnostic's json of one model on one split (its other files
    beside it)."""
    return root / "diagnostics" / split / model / diagnostic / f"{diagnostic}.json"


def diagnostic_stages(
    b: Builder, models: dict[str, Path], evaluations: dict[str, dict[str, Path]]
) -> None:
    """The `diagnostics` of every evaluated model, each written beside its evaluations
    (`<run>/diagnostics/<split>/<model>/<diagnostic>/`): error_propagation reads every evaluated
    split's generations (the self-correcting RAC's too); exposure_bias and error_injection run
    the model on the first `diagnostic_examples` of the report split."""
    a = b.args
    wanted = a.diagnostic_list()
    if "error_propagation" in wanted:
        for split, on_split in evaluations.items():
            for model, generations in on_split.items():
                root = generations.parent.parent.parent  # <root>/eval/<split>/<model>.jsonl
                out = diagnostic_output(root, split, model, "error_propagation")
                b.add(
                    f"error_propagation_{split}_{model}",
                    "generate.error_propagation",
                    ["--generations", str(generations), "--output_dir", str(out.parent)],
                    out,
                )
    split = b.splits[a.report_split]
    on_data = ["--data", str(split), "--task", a.task, "--limit", str(a.diagnostic_examples)]
    on_data += ["--max_length", str(a.max_length)]
    for model, path in (base_models(b) | models).items():
        root = evaluations[a.report_split][model].parent.parent.parent
        if "exposure_bias" in wanted:
            out = diagnostic_output(root, a.report_split, model, "exposure_bias")
            b.add(
                f"exposure_bias_{model}",
                "generate.exposure_bias",
                ["--model_name_or_path", str(path), *on_data, "--output_dir", str(out.parent)],
                out,
            )
        if "error_injection" in wanted:
            out = diagnostic_output(root, a.report_split, model, "error_injection")
            b.add(
                f"error_injection_{model}",
                "generate.error_injection",
                ["--model_name_or_path", str(path), *on_data, "--inject_at", "1,2,3"]
                + ["--max_new_tokens", str(a.max_new_tokens), "--seed", str(a.seed)]
                + ["--max_prompt_length", str(a.max_prompt_length)]
                + ["--output_dir", str(out.parent)],
                out,
            )


def difficulty(args: PipelineArgs) -> dict[str, str]:
    """The task_difficulty knobs by name, each a field of the task's generator's `Difficulty`
    (its values the generator checks)."""
    if not args.task_difficulty:
        return {}
    knobs = [kv.partition("=") for kv in args.task_difficulty.split(",")]
    known = [f.name for f in fields(DIFFICULTY[args.task])]
    if bad := [k for k, eq, v in knobs if k not in known or not eq or not v]:
        raise ValueError(
            f"task_difficulty {args.task_difficulty!r}: {bad} are not key=value pairs of the "
            f"{args.task} generator's knobs {known}"
        )
    return {k: v for k, _, v in knobs}


def generated_splits(args: PipelineArgs) -> list[str]:
    """The splits the task's generator writes (the synthetic math's shifted ones included)."""
    if args.task == "postfix":
        return list(POSTFIX_SPLITS)
    return ["train", "validation", "test", *step_ranges(args.shifted_step_list())]


def check_task(args: PipelineArgs) -> None:
    """A task the pipeline makes data for, shifted steps for its synthetic math only, and extra
    evaluation splits that are neither the report split nor twice named, nor (when this run
    makes the data) splits the generator does not write."""
    if args.task not in GENERATORS:
        raise ValueError(f"task {args.task!r}: the pipeline runs the tasks {list(GENERATORS)}")
    if unknown := set(args.diagnostic_list()) - set(DIAGNOSTICS):
        raise ValueError(f"unknown diagnostics {sorted(unknown)}; known: {list(DIAGNOSTICS)}")
    if args.task != "math" and (
        math_only := [d for d in args.diagnostic_list() if d in MATH_DIAGNOSTICS]
    ):
        raise ValueError(
            f"diagnostics {math_only}: they read the synthetic math's steps (task math)"
        )
    if args.shifted_steps and (args.task != "math" or args.data_dir):
        raise ValueError("shifted_steps: an option of the synthetic math (task math, no data_dir)")
    if args.task_difficulty and args.data_dir:
        raise ValueError("task_difficulty: an option of the generated tasks (no data_dir)")
    difficulty(args)
    extra = args.eval_split_list()
    if args.report_split in extra or len(set(extra)) < len(extra):
        raise ValueError(
            f"eval_splits {extra}: name each split once, and not the report split "
            f"{args.report_split!r}"
        )
    if not args.data_dir and not args.base_dir:
        written = generated_splits(args)
        if unknown := [s for s in extra if s not in written]:
            shifted = " (shifted_steps adds test_<steps> splits)" if args.task == "math" else ""
            raise ValueError(
                f"eval_splits {unknown}: {GENERATORS[args.task]} writes {written}{shifted}"
            )


def build_plan(args: PipelineArgs) -> Plan:
    unknown = set(args.method_list()) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; known: {list(METHODS)}")
    without = [m for m in args.dpo_list() if m not in args.method_list()]
    if without:
        raise ValueError(f"dpo_after {without}: DPO continues a method's model; add it to methods")
    if args.model_name_or_path is None and args.model_config is None and not args.base_dir:
        raise ValueError("give model_name_or_path (a pretrained model) or model_config (a new one)")
    if args.rac_tokens and args.model_name_or_path:
        raise ValueError("rac_tokens: an option of the embedded tokenizer (no model_name_or_path)")
    for option in ("bash_rounds", "rac_rounds"):
        rounds = getattr(args, option)
        if rounds < 1 or args.method_steps % rounds:
            raise ValueError(
                f"{option} {rounds}: method_steps ({args.method_steps}) must split into "
                "that many equal rounds, so that every method gets the same budget"
            )
    check_task(args)
    b = Builder(args)
    base_stages(b)
    models = {method: METHODS[method](b) for method in args.method_list()}
    models |= dpo_stages(b, models)
    evaluations = evaluation_stages(b, models)
    diagnostic_stages(b, models, evaluations)
    report = evaluations.pop(args.report_split)
    return Plan(b.run, b.base, tuple(b.stages), report, evaluations)
