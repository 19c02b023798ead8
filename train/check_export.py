"""Check an exported model folder in a fresh process: complete files, loadable weights, and
(with a probe file) the logits of the engine that exported it.

    python -m train.check_export --export_dir runs/demo/sft/export
    python -m train.check_export --export_dir runs/demo/sft/export --probe probe.pt \\
        --num_params 1048576 --output export_check.json

A fresh process loads only what is on disk, so nothing of the training process (a partitioned
ZeRO-3 module, a cached tensor) can hide a bad export. The classic failures: weight files of a
few hundred KB holding ZeRO-3's empty partitions, and files cut short by a full disk or a killed
job. `train` runs this after every export and writes its report only when every check passes.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from data_tools.atomic import write_json
from data_tools.config import parse_config
from data_tools.errors import run_tool
from runtime import lora


class ExportError(Exception):
    pass


# Bytes per element of each safetensors dtype.
ITEMSIZE = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def tolerance(precision: str, live: torch.Tensor) -> float:
    """Largest allowed |logit difference|: relative to the logits' scale, looser for 16-bit
    weights (the export is cast to the training precision)."""
    return (1e-4 if precision == "fp32" else 2e-2) * max(1.0, live.abs().max().item())


def weight_files(export_dir: Path) -> list[Path]:
    """The safetensors files of `export_dir`: the one file, or every file its index names."""
    index = export_dir / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (export_dir / "model.safetensors").exists():
        names = ["model.safetensors"]
    elif (export_dir / "adapter_model.safetensors").exists():  # a LoRA adapter alone
        names = ["adapter_model.safetensors"]
    else:
        raise ExportError(f"{export_dir}: no model.safetensors nor model.safetensors.index.json")
    missing = [n for n in names if not (export_dir / n).exists()]
    if missing:
        raise ExportError(f"{index}: names missing weight files {missing}")
    return [export_dir / n for n in names]


def check_weight_file(path: Path) -> int:
    """Compare the file's size with what its header declares (8-byte header length, JSON header,
    then every tensor's bytes); return the number of weights it holds."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ExportError(f"{path}: {size} bytes, too short for a safetensors header")
        (header_len,) = struct.unpack("<Q", head)
        if 8 + header_len > size:
            raise ExportError(
                f"{path}: {size} bytes, but its header alone declares {8 + header_len}: truncated"
            )
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    end, numel = 0, 0
    for name, t in header.items():
        n = math.prod(t["shape"])
        if n == 0:
            raise ExportError(
                f"{path}: tensor {name} has shape {t['shape']}, no elements (ZeRO-3 partitions "
                "saved instead of the gathered weights?)"
            )
        begin, stop = t["data_offsets"]
        if stop - begin != n * ITEMSIZE[t["dtype"]]:
            raise ExportError(
                f"{path}: tensor {name} ({t['dtype']} {t['shape']}) needs "
                f"{n * ITEMSIZE[t['dtype']]} bytes, its header gives it {stop - begin}"
            )
        end, numel = max(end, stop), numel + n
    if size != 8 + header_len + end:
        raise ExportError(
            f"{path}: {size} bytes, but its {len(header)} tensors need {8 + header_len + end}: "
            f"{'truncated' if size < 8 + header_len + end else 'trailing bytes'}"
        )
    return numel


def load(export_dir: Path) -> torch.nn.Module:
    """The model in fp32, refusing any weight missing, unexpected or of another shape."""
    try:
        AutoTokenizer.from_pretrained(export_dir)
        if lora.is_adapter(export_dir):  # its base, with the adapter merged in
            return lora.load_merged(str(export_dir), torch.float32).eval()
        model, info = AutoModelForCausalLM.from_pretrained(
            export_dir, dtype=torch.float32, use_safetensors=True, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise ExportError(f"{export_dir}: cannot be loaded: {e}") from e
    bad = {k: sorted(v) for k, v in info.items() if v}
    if bad:
        raise ExportError(f"{export_dir}: the weights do not fit the model's config: {bad}")
    return model.eval()


@torch.no_grad()
def check(export_dir: Path, probe: Path | None = None, num_params: int | None = None) -> dict:
    """Every check on `export_dir`; raise ExportError naming the file and what differs."""
    sizes = {p.name: p.stat().st_size for p in weight_files(export_dir)}
    for name in sizes:
        check_weight_file(export_dir / name)
    model = load(export_dir)
    report = {"num_parameters": model.num_parameters(), "weight_files": sizes}
    if num_params is not None and report["num_parameters"] != num_params:
        raise ExportError(
            f"{export_dir}: {report['num_parameters']} parameters, the trained model has {num_params}"
        )
    if probe is not None:
        p = torch.load(probe, weights_only=True)
        mask = p["attention_mask"].bool()
        logits = model(input_ids=p["input_ids"], attention_mask=p["attention_mask"]).logits[mask]
        live = p["logits"].float()
        diff = (logits - live).abs().max().item()
        tol = tolerance(p["precision"], live)
        if not diff <= tol:
            raise ExportError(
                f"{export_dir}: logits on the probe batch ({probe}) differ from the engine's by "
                f"{diff:.3g}, more than the tolerance {tol:.3g} for {p['precision']}"
            )
        report |= {"max_abs_logit_diff": diff, "tolerance": tol}
    return report


@dataclass
class CheckExportArgs:
    export_dir: str = field(metadata={"help": "the exported model folder to check"})
    probe: str | None = field(
        default=None,
        metadata={
            "help": "torch file: input_ids, attention_mask, the engine's logits at the mask, "
            "precision"
        },
    )
    num_params: int | None = field(
        default=None, metadata={"help": "the trained model's parameter count"}
    )
    output: str | None = field(
        default=None, metadata={"help": "write the results here (JSON) if all pass"}
    )


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((CheckExportArgs,), argv)
    probe = Path(args.probe) if args.probe else None
    try:
        report = check(Path(args.export_dir), probe, args.num_params)
    except ExportError as e:
        raise SystemExit(f"export check failed: {e}") from e
    if args.output:
        write_json(args.output, report)
    print(json.dumps(report))


if __name__ == "__main__":
    run_tool(main)
