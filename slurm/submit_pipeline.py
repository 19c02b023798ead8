"""Submit the pipeline to SLURM: one job per stage that is not done, chained by dependencies.

    python -m slurm.submit_pipeline --config configs/compare_demo.yaml \\
        --nodes 2 --gpus_per_node 8 --sbatch_args="--account=me --time=4:00:00"

Training and generation stages run on N nodes x G GPUs through slurm/train.sbatch and
slurm/generate.sbatch, the others as one process (slurm/task.sbatch). Each job waits
(`afterok`) for the jobs of the stages whose outputs it reads; when one of those fails,
`--kill-on-invalid-dep=yes` cancels it, and so on down the chain. A last job writes the
report (slurm/report.py: `python -m pipeline` with the same options, with the stages' wall
times that the jobs recorded). A stage whose output exists is not submitted, so a resubmission runs only what is left,
and nothing (not even the report) once everything is done; while jobs of an earlier submission
are still queued or running, it submits nothing (two jobs would write the same stage). Run it from
the repository root, as the jobs run there. Logs and the job ids: <run_dir>/logs/slurm/.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from data_tools.atomic import write_json
from data_tools.config import parse_config
from data_tools.errors import run_tool
from pipeline.args import PipelineArgs
from pipeline.plan import Stage, build_plan


def sbatch(script: str, args: list[str] | tuple[str, ...], options: list[str], env: dict) -> str:
    """Submit one job; its id."""
    command = ["sbatch", "--parsable", *options, script, *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"sbatch failed: {shlex.join(command)}\n{result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]  # "id" or "id;cluster"


def still_queued(job_ids: list[str]) -> list[str]:
    """The jobs among these that are pending or running."""
    result = subprocess.run(["squeue", "--me", "-h", "-o", "%i"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"squeue failed: {result.stderr.strip()}")
    queued = set(result.stdout.split())
    return [j for j in job_ids if j in queued]


def resources(stage: Stage, nodes: int, ranks_per_node: int, gpus: bool) -> list[str]:
    if not stage.distributed:
        return ["--nodes=1", "--ntasks=1"]
    gres = [f"--gpus-per-node={ranks_per_node}"] if gpus else []
    return [f"--nodes={nodes}", f"--ntasks-per-node={ranks_per_node}", *gres]


@dataclass
class SubmitArgs:
    """The submitter's own options; every other option is the pipeline's (python -m pipeline)."""

    nodes: int = field(default=1, metadata={"help": "nodes per train/generate job"})
    gpus_per_node: int | None = field(
        default=None,
        metadata={"help": "ranks per node, one per GPU (default: the pipeline's nproc)"},
    )
    cpu: bool = field(default=False, metadata={"help": "ranks on CPUs: ask SLURM for no GPUs"})
    sbatch_args: str = field(
        default="",
        metadata={
            "help": "options for every job, as one string: "
            '--sbatch_args="--account=A --time=2:00:00"'
        },
    )

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {self.nodes}")
        if self.gpus_per_node is not None and self.gpus_per_node < 1:
            raise ValueError(f"gpus_per_node must be at least 1, got {self.gpus_per_node}")


def pipeline_argv(argv: list[str]) -> list[str]:
    """`argv` without the submitter's options: the pipeline's, which the report job is given
    (`python -m slurm.report` reads them as `python -m pipeline` does, config file included)."""
    parser = HfArgumentParser(SubmitArgs, allow_abbrev=False, add_help=False)
    _, rest = parser.parse_known_args(argv)
    if "--config" in rest and rest.index("--config") + 1 < len(rest):
        path = Path(rest[rest.index("--config") + 1])
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        mine = sorted(set(values) & {f.name for f in fields(SubmitArgs)})
        if mine:
            raise SystemExit(
                f"{path}: {mine} are the submitter's options, not the pipeline's: give them on the "
                "command line (the report job reads this file as a pipeline config)"
            )
    return rest


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, own = parse_config((PipelineArgs, SubmitArgs), argv)
    rest = pipeline_argv(argv)
    plan = build_plan(args)
    if args.base_dir and not (plan.base_dir / "sft_base" / "export_check.json").exists():
        raise SystemExit(f"base_dir: {plan.base_dir} has no finished SFT base; run the base first")

    logs = plan.run_dir / "logs" / "slurm"
    jobs_file = logs / "jobs.json"  # {stage: job id} of the latest submission
    if jobs_file.exists():
        earlier = json.loads(jobs_file.read_text())
        if queued := still_queued(list(earlier.values())):
            names = ", ".join(f"{n} ({j})" for n, j in earlier.items() if j in queued)
            raise SystemExit(
                f"{plan.run_dir}: jobs of an earlier submission are still queued or running: "
                f"{names}; wait for them or scancel them, then submit again"
            )
    logs.mkdir(parents=True, exist_ok=True)
    # sbatch passes its environment to the jobs: where to log, where to record stage wall times
    env = {**os.environ, "JOB_LOGS": str(logs), "STAGE_TIMES": str(logs / "stage_times")}
    ranks_per_node = own.gpus_per_node or args.nproc
    common = [f"--output={logs}/%x-%j.out", *shlex.split(own.sbatch_args)]
    job_ids: dict[str, str] = {}
    for stage in plan.stages:
        if stage.done():
            print(f"[done before] {stage.name}", flush=True)
            continue
        after = [job_ids[name] for name in stage.after if name in job_ids]
        options = [f"--job-name={stage.name}", *common]
        options += resources(stage, own.nodes, ranks_per_node, not own.cpu)
        if after:
            options += [f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=yes"]
        if stage.distributed:
            job_ids[stage.name] = sbatch(f"slurm/{stage.module}.sbatch", stage.args, options, env)
        else:
            job_ids[stage.name] = sbatch(
                "slurm/task.sbatch", [stage.module, *stage.args], options, env
            )
        print(f"[submitted] {stage.name}: job {job_ids[stage.name]}", flush=True)
        write_json(jobs_file, job_ids)

    if not job_ids and (plan.run_dir / "results.json").exists():
        print("every stage is done and reported; nothing to submit")
        return
    options = ["--job-name=report", *common, "--nodes=1", "--ntasks=1"]
    if job_ids:
        options += [
            f"--dependency=afterok:{':'.join(job_ids.values())}",
            "--kill-on-invalid-dep=yes",
        ]
    report_env = {k: v for k, v in env.items() if k != "STAGE_TIMES"}  # not a stage
    job_ids["report"] = sbatch("slurm/task.sbatch", ["slurm.report", *rest], options, report_env)
    write_json(jobs_file, job_ids)
    print(f"[submitted] report: job {job_ids['report']} (logs: {logs})", flush=True)


if __name__ == "__main__":
    run_tool(main)
