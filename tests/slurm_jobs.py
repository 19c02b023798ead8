"""Submitting to and waiting for the local SLURM cluster of tests/test_slurm.py.

There is no accounting database (sacct), so jobs are followed with `scontrol show job`, which
keeps finished jobs for the cluster's MinJobAge (an hour).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from tests.launch import REPO

FINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "DEADLINE",
    "BOOT_FAIL",
    "PREEMPTED",
}


def sbatch(cluster: dict[str, str], logs: Path, *args: str) -> str:
    """Submit from the repository root, as users do; the job's id. Batch and rank logs go to
    `logs` (<job name>-<id>.out, <job name>-<id>.rank<r>.log)."""
    logs.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["sbatch", "--parsable", f"--output={logs}/%x-%j.out", *args],
        cwd=REPO,
        env={**cluster, "JOB_LOGS": str(logs)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"sbatch {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


def job(cluster: dict[str, str], job_id: str) -> dict[str, str]:
    """The job's fields (JobState, Restarts, ExitCode, Reason, ...)."""
    result = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id],
        env=cluster,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(re.findall(r"(\w+)=(\S*)", result.stdout))


def log_tails(logs: Path, job_ids: list[str], lines: int = 25) -> str:
    files = sorted(f for j in job_ids for f in logs.glob(f"*-{j}.*"))
    return "\n".join(
        f"--- {f}:\n" + "\n".join(f.read_text(errors="replace").splitlines()[-lines:])
        for f in files
    )


def wait(
    cluster: dict[str, str], job_ids: list[str], logs: Path, timeout: float = 300
) -> dict[str, dict[str, str]]:
    """Wait until every job has ended (a requeued job ends only after its last run)."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j: job(cluster, j) for j in job_ids}
        if all(info["JobState"] in FINAL for info in jobs.values()):
            return jobs
        if time.monotonic() > deadline:
            states = {j: info["JobState"] for j, info in jobs.items()}
            raise AssertionError(
                f"jobs still running after {timeout} s: {states}\n{log_tails(logs, job_ids)}"
            )
        time.sleep(1)


def wait_completed(
    cluster: dict[str, str], job_ids: list[str], logs: Path, timeout: float = 300
) -> dict[str, dict[str, str]]:
    jobs = wait(cluster, job_ids, logs, timeout)
    failed = {
        j: (i["JobState"], i["ExitCode"]) for j, i in jobs.items() if i["JobState"] != "COMPLETED"
    }
    assert not failed, f"jobs did not complete: {failed}\n{log_tails(logs, list(failed))}"
    return jobs
