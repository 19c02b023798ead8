"""Run the whole comparison into one run folder: data, tokenizer, SFT, the SFT model's own tokens,
RAC samples, then SFT (continued), BASH, RAC and SCS training from the SFT model, evaluation,
and a report (table, results.json, plot).

    python -m pipeline --config configs/compare_demo.yaml

Each stage is a real `python -m` / `deepspeed --module` process whose output is written
atomically; a stage whose output is complete is skipped, so a rerun after a crash resumes where
it stopped. Logs: <run_dir>/logs/<stage>.log; timings: <run_dir>/timings.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from data_tools.atomic import write_json
from pipeline.args import PipelineArgs
from pipeline.report import report
from runtime.config import parse_config
from runtime.distributed import free_port


class Stages:
    """Runs each stage once: skipped when its output exists, timed when it runs."""

    def __init__(self, run_dir: Path, nproc: int):
        self.run_dir, self.nproc = run_dir, nproc
        # The processes of a stage share the machine's cores rather than each taking all of them.
        threads = str(max(1, (os.cpu_count() or 1) // nproc))
        self.env = {"OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false", **os.environ}
        self.timings_file = run_dir / "timings.json"
        self.timings = (
            json.loads(self.timings_file.read_text()) if self.timings_file.exists() else {}
        )

    def run(
        self, name: str, output: Path, module: str, args: list[str], distributed: bool = False
    ) -> None:
        if output.exists():
            print(f"[done before] {name}", flush=True)
            return
        if distributed and self.nproc > 1:
            launcher = [
                "deepspeed",
                "--num_gpus",
                str(self.nproc),
                "--master_port",
                str(free_port()),
            ]
            command = [*launcher, "--module", module, *args]
        else:
            command = [sys.executable, "-m", module, *args]
        log = self.run_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"[running] {name} (log: {log})", flush=True)
        started = time.perf_counter()
        with log.open("w") as f:
            result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=self.env)
        if result.returncode != 0 or not output.exists():
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
            raise SystemExit(
                f"stage {name} failed (exit {result.returncode}); the end of {log}:\n{tail}"
            )
        self.timings[name] = time.perf_counter() - started
        write_json(self.timings_file, self.timings)


def main() -> None:
    (args,) = parse_config((PipelineArgs,))
    run = Path(args.run_dir)
    methods = args.method_list()
    stages = Stages(run, args.nproc)
    n = str(args.method_examples)

    # The task, the tokenizer and the SFT model every method starts from: made here, or reused
    # from base_dir (a finished run) to compare seeds and variants of the methods from one base.
    base = Path(args.base_dir) if args.base_dir else run
    data = Path(args.data_dir) if args.data_dir else base / "data"
    tokenizer = args.model_name_or_path or str(base / "tokenizer")
    sft = base / "sft_base" / "export"
    if args.base_dir:
        for needed in (data / "train.jsonl", Path(tokenizer), base / "sft_base/export_check.json"):
            if not needed.exists():
                raise SystemExit(f"base_dir {base}: {needed} is missing; run the base first")
    else:
        if not args.data_dir:
            sizes = dict(kv.split("=") for kv in args.synthetic_sizes.split(","))
            size_args = [a for k, v in sizes.items() for a in (f"--{k}", v)]
            stages.run(
                "data",
                data / "difficulty.json",
                "data_tools.synthetic_math",
                ["--out", str(data), "--seed", str(args.seed), *size_args],
            )
        if args.model_name_or_path is None:
            stages.run(
                "tokenizer",
                Path(tokenizer),
                "data_tools.tokenizer_training",
                ["--data", str(data / "train.jsonl"), "--out", tokenizer],
            )

    common = [
        "--max_length",
        str(args.max_length),
        "--micro_batch_size",
        str(args.micro_batch_size),
        "--deepspeed_config",
        args.deepspeed_config,
        "--task",
        "math",
        "--eval_data",
        str(data / "validation.jsonl"),
        "--max_eval_examples",
        "256",
    ]

    def train(name: str, out: Path, model: list[str], steps: int, lr: float, *extra: str) -> Path:
        stages.run(
            name,
            out / "export_check.json",
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
                str(data / "train.jsonl"),
                "--seed",
                str(args.seed),
                *common,
                *extra,
            ],
            distributed=True,
        )
        return out / "export"

    def generate(name: str, model: Path, split_file: Path, out: Path, *extra: str) -> Path:
        stages.run(
            name,
            out,
            "generate",
            [
                "--model_name_or_path",
                str(model),
                "--data",
                str(split_file),
                "--task",
                "math",
                "--output",
                str(out),
                "--max_new_tokens",
                str(args.max_new_tokens),
                "--max_length",
                str(args.max_length),
                "--seed",
                str(args.seed),
                *extra,
            ],
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
            "--warmup_steps",
            "20",
        )

    # Every method: the same first `method_examples` training examples, the same steps.
    schedule = [
        "--ss_schedule",
        args.ss_schedule,
        "--ss_p_max",
        str(args.ss_p_max),
        "--ss_warmup_steps",
        str(args.ss_warmup_steps),
        "--ss_ramp_steps",
        str(args.ss_ramp_steps),
    ]
    steps, lr = args.method_steps, args.method_learning_rate
    models: dict[str, Path] = {}
    for method in methods:
        out, from_sft = run / method, ["--model_name_or_path", str(sft)]
        if method == "sft":
            models[method] = train(method, out, from_sft, steps, lr, "--limit", n)
        elif method == "scs":
            models[method] = train(
                method, out, from_sft, steps, lr, "--limit", n, "--mode", "scs", *schedule
            )
        elif method == "bash":
            model = sft
            for r in range(1, args.bash_rounds + 1):
                # Each round's tokens come from the newest model, the one this round trains.
                predictions = generate(
                    f"bash_predictions_{r}",
                    model,
                    data / "train.jsonl",
                    out / f"round{r}_predictions.jsonl",
                    "--mode",
                    "teacher_forced",
                    "--limit",
                    n,
                )
                model = train(
                    f"bash_round{r}",
                    out / f"round{r}",
                    ["--model_name_or_path", str(model)],
                    steps // args.bash_rounds,
                    lr,
                    "--limit",
                    n,
                    "--mode",
                    "bash",
                    "--predictions",
                    str(predictions),
                    *schedule,
                    # Each round its own order of the examples.
                    "--seed",
                    str(args.seed + r - 1),
                )
            models[method] = model
        elif method == "rac":
            prompts = args.rac_prompts or round(args.method_examples * args.rac_mix)
            drafts = generate(
                "rac_drafts",
                sft,
                data / "train.jsonl",
                out / "drafts.jsonl",
                "--limit",
                str(min(prompts, args.method_examples)),
            )
            samples = out / "train.jsonl"
            stages.run(
                "rac_build",
                samples,
                "data_tools.correction",
                [
                    "--data",
                    str(data / "train.jsonl"),
                    "--limit",
                    n,
                    "--drafts",
                    str(drafts),
                    "--tokenizer",
                    str(sft),
                    "--out",
                    str(samples),
                    "--variant",
                    args.rac_variant,
                    "--mix",
                    str(args.rac_mix),
                    "--seed",
                    str(args.seed),
                    "--max-length",
                    str(args.max_length),
                    *(["--only-wrong"] if args.rac_only_wrong else []),
                ],
            )
            models[method] = train(
                method,
                out,
                from_sft,
                steps,
                lr,
                "--mode",
                "rac",
                "--data",
                str(samples),
                "--data_format",
                "plain",
            )

    # Evaluation on the chosen split: every model greedy, RAC also drafting then correcting.
    split, name = data / f"{args.eval_split}.jsonl", args.eval_split
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
    base_timings = base / "timings.json"
    timings = json.loads(base_timings.read_text()) if args.base_dir else {}
    report(run, base, evaluations, {**timings, **stages.timings})


if __name__ == "__main__":
    main()
