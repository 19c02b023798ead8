"""Engine checkpoints that resume exactly (or on another number of processes), their rotation,
and the final export in Hugging Face format, checked in a fresh process.

A checkpoint is `checkpoints/step_N/`, written by DeepSpeed on every rank, plus each rank's
random state and `run_state.json` (step, world size, eval loss). `checkpoints/latest` names the
newest complete one and is replaced (atomically) only after every rank has finished writing, so
a crash mid-save leaves the previous checkpoint in charge, never a half-written one; older
checkpoints are deleted only after that.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from deepspeed import DeepSpeedEngine
from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from data_tools.atomic import atomic_dir, atomic_open, write_json, write_text
from runtime import lora
from runtime.distributed import barrier, is_main, on_main
from runtime.ds_config import zero_stage

RUN_STATE = "run_state.json"  # beside DeepSpeed's files: step, world size, eval loss
REPORT = "export_check.json"  # in the run folder, only once the export passed its check
STEP_TAG = re.compile(r"step_(\d+)")
REPO = Path(__file__).resolve().parents[1]


def _rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def latest_tag(ckpt_dir: Path) -> str | None:
    latest = ckpt_dir / "latest"
    return latest.read_text().strip() if latest.exists() else None


def run_state(ckpt_dir: Path, tag: str) -> dict:
    path = ckpt_dir / tag / RUN_STATE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def save(
    engine: DeepSpeedEngine,
    ckpt_dir: Path,
    step: int,
    eval_loss: float | None = None,
    keep_last: int = 0,
    keep_best: bool = False,
) -> str:
    """Checkpoint after `step` optimizer steps, then rotate (see `rotate`); every rank must
    call this."""
    tag, world = f"step_{step}", dist.get_world_size()
    client_state = {"step": step, "world_size": world}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    with atomic_open(ckpt_dir / tag / f"rng_rank{dist.get_rank()}.pt", "wb") as f:
        torch.save(_rng_state(), f)
    if is_main():
        write_json(ckpt_dir / tag / RUN_STATE, {**client_state, "eval_loss": eval_loss})
    barrier()
    if is_main():
        write_text(ckpt_dir / "latest", tag)
        rotate(ckpt_dir, keep_last, keep_best)
    barrier()
    return tag


def rotate(ckpt_dir: Path, keep_last: int, keep_best: bool) -> list[str]:
    """Delete the checkpoints older than the newest `keep_last` (0: keep all) except, with
    `keep_best`, the one of lowest recorded eval loss; also universal conversions no longer
    needed and leftovers of an unfinished save past `latest`. Rank 0, after `latest` is written:
    `latest` is never deleted, and each folder is renamed away before it is removed, so a crash
    halfway leaves no partial checkpoint under a checkpoint's name. Returns the deleted tags."""
    latest = latest_tag(ckpt_dir)
    last = int(STEP_TAG.fullmatch(latest).group(1))
    steps = sorted(
        int(m.group(1))
        for p in ckpt_dir.iterdir()
        if p.is_dir() and (m := STEP_TAG.fullmatch(p.name))
    )
    complete = [f"step_{n}" for n in steps if n <= last]
    keep = {latest, *(complete[-keep_last:] if keep_last > 0 else complete)}
    if keep_best:
        losses = {t: run_state(ckpt_dir, t).get("eval_loss") for t in complete}
        scored = [t for t in complete if losses[t] is not None]
        if scored:
            keep.add(min(scored, key=losses.__getitem__))
    stale = [t for t in complete if t not in keep] + [f"step_{n}" for n in steps if n > last]
    stale += [p.name for p in ckpt_dir.glob("step_*_universal") if p.name != f"{latest}_universal"]
    for tag in stale:
        doomed = ckpt_dir / f".{tag}.deleting"
        os.replace(ckpt_dir / tag, doomed)
    # Also what an interrupted rotation or universal conversion left behind.
    for doomed in [*ckpt_dir.glob(".*.deleting"), *ckpt_dir.glob(".*_universal.*.tmp")]:
        shutil.rmtree(doomed)
    return stale


def resume_tag(ckpt_dir: Path, world: int, ds_config: dict) -> str | None:
    """The checkpoint to resume from: the latest, or, when it was saved by another number of
    processes with ZeRO-partitioned optimizer state, its conversion to DeepSpeed's universal
    format (made once by rank 0, then loaded with `checkpoint.load_universal`, which this sets
    in `ds_config`). Every rank must call this, before the engine is made."""
    tag = latest_tag(ckpt_dir)
    saved = run_state(ckpt_dir, tag).get("world_size", world) if tag else world
    if saved == world or not any((ckpt_dir / tag).glob("*optim_states.pt")):
        return tag
    universal = f"{tag}_universal"
    if not (ckpt_dir / universal).exists():
        on_main(lambda: _to_universal(ckpt_dir, tag, universal, saved, world))
    if is_main():
        inexact = (
            "; under ZeRO-3, DeepSpeed 0.19.8 restores the optimizer state only approximately"
            if zero_stage(ds_config) == 3
            else ""
        )
        print(
            f"{ckpt_dir / tag} was saved by {saved} processes; resuming on {world} from its "
            f"universal form {ckpt_dir / universal} (random states start afresh{inexact})",
            flush=True,
        )
    ds_config.setdefault("checkpoint", {})["load_universal"] = True
    return universal


