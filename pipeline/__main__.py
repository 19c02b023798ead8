"""Run the whole comparison into one run folder: data, tokenizer, SFT, the SFT model's own tokens,
RAC samples, then SFT (continued), BASH, RAC and SCS training from the SFT model, evaluation,
and a report (table, results.json, plots).

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
from dataclasses import asdict
from pathlib import Path

from data_tools.atomic import write_json
from data_tools.config import parse_config
from pipeline.args import PipelineArgs
from pipeline.plan import Stage, build_plan
from pipeline.report import report, track
from runtime.distributed import free_port
from runtime.tracking import Tracker


def launch(stage: Stage, nproc: int) -> list[str]:
    """The command line of a stage: the deepspeed launcher for a distributed one."""
    if stage.distributed and nproc > 1:
        launcher = ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(free_port())]
        return [*launcher, "--module", stage.module, *stage.args]
    return [sys.executable, "-m", stage.module, *stage.args]


def run_stage(stage: Stage, nproc: int, log: Path) -> float:
    """Run one stage to its end, its output in `log`; its wall time in seconds."""
    # The processes of a stage share the machine's cores rather than each taking all of them.
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    env = {"OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false", **os.environ}
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[running] {stage.name} (log: {log})", flush=True)
    started = time.perf_counter()
    with log.open("w") as f:
        result = subprocess.run(launch(stage, nproc), stdout=f, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0 or not stage.done():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(
            f"stage {stage.name} failed (exit {result.returncode}); the end of {log}:\n{tail}"
        )
    return time.perf_counter() - started


def main() -> None:
    (args,) = parse_config((PipelineArgs,))
    plan = build_plan(args)
    if args.base_dir:
        for needed in ("data/train.jsonl", "sft_base/export_check.json"):
            if not (plan.base_dir / needed).exists():
                raise SystemExit(
                    f"base_dir: {plan.base_dir / needed} is missing; run the base first"
                )
    timings_file = plan.run_dir / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    for stage in plan.stages:
        if stage.done():
            print(f"[done before] {stage.name}", flush=True)
            continue
        timings[stage.name] = run_stage(
            stage, args.nproc, plan.run_dir / "logs" / f"{stage.name}.log"
        )
        write_json(timings_file, timings)
    base_timings = plan.base_dir / "timings.json"
    if args.base_dir and base_timings.exists():
        timings = {**json.loads(base_timings.read_text()), **timings}
    rows = report(plan.run_dir, plan.base_dir, plan.evaluations, timings)
    with Tracker(
        args.wandb_project, str(plan.run_dir), asdict(args), "report", "report", args.group()
    ) as tracker:
        track(rows, plan.run_dir, tracker)


if __name__ == "__main__":
    main()
