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
            result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
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

    # The task and the tokenizer.
    data = Path(args.data_dir) if args.data_dir else run / "data"
    if not args.data_dir:
        sizes = dict(kv.split("=") for kv in args.synthetic_sizes.split(","))
        size_args = [a for k, v in sizes.items() for a in (f"--{k}", v)]
        stages.run(
            "data",
            data / "difficulty.json",
            "data_tools.synthetic_math",
            ["--out", str(data), "--seed", str(args.seed), *size_args],
        )
    tokenizer = args.model_name_or_path
    if tokenizer is None:
        tokenizer = str(run / "tokenizer")
        stages.run(
            "tokenizer",
            run / "tokenizer",
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
        "--seed",
        str(args.seed),
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

    # The SFT model every method starts from.
    start = (
        ["--model_name_or_path", args.model_name_or_path]
        if args.model_name_or_path
        else ["--model_config", args.model_config, "--tokenizer", tokenizer]
    )
    sft = train(
        "sft_base",
        run / "sft_base",
        start,
        args.sft_steps,
        args.sft_learning_rate,
        "--warmup_steps",
        "20",
    )

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
    models: dict[str, Path] = {"sft_base": sft}
    for method in methods:
        steps, lr, out = args.method_steps, args.method_learning_rate, run / method
        if method == "sft":
            models[method] = train(method, out, ["--model_name_or_path", str(sft)], steps, lr)
        elif method == "scs":
            models[method] = train(
                method,
                out,
                ["--model_name_or_path", str(sft)],
                steps,
                lr,
                "--mode",
                "scs",
                *schedule,
            )
        elif method == "bash":
            model = sft
            for r in range(1, args.bash_rounds + 1):
                # Each round's tokens come from the newest model, the one this round trains on.
                predictions = generate(
                    f"bash_predictions_{r}",
                    model,
                    data / "train.jsonl",
                    out / f"round{r}_predictions.jsonl",
                    "--mode",
                    "teacher_forced",
                )
                model = train(
                    f"bash_round{r}",
                    out / f"round{r}",
                    ["--model_name_or_path", str(model)],
                    steps // args.bash_rounds,
                    lr,
                    "--mode",
                    "bash",
                    "--predictions",
                    str(predictions),
                    *schedule,
                )
            models[method] = model
        elif method == "rac":
            drafts = generate(
                "rac_drafts",
                sft,
                data / "train.jsonl",
                out / "drafts.jsonl",
                "--limit",
                str(args.rac_prompts),
            )
            samples = out / "train.jsonl"
            stages.run(
                "rac_build",
                samples,
                "data_tools.correction",
                [
                    "--data",
                    str(data / "train.jsonl"),
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
                ["--model_name_or_path", str(sft)],
                steps,
                lr,
                "--mode",
                "rac",
                "--data",
                str(samples),
                "--data_format",
                "plain",
            )

    # Evaluation on the chosen split, touched once per model and inference mode.
    split = data / f"{args.eval_split}.jsonl"
    evaluations = {
        name: generate(f"eval_{name}", model, split, run / "eval" / f"{name}.jsonl")
        for name, model in models.items()
    }
    if "rac" in models:
        evaluations["rac_self_correct"] = generate(
            "eval_rac_self_correct",
            models["rac"],
            split,
            run / "eval" / "rac_self_correct.jsonl",
            "--self_correct",
            "true",
        )
    report(run, evaluations, stages.timings)


if __name__ == "__main__":
    main()
