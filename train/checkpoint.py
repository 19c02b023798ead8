"""Engine checkpoints that resume exactly, and the final export in Hugging Face format.

A checkpoint is `checkpoints/step_N/`, written by DeepSpeed on every rank, plus each rank's
random state. `checkpoints/latest` names the newest complete one and is replaced (atomically)
only after every rank has finished writing, so a crash mid-save leaves the previous checkpoint
in charge, never a half-written one.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from deepspeed import DeepSpeedEngine
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from data_tools.atomic import atomic_dir, atomic_open, write_json, write_text
from runtime.distributed import barrier, is_main


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


def save(engine: DeepSpeedEngine, ckpt_dir: Path, step: int) -> str:
    """Checkpoint after `step` optimizer steps; every rank must call this."""
    tag = f"step_{step}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step}, save_latest=False)
    with atomic_open(ckpt_dir / tag / f"rng_rank{dist.get_rank()}.pt", "wb") as f:
        torch.save(_rng_state(), f)
    barrier()
    if is_main():
        write_text(ckpt_dir / "latest", tag)
    barrier()
    return tag


def resume(engine: DeepSpeedEngine, ckpt_dir: Path) -> int:
    """Load the latest complete checkpoint, if any; return the number of steps already done."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return 0
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise RuntimeError(f"{ckpt_dir / tag}: DeepSpeed could not load this checkpoint")
    rng_file = ckpt_dir / tag / f"rng_rank{dist.get_rank()}.pt"
    if rng_file.exists():  # absent when resuming on more ranks than saved
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return int(client_state["step"])


def export(
    engine: DeepSpeedEngine,
    ckpt_dir: Path,
    tag: str,
    out_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    dtype: torch.dtype,
) -> None:
    """Write a Hugging Face model (safetensors) and its tokenizer to `out_dir` from rank 0.

    Under ZeRO no rank holds every weight (and with bf16 the module holds only a 16-bit copy),
    so the fp32 master weights are consolidated from checkpoint `tag` with DeepSpeed's
    `zero_to_fp32`; without ZeRO the module's own weights are the full ones.
    """
    if is_main():
        if engine.zero_optimization_stage() == 0:
            state_dict = {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}
        else:
            state_dict = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
        state_dict = {k: v.to(dtype).contiguous() for k, v in state_dict.items()}
        with atomic_dir(out_dir) as tmp:
            engine.module.config.dtype = dtype
            engine.module.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    barrier()


@torch.no_grad()
def verify_export(
    engine: DeepSpeedEngine, out_dir: Path, probe: dict[str, torch.Tensor], precision: str
) -> float:
    """Reload the export and compare its logits on `probe` with the live engine's; raise on a
    mismatch (the classic symptom: an export of empty or partitioned ZeRO-3 weights).
    Every rank must call this: under ZeRO-3 the engine's forward pass is collective."""
    engine.eval()
    live = engine(**{k: v.to(engine.device) for k, v in probe.items()}).logits.float().cpu()
    engine.train()
    diff = float("nan")
    if is_main():
        reloaded = AutoModelForCausalLM.from_pretrained(
            out_dir, dtype=torch.float32, use_safetensors=True
        )
        logits = reloaded.eval()(**probe).logits.float()
        mask = probe["attention_mask"].bool()
        diff = (logits - live)[mask].abs().max().item()
        tolerance = (1e-4 if precision == "fp32" else 2e-2) * max(
            1.0, live[mask].abs().max().item()
        )
        write_json(
            out_dir.parent / "export_check.json",
            {"max_abs_logit_diff": diff, "tolerance": tolerance},
        )
        if not diff <= tolerance:
            raise RuntimeError(
                f"{out_dir}: the exported model's logits differ from the engine's by {diff:.3g}"
            )
    barrier()
    return diff
