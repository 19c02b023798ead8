"""The last job of a pipeline submitted by slurm/submit_pipeline.py: the wall time each stage
job recorded (a "stage seconds" line in <run_dir>/logs/slurm/stage_times; the latest line of a
stage wins) goes into timings.json, as a local run records it, then `python -m pipeline` runs
with the same options. Every stage is done by then, so it only writes the report.

    python -m slurm.report --config configs/compare_demo.yaml
"""

from __future__ import annotations

import json
from pathlib import Path

from data_tools.atomic import write_json
from pipeline.__main__ import main as pipeline_main
from pipeline.args import PipelineArgs
from runtime.config import parse_config


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
    pipeline_main()


if __name__ == "__main__":
    main()
