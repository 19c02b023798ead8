"""Chaos: the comparison pipeline SIGKILLed at random moments, with every process of its running
stage, and rerun until it finishes; its results must equal those of an uninterrupted run, and
no stage may run to completion twice.

    python -m bench.chaos [--output_dir bench_runs/chaos] [--kills 5] [--seed 0]

1. An uninterrupted run (`pipeline` with `options`), timed: T seconds.
2. The chaos run: started, SIGKILLed (pipeline and stage, as a node failure would) at a moment
   drawn uniformly from [min_s, L / 2] of its own time, L the uninterrupted run's time for the
   stages not yet done, rerun; `kills` times; then rerun to the end.
3. The verdict: each method's exact match and n equal in both runs' results.json, and the
   evaluation files (eval/<split>/<model>.jsonl) compared line by line; no stage completed twice
   (a stage records its time in timings.json when it completes: a stage redone after a kill
   records it again, so its time changes).

Prints a markdown table for bench/RESULTS.md and writes <output_dir>/summary.json.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from data_tools.atomic import write_json
from data_tools.config import parse_config
from data_tools.errors import run_tool

REPO = Path(__file__).resolve().parents[1]


@dataclass
class ChaosArgs:
    output_dir: str = "bench_runs/chaos"
    kills: int = field(default=5, metadata={"help": "SIGKILLs before the run may finish"})
    seed: int = field(default=0, metadata={"help": "draws the moments of the kills"})
    min_s: float = field(default=5.0, metadata={"help": "no kill sooner after a (re)start"})
    options: str = field(
        default=(
            "--config configs/compare_demo.yaml --synthetic_sizes train=300,validation=24,test=24"
            " --micro_batch_size 8 --sft_steps 20 --method_steps 6 --rac_prompts 32"
            " --max_new_tokens 32 --nproc 2"
        ),
        metadata={"help": "the pipeline's options, for both runs"},
    )


def start(options: list[str], run_dir: Path, log: Path) -> subprocess.Popen:
    with log.open("a") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", *options, "--run_dir", str(run_dir)],
            cwd=REPO,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_everything(pipeline: subprocess.Popen) -> None:
    """SIGKILL the pipeline and every process it started (each stage runs in a session of its
    own), stopping the pipeline first so that it starts nothing meanwhile."""
    with_children = psutil.Process(pipeline.pid)
    os.killpg(pipeline.pid, signal.SIGSTOP)
    for p in with_children.children(recursive=True):
        p.kill()
    os.killpg(pipeline.pid, signal.SIGKILL)
    pipeline.wait()


def recorded(run_dir: Path) -> dict[str, float]:
    """The stages completed so far, with their recorded times."""
    path = run_dir / "timings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def compare(reference: Path, chaos: Path) -> dict:
    """Exact match and n per method, and the evaluation files line by line, of two run folders."""

    def results(run_dir: Path) -> dict[str, dict]:
        rows = json.loads((run_dir / "results.json").read_text())
        return {r["method"]: {"exact_match": r["exact_match"], "n": r["n"]} for r in rows}

    files = sorted(p.relative_to(reference) for p in (reference / "eval").rglob("*.jsonl"))
    lines = {}
    for name in files:
        ours, theirs = ((run / name).read_text().splitlines() for run in (chaos, reference))
        lines[str(name)] = {
            "lines": len(theirs),
            "identical": sum(a == b for a, b in zip(ours, theirs, strict=False)),
        }
    return {"results": (results(reference), results(chaos)), "evaluation_files": lines}


def main() -> None:
    (args,) = parse_config((ChaosArgs,))
    out, options, draw = Path(args.output_dir), args.options.split(), random.Random(args.seed)
    out.mkdir(parents=True, exist_ok=True)
    reference, chaos = out / "uninterrupted", out / "chaos"

    if (
        not (reference / "results.json").exists()
        and start(options, reference, out / "uninterrupted.log").wait() != 0
    ):
        raise SystemExit(f"the uninterrupted run failed: see {out / 'uninterrupted.log'}")
    stage_s = json.loads((reference / "timings.json").read_text())
    total_s = sum(stage_s.values())
    print(f"uninterrupted: {total_s:.0f} s", flush=True)

    runs: list[dict] = []
    redone: set[str] = set()
    while True:
        before = recorded(chaos)
        pipeline = start(options, chaos, out / "chaos.log")
        # Within the first half of the work left (by the uninterrupted run's times of the stages
        # not yet done), so that a kill lands before the end even if this run is faster.
        left_s = sum(t for name, t in stage_s.items() if name not in before)
        kill_at = draw.uniform(args.min_s, max(args.min_s, 0.5 * left_s))
        killed = False
        if len(runs) < args.kills:
            deadline = time.monotonic() + kill_at
            while pipeline.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if pipeline.poll() is None:
                kill_everything(pipeline)
                killed = True
        status = pipeline.wait()
        now = recorded(chaos)
        new = sorted(now.keys() - before.keys())
        redone |= {s for s, t in before.items() if now[s] != t}
        runs.append({"killed_after_s": kill_at if killed else None, "completed": new})
        print(
            f"run {len(runs)}: {'killed' if killed else f'exit {status}'}, stages completed: {new}",
            flush=True,
        )
        if not killed:
            if status != 0:
                raise SystemExit(f"the chaos run failed (exit {status}): see {out / 'chaos.log'}")
            break

    comparison = compare(reference, chaos)
    same = comparison["results"][0] == comparison["results"][1]
    summary = {
        "kills": sum(r["killed_after_s"] is not None for r in runs),
        "runs": runs,
        "uninterrupted_s": total_s,
        "stages_completed_twice": sorted(redone),
        "results_equal": same,
        **comparison,
    }
    write_json(out / "summary.json", summary)
    print(
        "\n| model | exact match, uninterrupted | exact match, after kills | identical eval lines |"
    )
    print("|---|---:|---:|---:|")
    ours, theirs = comparison["results"][1], comparison["results"][0]
    for method, row in theirs.items():
        files = [v for k, v in comparison["evaluation_files"].items() if Path(k).stem == method]
        identical = f"{files[0]['identical']} / {files[0]['lines']}" if files else "-"
        print(
            f"| {method} | {row['exact_match']:.3f} | {ours[method]['exact_match']:.3f} | {identical} |"
        )
    print(
        f"\n{summary['kills']} kills; stages completed twice: {summary['stages_completed_twice'] or 'none'}; "
        f"results equal: {same}"
    )


if __name__ == "__main__":
    run_tool(main)
