"""The tests' models: one registry of tiny configs, and tiny random models saved as model folders,
as the entrypoints load them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from data_tools.atomic import write_jsonl
from data_tools.synthetic_math import Difficulty, make_splits
from runtime.modeling import load_model

REPO = Path(__file__).resolve().parents[1]

# Llama configs by name: the demo's (1M parameters, configs/models/tiny-llama.json), and two
# smaller ones for the tests that train many times (a few thousand steps in all).
MODELS: dict[str, dict] = {
    "tiny-llama": json.loads((REPO / "configs/models/tiny-llama.json").read_text(encoding="utf-8")),
    "llama-64": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
    },
    "llama-32": {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
    },
}


def save_tiny_model(
    tokenizer: PreTrainedTokenizerBase, folder: Path, seed: int = 0, eos_boost: float = 1.0
) -> Path:
    """configs/models/tiny-llama.json with random weights (and the tokenizer) in `folder`.
    A random model hardly ever ends; `eos_boost` > 1 makes EOS likely enough that some do."""
    model = load_model(
        tokenizer, config_file=str(REPO / "configs/models/tiny-llama.json"), seed=seed
    )
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] *= eos_boost
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def problems_and_model(root: Path, tokenizer: PreTrainedTokenizerBase, n: int, seed: int) -> Path:
    """`root`/data.jsonl with `n` synthetic problems and `root`/model, a tiny random model whose
    generations sometimes end."""
    write_jsonl(root / "data.jsonl", make_splits({"train": n}, Difficulty(), seed=seed)["train"])
    save_tiny_model(tokenizer, root / "model", eos_boost=6)
    return root


def train_config(
    root: Path, tokenizer: PreTrainedTokenizerBase, model: str, **options: object
) -> dict:
    """`root`/config.yaml for `train`, returned as a dict: the tokenizer and MODELS[`model`] saved
    under `root`, the data `root`/data/train.jsonl, fp32, and `options` over the shared defaults."""
    tokenizer.save_pretrained(root / "tokenizer")
    (root / "tiny.json").write_text(json.dumps(MODELS[model]))
    config = {
        "model_config": str(root / "tiny.json"),
        "tokenizer": str(root / "tokenizer"),
        "data": str(root / "data/train.jsonl"),
        "max_length": 100,
        "learning_rate": 3e-3,
        "warmup_steps": 2,
        "precision": "fp32",
        "seed": 3,
        "deepspeed_config": "ds_configs/zero2.json",
        **options,
    }
    (root / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    return config
