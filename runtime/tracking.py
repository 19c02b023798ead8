"""wandb on rank 0; offline when there is no API key, so that `wandb sync` can upload later."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from data_tools.atomic import write_text
from runtime.distributed import is_main


def wandb_mode() -> str:
    return os.environ.get("WANDB_MODE") or (
        "online" if os.environ.get("WANDB_API_KEY") else "offline"
    )


class Tracker:
    """A wandb run that a resumed job continues (its id is kept in the output folder); a no-op
    on other ranks or when `project` is None."""

    def __init__(
        self,
        project: str | None,
        output_dir: str,
        config: dict[str, Any],
        name: str | None = None,
        job_type: str = "train",
        group: str | None = None,
    ):
        self.run = None
        if project is None or not is_main():
            return
        import wandb

        id_file = Path(output_dir) / "wandb_run_id"
        if not id_file.exists():
            write_text(id_file, uuid.uuid4().hex[:12])
        self.run = wandb.init(
            project=project,
            name=name,
            id=id_file.read_text().strip(),
            resume="allow",
            config=config,
            dir=output_dir,
            mode=wandb_mode(),
            job_type=job_type,
            group=group,
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(metrics)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
