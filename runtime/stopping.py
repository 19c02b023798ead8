"""A clean stop on request: SIGTERM (preemption, `scancel`, `timeout`, Kubernetes) and SIGUSR1
(SLURM's warning before a time limit) only record the request; the run acts on it where it can
stop without losing work (train: at the end of a step, with a checkpoint; generate: between
batches) and exits with STOPPED, so that a rerun or a requeued job resumes.

Under the `deepspeed` launcher on one node, SIGTERM to `deepspeed` itself ends it alone: its
runner passes no signal on (deepspeed/launcher/runner.py installs its handler for multi-node
pdsh runs only), so its child `deepspeed.launcher.launch` (each rank's parent) and the ranks would
run on as orphans. Each rank therefore also takes the loss of the launcher's parent as a request
to stop.
"""

from __future__ import annotations

import signal
import threading
import time

import psutil

STOPPED = 75  # the exit status of a run stopped on request (sysexits' EX_TEMPFAIL: try again)


class Stop:
    """Why the run was asked to stop, or None; true once asked."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __bool__(self) -> bool:
        return self.reason is not None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason


def requested() -> Stop:
    """A Stop set by SIGTERM, SIGUSR1 or the end of the `deepspeed` launcher that started this
    process. The handlers only record: a checkpoint is collective, so ranks act together."""
    stop = Stop()
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, lambda s, _: stop.request(signal.Signals(s).name))
    launcher = psutil.Process().parent()
    if launcher is not None and "deepspeed.launcher.launch" in launcher.cmdline():
        runner = launcher.ppid()
        threading.Thread(target=_watch, args=(launcher, runner, stop), daemon=True).start()
    return stop


def _watch(launcher: psutil.Process, runner: int, stop: Stop) -> None:
    """Request a stop once `launcher` has lost its parent `runner` (or is gone itself)."""
    try:
        while launcher.ppid() == runner:
            time.sleep(1)
    except psutil.NoSuchProcess:
        pass
    stop.request("the deepspeed launcher ended")
