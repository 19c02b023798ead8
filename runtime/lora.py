"""LoRA adapters through peft: wrapping a model for training, exporting it, loading an export.

Only the adapter's matrices train; the base weights stay frozen. The export is either the
adapter merged into the base weights (a plain Hugging Face model, as a full fine-tune writes)
or the adapter alone, in peft's format, with its base named in adapter_config.json. A folder
with adapter_config.json loads as its base plus the adapter, merged, so generation runs at
the base model's speed.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from runtime.args import ModelArgs

ADAPTER_CONFIG = "adapter_config.json"
EXPORT_KINDS = ("merged", "adapter")


def add_lora(
    model: PreTrainedModel,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: str,
    base: str | None,
) -> PeftModel:
    """`model` with LoRA adapters of `rank` on `target_modules` ("all-linear": every linear
    projection of attention and MLP, not the output head; or comma-separated module names).
    `base` (the pretrained folder or hub name, None for a model from a config) is recorded in
    the adapter's config; a local folder as an absolute path, so the adapter loads from anywhere."""
    if base is not None and Path(base).is_dir():
        base = str(Path(base).resolve())
    targets = (
        target_modules
        if target_modules == "all-linear"
        else [t.strip() for t in target_modules.split(",") if t.strip()]
    )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    model.name_or_path = base or ""  # peft records it as the adapter's base
    return get_peft_model(model, config)


def from_args(model: PreTrainedModel, args, base: str | None) -> PeftModel:
    """`model` with the adapters a run's `lora_*` options (train/args.py) describe; `base` as in
    `add_lora`. An adapter-only export must name its base, so it needs a pretrained one."""
    if args.lora_export == "adapter" and base is None:
        raise ValueError("lora_export adapter needs model_name_or_path: the base it adapts")
    return add_lora(
        model, args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_target_modules, base
    )


def is_adapter(name_or_path: str) -> bool:
    return (Path(name_or_path) / ADAPTER_CONFIG).is_file()


def base_name(name_or_path: str) -> str:
    """The base model named by an adapter folder; any other model as it is."""
    if not is_adapter(name_or_path):
        return name_or_path
    base = PeftConfig.from_pretrained(name_or_path).base_model_name_or_path
    if base is None:
        raise ValueError(f"{name_or_path}/{ADAPTER_CONFIG}: no base_model_name_or_path")
    return base


def load_merged(
    path: str, dtype: torch.dtype, attn_implementation: str = ModelArgs.attn_implementation
) -> PreTrainedModel:
    """The base model named in `path`/adapter_config.json with the adapter merged in."""
    if is_deepspeed_zero3_enabled():
        raise ValueError(
            f"{path}: a LoRA adapter cannot be merged into ZeRO-3 partitioned weights; "
            "start from a merged export (lora_export: merged) or use ZeRO-2"
        )
    model = AutoModelForCausalLM.from_pretrained(
        base_name(path), dtype=dtype, use_safetensors=True, attn_implementation=attn_implementation
    )
    return PeftModel.from_pretrained(model, path).merge_and_unload()


def _shares_storage(state_dict: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    """Whether any tensor of `state_dict` is (a view of) a parameter of `module`."""

    def storage(t: torch.Tensor) -> tuple[torch.device, int]:
        return t.device, t.untyped_storage().data_ptr()

    live = {storage(p) for p in module.parameters() if p.numel()}  # not ZeRO-3's empty partitions
    return any(storage(t) in live for t in state_dict.values())


def save_export(
    trained: PeftModel, state_dict: dict[str, torch.Tensor], out_dir: Path, kind: str, dtype
) -> None:
    """Write `state_dict` (the consolidated weights of `trained`, peft's key names) to `out_dir`:
    merged into the base weights or the adapter alone. The weights are loaded into a fresh copy
    of the peft model (built on the meta device, then given the tensors), since under ZeRO the
    live module holds only partitions. `trained` is left as it was; a consolidated `state_dict`
    is merged in place (no second copy of the model)."""
    if kind not in EXPORT_KINDS:
        raise ValueError(f"lora_export must be one of {EXPORT_KINDS}, got {kind!r}")
    config = copy.deepcopy(trained.peft_config["default"])
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(copy.deepcopy(trained.get_base_model().config))
    base.name_or_path = config.base_model_name_or_path or ""
    model = get_peft_model(base, config, low_cpu_mem_usage=True)
    model.load_state_dict(state_dict, strict=True, assign=True)
    if kind == "merged":
        # The copy holds the given tensors themselves (`assign`), and peft merges into them in
        # place. Without ZeRO on CPU they are the live module's own (`.cpu()` of a CPU tensor is
        # itself): merging into them would add B A to the engine's base weights, which would
        # then apply the adapter twice. Those are merged into new tensors (safe_merge).
        model = model.merge_and_unload(safe_merge=_shares_storage(state_dict, trained))
        model.config.dtype = dtype
    model.to(dtype).save_pretrained(out_dir, safe_serialization=True)
