"""Run the whole comparison into one run folder: data, tokenizer, SFT, the SFT model's own tokens,
RAC samples, then SFT (continued), BASH, RAC and SCS training from the SFT model, DPO from the
models of the methods in `dpo_after` (none by default), evaluation, and a report (table,
results.json, plots).

    python -m pipeline --config configs/compare_demo.yaml

Each stage is a real `python -m` / `deepspeed --module` process whose output is written
atomically; a stage whose output is complete is skipped, so a rerun after a crash resumes where
it stopped. Logs: <run_dir>/logs/<stage>.log; timings: <run_dir>/timings.json.

Each stage runs in its own session (its own process group), so that SIGTERM or SIGINT to the
pipeline reaches every process of the stage (the `deepspeed` launcher passes none on by itself)
and nothing else: the pipeline passes the signal on to the stage's processes, waits until all
have ended (a trainer checkpoints at the end of its step), kills what is left STOP_GRACE_S after
the signal, starts no further stage, and exits with the stage's status (75 from a stopped
`python -m train`, 128 + the signal from the `deepspeed` launcher it ended). A second pipeline on
the same run folder refuses.

While a stage runs, a bar on stderr shows the stages done and to go, and the running stage's own
progress: its last progress line (train: step / total, loss, time left; generate: prompts done),
read from the end of its log.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import psutil
from tqdm import tqdm

from data_tools.atomic import write_json
from data_tools.config import parse_config
from data_tools.errors import run_tool
from pipeline.args import PipelineArgs
from pipeline.plan import Stage, build_plan
from pipeline.report import report, track
from runtime.distributed import free_port
from runtime.lock import hold
from runtime.tracking import Tracker

TICK_S = 2  # how often the bar shows the running stage's progress
STOP_GRACE_S = 120  # from the signal to SIGKILL: time for a step and its checkpoint
# DeepSpeed's per-node launcher: on SIGTERM it kills its ranks 30 s later (launch.py,
# terminate_process_tree), too soon for a large checkpoint. It is left out of what the stage's
# processes are sent; it ends by itself when its ranks have.
LAUNCHER = "deepspeed.launcher.launch"


class Relay:
    """Passes SIGTERM and SIGINT on to the processes of the running stage, and remembers them,
    so that no further stage starts. The handler only records; `wait` passes them on."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.unsent = False
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signum, self.unsent = signum, True

    def wait(self, proc: subprocess.Popen, tick: Callable[[], None]) -> int:
        """`proc`'s exit status, once every process of its group (`proc` leads it) has ended;
        `tick` is called every TICK_S meanwhile.
        A signal received is passed on to each of them but LAUNCHER. `deepspeed` can end before
        its ranks (killed by the signal, or crashed): those left get SIGTERM. SIGKILL comes
        STOP_GRACE_S after the first signal."""
        deadline, next_tick = math.inf, 0.0
        while (returncode := proc.poll()) is None or _group(proc.pid):
            if time.monotonic() > next_tick:
                tick()
                next_tick = time.monotonic() + TICK_S
            if self.unsent or (returncode is not None and deadline == math.inf):
                signum = signal.SIGTERM if self.signum is None else self.signum
                for p in _group(proc.pid):
                    with contextlib.suppress(psutil.Error):
                        if LAUNCHER not in p.cmdline():
                            p.send_signal(signum)
                self.unsent, deadline = False, min(deadline, time.monotonic() + STOP_GRACE_S)
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.2)
        return returncode


def last_progress(log: Path, width: int = 90) -> str:
    """The last progress line of `log` (tqdm redraws with \\r, so the text after the last \\r
    or newline that is not blank), its end kept if too long."""
    with log.open("rb") as f:
        f.seek(max(0, log.stat().st_size - 4096))
        tail = f.read().decode(errors="replace")
    lines = [line.strip() for line in tail.replace("\r", "\n").split("\n")]
    last = next((line for line in reversed(lines) if line), "")
    return last if len(last) <= width else "..." + last[-width:]


def _group(pgid: int) -> list[psutil.Process]:
    """The processes of group `pgid` that have not ended (zombies have)."""
    found = []
    for p in psutil.process_iter(["status"]):
        with contextlib.suppress(ProcessLookupError):
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                found.append(p)
    return found


def launch(stage: Stage, nproc: int) -> list[str]:
    """The command line of a stage: the deepspeed launcher for a distributed one."""
    if stage.distributed and nproc > 1:
        launcher = ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(free_port())]
        return [*launcher, "--module", stage.module, *stage.args]
    return [sys.executable, "-m", stage.module, *stage.args]


def run_stage(stage: Stage, nproc: int, log: Path, relay: Relay, bar: tqdm) -> float:
    """Run one stage to its end, its output in `log` and its progress on `bar`; its wall time in
    seconds. Stopped by a signal, exit with the stage's status."""
    # The processes of a stage share the machine's cores rather than each taking all of them.
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    env = {"OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false", **os.environ}
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[running] {stage.name} (log: {log})", flush=True)
    started = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(
            launch(stage, nproc),
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        returncode = relay.wait(proc, lambda: bar.set_postfix_str(last_progress(log)))
    if returncode == 0 and stage.done():
        return time.perf_counter() - started
    if relay.signum is not None:
        name = signal.Signals(relay.signum).name
        print(f"[stopped] {stage.name} on {name} (exit {returncode}); rerun to resume", flush=True)
        status = 128 - returncode if returncode < 0 else returncode
        raise SystemExit(status or 128 + relay.signum)  # one that ended 0, undone, was stopped too
    tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
    raise SystemExit(f"stage {stage.name} failed (exit {returncode}); the end of {log}:\n{tail}")


def main() -> None:
    (args,) = parse_config((PipelineArgs,))
    relay = Relay()
    plan = build_plan(args)
    if args.base_dir:
        for needed in ("data/train.jsonl", "sft_base/export_check.json"):
            if not (plan.base_dir / needed).exists():
                raise SystemExit(
                    f"base_dir: {plan.base_dir / needed} is missing; run the base first"
                )
    hold(plan.run_dir / ".lock", plan.run_dir)
    timings_file, base_timings = plan.run_dir / "timings.json", plan.base_dir / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    # The base's stages, done in base_dir, have their times there.
    recorded = (
        json.loads(base_timings.read_text()) if args.base_dir and base_timings.exists() else {}
    )
    bar = tqdm(total=len(plan.stages), desc="stages", unit="stage", dynamic_ncols=True)
    for stage in plan.stages:
        if relay.signum is not None:  # it came between stages
            raise SystemExit(128 + relay.signum)
        if stage.done():
            known = stage.name in timings or stage.name in recorded
            unknown = "" if known else " (its time was not recorded: stopped after it ended)"
            print(f"[done before] {stage.name}{unknown}", flush=True)
            bar.update()
            continue
        bar.set_description(stage.name)
        timings[stage.name] = run_stage(
            stage, args.nproc, plan.run_dir / "logs" / f"{stage.name}.log", relay, bar
        )
        write_json(timings_file, timings)
        bar.update()
    bar.close()
    stages = [s.name for s in plan.stages]
    rows = report(
        plan.run_dir,
        plan.base_dir,
        plan.evaluations,
        stages,
        recorded | timings,
        task=args.task,
        splits=plan.split_evaluations,
    )
    with Tracker(
        args.wandb_project, str(plan.run_dir), asdict(args), "report", "report", args.group()
    ) as tracker:
        track(rows, plan.run_dir, tracker)


if __name__ == "__main__":
    run_tool(main)