def _to_universal(ckpt_dir: Path, tag: str, universal: str, saved: int, world: int) -> None:
    """DeepSpeed's `ds_to_universal` into a temporary folder renamed into place when done."""
    tmp = Path(tempfile.mkdtemp(dir=ckpt_dir, prefix=f".{universal}.", suffix=".tmp"))
    try:
        ds_to_universal(
            SimpleNamespace(  # the arguments of ds_to_universal's command line
                input_folder=str(ckpt_dir / tag),
                output_folder=str(tmp / universal),
                num_extract_workers=1,
                num_merge_workers=1,
                keep_temp_folder=False,
                strict=True,
                inject_missing_state=True,  # plain HF models carry no universal-checkpoint info
            )
        )
        os.replace(tmp / universal, ckpt_dir / universal)
    except Exception as e:
        raise RuntimeError(
            f"{ckpt_dir / tag}: saved by {saved} processes, and DeepSpeed could not convert it "
            f"to its universal format to resume on {world} ({type(e).__name__}: {e}). Resume "
            f"with {saved} processes, or set resume: false to start afresh"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resume(engine: DeepSpeedEngine, ckpt_dir: Path, tag: str) -> int:
    """Load checkpoint `tag` (from `resume_tag`); return the number of steps already done.
    Each rank's random state is restored when the number of processes is unchanged; otherwise
    the ranks keep the state seeded at start (the streams of other ranks cannot continue)."""
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise RuntimeError(f"{ckpt_dir / tag}: DeepSpeed could not load this checkpoint")
    if client_state.get("world_size", dist.get_world_size()) == dist.get_world_size():
        rng_file = ckpt_dir / tag / f"rng_rank{dist.get_rank()}.pt"
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return int(client_state["step"])


def export(
    engine: DeepSpeedEngine,
    ckpt_dir: Path,
    tag: str,
    out_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    dtype: torch.dtype,
    lora_export: str = "merged",
) -> None:
    """Write a Hugging Face model (safetensors) and its tokenizer to `out_dir` from rank 0.

    Under ZeRO no rank holds every weight (and with bf16 the module holds only a 16-bit copy),
    so the fp32 master weights are consolidated from checkpoint `tag` with DeepSpeed's
    `zero_to_fp32`; without ZeRO the module's own weights are the full ones. A LoRA model's
    weights (peft's key names) are written merged into its base or as the adapter alone, as
    `lora_export` says (runtime/lora.py). The previous export's check report is removed first:
    it vouches for that export only.
    """
    if is_main():
        (out_dir.parent / REPORT).unlink(missing_ok=True)
        if engine.zero_optimization_stage() == 0:
            state_dict = {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}
        else:
            state_dict = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
        with atomic_dir(out_dir) as tmp:
            if isinstance(engine.module, PeftModel):
                lora.save_export(engine.module, state_dict, tmp, lora_export, dtype)
            else:
                state_dict = {k: v.to(dtype).contiguous() for k, v in state_dict.items()}
                engine.module.config.dtype = dtype
                engine.module.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    barrier()


@torch.no_grad()
def check_export(
    engine: DeepSpeedEngine, out_dir: Path, probe: dict[str, torch.Tensor], precision: str
) -> None:
    """Check the export in a fresh process (`python -m train.check_export`): complete files, the
    live model's parameter count, and the engine's logits on `probe`; the report goes to the
    run folder's export_check.json only if all pass, and a failure fails every rank.
    Every rank must call this: under ZeRO-3 the engine's forward pass is collective."""
    engine.eval()
    live = engine(**{k: v.to(engine.device) for k, v in probe.items()}).logits.cpu()
    engine.train()
    num_params = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    if isinstance(engine.module, PeftModel):  # either export loads as the base model: no adapter
        num_params -= engine.module.get_nb_trainable_parameters()[0]

    def run_check() -> None:
        with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".export_probe.") as tmp:
            probe_file = Path(tmp) / "probe.pt"
            with atomic_open(probe_file, "wb") as f:
                mask = probe["attention_mask"].bool()
                torch.save({**probe, "logits": live[mask], "precision": precision}, f)
            command = [sys.executable, "-m", "train.check_export", "--export_dir", out_dir]
            command += ["--probe", probe_file, "--num_params", num_params]
            command += ["--output", out_dir.parent / REPORT]
            result = subprocess.run(
                [str(c) for c in command],
                capture_output=True,
                text=True,
                env=_child_env(),
            )
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if "export check failed" in line]
            raise RuntimeError(lines[-1] if lines else result.stderr[-3000:])
        print(f"export checked in a fresh process: {result.stdout.strip()}", flush=True)

    on_main(run_check)


def _child_env() -> dict[str, str]:
    """This environment for a plain, one-process child that imports this repository."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env
