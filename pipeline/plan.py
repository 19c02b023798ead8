"""The comparison as a list of stages: what each runs, what marks it done, what it waits for.

The plan is data: `pipeline` runs it stage by stage on this machine, a scheduler can submit it
as dependent jobs. Every path is known before anything runs, so the plan of a half-finished run
is the same plan: a stage is done when its output exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.args import PipelineArgs


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


class _Builder:
    """Collects stages; a stage waits for every earlier stage that made a path in its args."""

    def __init__(self) -> None:
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


def build_plan(args: PipelineArgs) -> Plan:
    run = Path(args.run_dir)
    base = Path(args.base_dir) if args.base_dir else run
    data = Path(args.data_dir) if args.data_dir else base / "data"
    splits = {s: data / f"{s}.jsonl" for s in ("train", "validation", "test")}
    tokenizer = args.model_name_or_path or str(base / "tokenizer")
    sft = base / "sft_base" / "export"
    n = str(args.method_examples)
    plan = _Builder()

    def tracking(name: str) -> list[str]:
        """A logging stage's wandb options: the run's project and group, the stage's name."""
        if not args.wandb_project:
            return []
        project, group = args.wandb_project, args.group()
        return ["--wandb_project", project, "--wandb_group", group, "--run_name", name]

    # The task, the tokenizer and the SFT model every method starts from: made here, or reused
    # from base_dir (a finished run) to compare seeds and variants of the methods from one base.
    if not args.base_dir and not args.data_dir:
        sizes = dict(kv.split("=") for kv in args.synthetic_sizes.split(","))
        plan.add(
            "data",
            "data_tools.synthetic_math",
            ["--out", str(data), "--seed", str(args.seed)]
            + [a for k, v in sizes.items() for a in (f"--{k}", v)],
            data / "difficulty.json",
            makes=tuple(splits.values()),
        )
    if not args.base_dir and args.model_name_or_path is None:
        plan.add(
            "tokenizer",
            "data_tools.tokenizer_training",
            ["--data", str(splits["train"]), "--out", tokenizer],
            Path(tokenizer),
        )

    def train(name: str, out: Path, model: list[str], steps: int, lr: float, *extra: str) -> Path:
        plan.add(
            name,
            "train",
            [
                *model,
                "--output_dir",
                str(out),
                "--max_steps",
                str(steps),
                "--learning_rate",
                str(lr),
                "--data",
                str(splits["train"]),
                "--seed",
                str(args.seed),
                "--max_length",
                str(args.max_length),
                "--micro_batch_size",
                str(args.micro_batch_size),
                "--deepspeed_config",
                args.deepspeed_config,
                "--task",
                "math",
                "--eval_data",
                str(splits["validation"]),
                "--max_eval_examples",
                "256",
                *tracking(name),
                *extra,  # later options win: a method may set its own data or seed
            ],
            out / "export_check.json",
            distributed=True,
            makes=(out / "export",),
        )
        return out / "export"

    def generate(name: str, model: Path, split: Path, out: Path, *extra: str) -> Path:
        plan.add(
            name,
            "generate",
            ["--model_name_or_path", str(model), "--data", str(split), "--task", "math"]
            + ["--output", str(out), "--max_new_tokens", str(args.max_new_tokens)]
            + ["--max_length", str(args.max_length), "--seed", str(args.seed)]
            + [*tracking(name), *extra],
            out,
            distributed=True,
        )
        return out

    if not args.base_dir:
        start = (
            ["--model_name_or_path", args.model_name_or_path]
            if args.model_name_or_path
            else ["--model_config", args.model_config, "--tokenizer", tokenizer]
        )
        train(
            "sft_base",
            base / "sft_base",
            start,
            args.sft_steps,
            args.sft_learning_rate,
            *("--warmup_steps", "20"),
        )

    # Every method: the same first `method_examples` training examples, the same steps.
    schedule = ["--ss_schedule", args.ss_schedule, "--ss_p_max", str(args.ss_p_max)]
    schedule += ["--ss_warmup_steps", str(args.ss_warmup_steps)]
    schedule += ["--ss_ramp_steps", str(args.ss_ramp_steps)]
    steps, lr = args.method_steps, args.method_learning_rate
    from_sft = ["--model_name_or_path", str(sft)]
    models: dict[str, Path] = {}
    for method in args.method_list():
        out = run / method
        if method == "sft":
            models[method] = train(method, out, from_sft, steps, lr, "--limit", n)
        elif method == "scs":
            models[method] = train(
                method, out, from_sft, steps, lr, "--limit", n, "--mode", "scs", *schedule
            )
        elif method == "bash":
            model, sampling = sft, []
            if args.bash_temperature > 0:
                sampling = ["--do_sample", "true", "--temperature", str(args.bash_temperature)]
            for r in range(1, args.bash_rounds + 1):
                # Each round's tokens come from the newest model, the one this round trains.
                predictions = generate(
                    f"bash_predictions_{r}",
                    model,
                    splits["train"],
                    out / f"round{r}_predictions.jsonl",
                    *("--mode", "teacher_forced", "--limit", n),
                    *sampling,
                )
                model = train(
                    f"bash_round{r}",
                    out / f"round{r}",
                    ["--model_name_or_path", str(model)],
                    steps // args.bash_rounds,
                    lr,
                    *("--limit", n, "--mode", "bash", "--predictions", str(predictions)),
                    *schedule,
                    *("--seed", str(args.seed + r - 1)),  # each round its own order
                )
            models[method] = model
        elif method == "rac":
            prompts = args.rac_prompts or round(args.method_examples * args.rac_mix)
            drafts = generate(
                "rac_drafts",
                sft,
                splits["train"],
                out / "drafts.jsonl",
                *("--limit", str(min(prompts, args.method_examples))),
            )
            samples = out / "train.jsonl"
            plan.add(
                "rac_build",
                "data_tools.correction",
                ["--data", str(splits["train"]), "--limit", n, "--drafts", str(drafts)]
                + ["--tokenizer", str(sft), "--out", str(samples)]
                + ["--variant", args.rac_variant, "--mix", str(args.rac_mix)]
                + ["--seed", str(args.seed), "--max-length", str(args.max_length)]
                + (["--only-wrong"] if args.rac_only_wrong else []),
                samples,
            )
            models[method] = train(
                method,
                out,
                from_sft,
                steps,
                lr,
                *("--mode", "rac", "--data", str(samples), "--data_format", "plain"),
            )

    # Evaluation on the chosen split: every model greedy, RAC also drafting then correcting.
    split, name = splits[args.eval_split], args.eval_split
    evaluations = {
        "sft_base": generate(
            f"eval_{name}_sft_base", sft, split, base / "eval" / name / "sft_base.jsonl"
        )
    }
    for method, model in models.items():
        evaluations[method] = generate(
            f"eval_{name}_{method}", model, split, run / "eval" / name / f"{method}.jsonl"
        )
    if "rac" in models:
        evaluations["rac_self_correct"] = generate(
            f"eval_{name}_rac_self_correct",
            models["rac"],
            split,
            run / "eval" / name / "rac_self_correct.jsonl",
            "--self_correct",
            "true",
        )
    if args.wandb_project:  # each evaluation's scores and sample generations, in wandb too
        for model, path in evaluations.items():
            stage = f"score_{name}_{model}"
            plan.add(
                stage,
                "generate.score",
                [str(path), "--task", "math", *tracking(stage)],
                path.with_suffix(".summary.json"),
            )
    return Plan(run, base, tuple(plan.stages), evaluations)
