"""wandb on rank 0; offline when there is no API key, so that `wandb sync` can upload later."""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_tools.atomic import write_text
from runtime.distributed import is_main


def wandb_mode() -> str:
    return os.environ.get("WANDB_MODE") or (
        "online" if os.environ.get("WANDB_API_KEY") else "offline"
    )


class Tracker:
    """A wandb run that a resumed job continues (its id is kept in `id_file`, by default
    `output_dir`/wandb_run_id); a no-op on other ranks or when `project` is None. The run is
    named `name`, else after `output_dir`; `job_type` and `group` place it among the stages of
    a pipeline (the pipeline's group holds all of them)."""

    def __init__(
        self,
        project: str | None,
        output_dir: str,
        config: dict[str, Any],
        name: str | None = None,
        job_type: str = "train",
        group: str | None = None,
        id_file: Path | None = None,
    ):
        self.run = None
        if project is None or not is_main():
            return
        import wandb

        id_file = id_file or Path(output_dir) / "wandb_run_id"
        if not id_file.exists():
            write_text(id_file, uuid.uuid4().hex[:12])
        self.run = wandb.init(
            project=project,
            name=name or Path(output_dir).resolve().name,
            id=id_file.read_text().strip(),
            resume="allow",
            config=config,
            dir=output_dir,
            mode=wandb_mode(),
            job_type=job_type,
            group=group,
        )

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def _send(self, call: Callable[[Any], object]) -> None:
        """`call(run)`, unless wandb's service process has ended: SLURM's scancel and preemption
        signal every process of a job, and wandb-core exits on SIGTERM (wandb/wandb#9963). The
        run then stops logging, with one warning; the metrics go on in metrics.jsonl, and the
        requeued job continues the wandb run."""
        if self.run is None:
            return
        try:
            call(self.run)
        except OSError as error:
            self.run = None
            print(
                f"warning: wandb stopped logging ({error!r}): its service process has ended; "
                "the metrics go on in metrics.jsonl",
                file=sys.stderr,
                flush=True,
            )

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._send(lambda run: run.log(metrics, step=step))

    def summary(self, metrics: dict[str, Any]) -> None:
        self._send(lambda run: run.summary.update(metrics))

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.run is not None:
            import wandb

            self.log({key: wandb.Table(columns=columns, data=rows)})

    def log_image(self, key: str, path: Path) -> None:
        """A PNG written beside the results, shown in the run's media panel."""
        if self.run is not None:
            import wandb

            self.log({key: wandb.Image(str(path))})

    def log_lines(
        self, key: str, x: list[float], ys: dict[str, list[float]], title: str, xname: str
    ) -> None:
        """Curves over a shared x (a wandb line plot, backed by a table)."""
        if self.run is not None:
            import wandb

            chart = wandb.plot.line_series(x, list(ys.values()), list(ys), title, xname)
            self.log({key: chart})

    def log_artifact(self, kind: str, *paths: Path, reference: bool = False) -> None:
        """Files or folders as one artifact of type `kind`, named after the group, the run and
        the kind. Files are recorded in place, not copied (they are final once written); with
        `reference` (model weights), only their path and checksums are recorded, so `wandb sync`
        does not upload them."""
        if self.run is None:
            return
        import wandb

        label = "-".join(x for x in (kind, self.run.group, self.run.name) if x)
        artifact = wandb.Artifact(re.sub(r"[^\w.-]", "-", label), type=kind)
        for path in paths:
            if reference:
                artifact.add_reference(path.resolve().as_uri(), name=path.name)
            elif path.is_dir():
                artifact.add_dir(str(path), name=path.name, policy="immutable")
            else:
                artifact.add_file(str(path), policy="immutable")
        self._send(lambda run: run.log_artifact(artifact))

    def finish(self) -> None:
        self._send(lambda run: run.finish())
        self.run = None
