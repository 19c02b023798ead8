"""Engine checkpoints that resume exactly (or on another number of processes), verified before
they are loaded, their rotation, and the final export in Hugging Face format, checked in a fresh
process.

A checkpoint is `checkpoints/step_N/`, written by DeepSpeed on every rank, plus each rank's
random state, `run_state.json` (step, world size, eval loss, and the options that fix what a
step means) and, last, `manifest.json`: the size and sha256 of every file, hashed by the ranks
in turn once all have written. `checkpoints/latest` names the newest complete one and is
replaced (atomically) only after the manifest, so a crash mid-save leaves the previous
checkpoint in charge; older checkpoints are deleted only after that. A resume loads only a
checkpoint whose files all match its manifest (falling back to the newest one that does), and
refuses one saved with other options.

The checkpoint folder is shared by every rank, as DeepSpeed's universal conversion, the export's
consolidation and the rotation (all on rank 0, over every rank's files) need it to be.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from array import array
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from deepspeed import DeepSpeedEngine
from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from data_tools.atomic import atomic_dir, atomic_open, write_json, write_text
from data_tools.preferences import sequences
from runtime import lora
from runtime.args import DataArgs, ModelArgs
from runtime.distributed import barrier, is_main, on_main
from runtime.ds_config import zero_stage
from runtime.fingerprint import (
    differences,
    file_sha256,
    model_fingerprint,
    tokenizer_fingerprint,
)
from train.args import TrainArgs
from train.setup import TrainSetup

RUN_STATE = "run_state.json"  # beside DeepSpeed's files: step, world size, eval loss, the run
MANIFEST = "manifest.json"  # written last: the size and sha256 of every other file
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


def run_identity(
    model_args: ModelArgs, data_args: DataArgs, args: TrainArgs, run: TrainSetup
) -> dict[str, Any]:
    """What fixes the meaning of step N: the training data (its file, and its examples or pairs
    as tokenized), their order (seed, global batch), the optimizer and its schedule, the method
    (with its options and offline data), and the starting model and tokenizer. Recorded in every checkpoint and compared on resume.
    Not the split of the global batch into processes, micro-batches and accumulation, which may
    change (resuming on another number of processes needs it to). It hashes the data file and
    the starting weights, so rank 0 alone calls this."""
    data = Path(data_args.data)
    tokenized = hashlib.sha256()
    for e in sequences(run.train_set):  # a pair's chosen, then its rejected
        tokenized.update(f"{e.id}\0{len(e.input_ids)}\0".encode())
        tokenized.update(array("q", e.input_ids))
        tokenized.update(array("q", e.labels))
    identity: dict[str, Any] = {
        "mode": args.mode,
        "data": (
            f"sha256 {file_sha256(data)[:16]}, {data.stat().st_size} bytes"
            if data.is_file()
            else f"hub dataset {data_args.data} ({data_args.data_name}, split {data_args.split})"
        ),
        "training_examples": len(run.train_set),
        "training_set": tokenized.hexdigest()[:16],  # the examples as tokenized and masked
        "max_length": data_args.max_length,
        "loss_on": args.loss_on,
        "seed": args.seed,
        "global_batch_size": run.plan.global_batch_size,
        "total_steps": run.total_steps,
        "learning_rate": args.learning_rate,
        "lr_scheduler": args.lr_scheduler,
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "adam_betas": [args.adam_beta1, args.adam_beta2],
        "max_grad_norm": args.max_grad_norm,
        "model": (
            model_fingerprint(model_args.model_name_or_path)
            if model_args.model_name_or_path
            else f"new, config sha256 {file_sha256(Path(model_args.model_config))[:16]}"
        ),
        "tokenizer": tokenizer_fingerprint(run.tokenizer),
        "lora": {
            "rank": args.lora_rank,
            "alpha": args.lora_alpha,
            "dropout": args.lora_dropout,
            "target_modules": args.lora_target_modules,
        }
        if args.lora_rank
        else None,
    }
    if run.schedule:
        identity["sampling_schedule"] = dataclasses.asdict(run.schedule)
    if args.mode == "bash":
        identity["predictions"] = f"sha256 {file_sha256(Path(args.predictions))[:16]}"
    if run.dpo:
        identity["dpo"] = dataclasses.asdict(run.dpo)
        identity["reference_logps"] = f"sha256 {file_sha256(Path(args.reference_logps))[:16]}"
    # JSON's view (lists, not tuples), so that a recorded identity compares equal to a fresh one.
    return json.loads(json.dumps(identity))


def _check_same_run(folder: Path, identity: dict[str, Any]) -> None:
    """Refuse to continue checkpoint `folder` with options that change what its steps meant."""
    saved = json.loads((folder / RUN_STATE).read_text(encoding="utf-8")).get("run") or {}
    if changed := differences(saved, identity):
        raise ValueError(
            f"{folder} was saved by a run with other options, and resuming would mix two runs "
            f"(checkpoint -> this run): {'; '.join(changed)}. Rerun with the checkpoint's "
            "options to continue it, or start afresh with a new output_dir (or resume: false, "
            "which replaces this run's checkpoints and metrics)"
        )


def _from_main(obj: Any) -> Any:
    """Rank 0's `obj`, on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _listing(folder: Path) -> list[str]:
    """The files under `folder`, relative; not the dot-files of unfinished atomic writes."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )


def _digest(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _digests(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """The size and sha256 of `names` (the same list on every rank, biggest first), hashed by the
    ranks in turn so that each reads about 1/world of the checkpoint, gathered on rank 0 (the
    others get {}). What another rank could not read (its node does not see the folder), rank 0
    hashes itself. Every rank must call this."""
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = {}
    for name in names[rank::world]:
        with contextlib.suppress(OSError):
            mine[name] = _digest(folder / name)
    parts = [{}] * world if is_main() else None
    dist.gather_object(mine, parts, dst=0)
    if not is_main():
        return {}
    gathered = {name: digest for part in parts for name, digest in part.items()}
    return {name: gathered.get(name) or _digest(folder / name) for name in names}


def _write_manifest(folder: Path) -> None:
    """`folder`'s manifest.json, once every rank has written its files. Every rank must call
    this."""
    names = None
    if is_main():
        names = sorted(_listing(folder), key=lambda n: (folder / n).stat().st_size, reverse=True)
    digests = _digests(folder, _from_main(names))
    if is_main():
        write_json(folder / MANIFEST, {"files": dict(sorted(digests.items()))})


def _read_manifest(folder: Path) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Rank 0: what is wrong with `folder` that needs no hashing (a missing folder, manifest or
    file, a size that differs, a file the manifest does not list), and the manifest's files."""
    path = folder / MANIFEST
    if not folder.is_dir():
        return [f"{folder}: missing"], {}
    if not path.exists():
        return [f"{path}: missing (its save did not finish, or it predates manifests)"], {}
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        sizes = {name: int(entry["bytes"]) for name, entry in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return [f"{path}: unreadable ({type(e).__name__}: {e})"], {}
    present = set(_listing(folder))
    problems = []
    for name, size in sizes.items():
        if name not in present:
            problems.append(f"{folder / name}: missing")
        elif (actual := (folder / name).stat().st_size) != size:
            cut = " (truncated)" if actual < size else ""
            problems.append(f"{folder / name}: {actual} bytes, its manifest says {size}{cut}")
    problems += [f"{folder / n}: not in its manifest" for n in sorted(present - {*files, MANIFEST})]
    return problems, files


def _problems(folder: Path) -> list[str]:
    """What is wrong with checkpoint `folder` against its manifest ([]: every file is there,
    with its size and sha256), on every rank. Every rank must call this."""
    problems, files = _from_main(_read_manifest(folder) if is_main() else None)
    if problems:
        return problems
    digests = _digests(folder, sorted(files, key=lambda n: files[n]["bytes"], reverse=True))
    if is_main():
        problems = [
            f"{folder / name}: its sha256 differs from its manifest's (changed since it was saved)"
            for name in sorted(files)
            if digests[name]["sha256"] != files[name]["sha256"]
        ]
    return _from_main(problems)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def verified_tag(ckpt_dir: Path) -> str | None:
    """The checkpoint `latest` names if all its files match its manifest; else the newest older
    one that does, each one passed over named on a line with what is wrong with it; None if none
    does (said loudly when there were checkpoints: the run starts afresh). Rank 0 decides and
    every rank gets its answer, since loading is collective. Every rank must call this."""
    candidates = None
    if is_main():
        latest = latest_tag(ckpt_dir)
        newest = STEP_TAG.fullmatch(latest or "")
        steps = sorted(
            (int(m.group(1)) for p in ckpt_dir.glob("step_*") if (m := STEP_TAG.fullmatch(p.name))),
            reverse=True,
        )
        older = [f"step_{n}" for n in steps if newest is None or n < int(newest.group(1))]
        candidates = [latest] * (latest is not None) + older
    candidates = _from_main(candidates)
    for tag in candidates:
        problems = _problems(ckpt_dir / tag)
        if not problems:
            if tag != candidates[0] and is_main():
                _warn(f"resuming from {ckpt_dir / tag}, the newest checkpoint that verifies")
            return tag
        if is_main():
            _warn(f"checkpoint {ckpt_dir / tag} is not resumed: {'; '.join(problems)}")
    if candidates and is_main():
        _warn(
            f"NO CHECKPOINT IN {ckpt_dir} VERIFIES (each named above): THIS RUN STARTS AFRESH "
            "FROM STEP 0, and its saves will replace those checkpoints"
        )
    return None


def _discard(folder: Path) -> None:
    """Rename `folder` away, then delete it, so that a crash halfway leaves no partial
    checkpoint under a checkpoint's name (`rotate` clears what is left)."""
    doomed = folder.with_name(f".{folder.name}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(folder, doomed)
    shutil.rmtree(doomed)


def save(
    engine: DeepSpeedEngine,
    ckpt_dir: Path,
    step: int,
    eval_loss: float | None = None,
    *,
    identity: dict[str, Any],
    keep_last: int = 0,
    keep_best: bool = False,
) -> str:
    """Checkpoint after `step` optimizer steps, with rank 0's `identity` (`run_identity`) and,
    last, its manifest; then point `latest` at it and rotate (see `rotate`). Every rank must call
    this."""
    tag, world = f"step_{step}", dist.get_world_size()
    folder = ckpt_dir / tag
    # An unfinished save's leftovers, or a checkpoint the resume passed over, and a universal
    # conversion made from it: none of their files may pass for this save's.
    for stale in (folder, ckpt_dir / f"{tag}_universal"):
        if is_main() and stale.exists():
            _discard(stale)
    barrier()
    client_state = {"step": step, "world_size": world}
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
        with atomic_open(folder / f"rng_rank{dist.get_rank()}.pt", "wb") as f:
            torch.save(_rng_state(), f)
        if is_main():
            split = {
                "micro_batch_size": engine.train_micro_batch_size_per_gpu(),
                "gradient_accumulation_steps": engine.gradient_accumulation_steps(),
            }
            state = {**client_state, **split, "eval_loss": eval_loss, "run": identity}
            write_json(folder / RUN_STATE, state)
    except (OSError, RuntimeError) as e:  # torch.save on a full disk: "unexpected pos", no path
        raise _unwritten(folder, e) from e
    barrier()
    _write_manifest(folder)
    if is_main():
        write_text(ckpt_dir / "latest", tag)
        rotate(ckpt_dir, keep_last, keep_best)
    barrier()
    return tag


def _unwritten(folder: Path, error: Exception) -> OSError:
    """The error of a checkpoint that could not be written: its folder, the cause, and the free
    space, since a full disk is the usual cause and torch's own error does not say so."""
    free = shutil.disk_usage(folder.parent).free
    cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    full = ": the disk is full" if free < (1 << 20) else ""
    return OSError(
        f"{folder}: the checkpoint could not be written ({cause}); {free / 2**20:.1f} MiB free"
        f"{full}. The previous checkpoint is still `latest`: free space and rerun to resume"
    )


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
        _discard(ckpt_dir / tag)
    # Also what an interrupted rotation or universal conversion left behind.
    for doomed in [*ckpt_dir.glob(".*.deleting"), *ckpt_dir.glob(".*_universal.*.tmp")]:
        shutil.rmtree(doomed)
    return stale


def resume_tag(ckpt_dir: Path, world: int, ds_config: dict, identity: dict[str, Any]) -> str | None:
    """The checkpoint to resume from: the newest that verifies (`verified_tag`), refused if it
    was saved with another `identity` (rank 0's, `run_identity`); or, when it was saved by
    another number of processes with ZeRO-partitioned optimizer state, its conversion to
    DeepSpeed's universal format (made once by rank 0, then loaded with
    `checkpoint.load_universal`, which this sets in `ds_config`). Every rank must call this,
    before the engine is made."""
    tag = verified_tag(ckpt_dir)
    if tag is None:
        return None
    on_main(lambda: _check_same_run(ckpt_dir / tag, identity))
    saved = run_state(ckpt_dir, tag)["world_size"]
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
