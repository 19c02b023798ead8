"""The last job of a pipeline submitted by slurm/submit_pipeline.py: the wall time each stage
job recorded (a "stage seconds" line in <run_dir>/logs/slurm/stage_times; the latest line of a
stage wins) goes into timings.json, as a local run records it, then `python -m pipeline` runs
with the same options. Every stage is done by then, so it only writes the report.

    python -m slurm.report --config configs/compare_demo.yaml
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from data_tools.atomic import write_json
from data_tools.config import parse_config
from data_tools.errors import run_tool
from pipeline.args import PipelineArgs


def main() -> None:
    (args,) = parse_config((PipelineArgs,))
    run_dir = Path(args.run_dir)
    timings_file, times = run_dir / "timings.json", run_dir / "logs" / "slurm" / "stage_times"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    if times.exists():
        for line in times.read_text().splitlines():
            stage, seconds = line.split()
            timings[stage] = float(seconds)
        write_json(timings_file, timings)
    # The pipeline itself, in this process: every stage is done, so it writes the report.
    os.execv(sys.executable, [sys.executable, "-m", "pipeline", *sys.argv[1:]])


if __name__ == "__main__":
    run_tool(main)
