"""Models and tokenizers: pretrained (hub name or local path) or new from a config file."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from runtime import lora
from runtime.args import ModelArgs


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A tokenizer with a pad token (EOS stands in when the model has none, as for Llama)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {name_or_path} has no EOS token; generation could not stop")
    return tokenizer


def load_pretrained(
    name_or_path: str,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = ModelArgs.attn_implementation,
) -> PreTrainedModel:
    """A causal LM from a hub name or folder: a full model, or a LoRA adapter merged into its base."""
    if lora.is_adapter(name_or_path):
        return lora.load_merged(name_or_path, dtype, attn_implementation)
    return AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=dtype, use_safetensors=True, attn_implementation=attn_implementation
    )


def load_model(
    tokenizer: PreTrainedTokenizerBase,
    name_or_path: str | None = None,
    config_file: str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    attn_implementation: str = ModelArgs.attn_implementation,
) -> PreTrainedModel:
    """Pretrained weights from `name_or_path` (safetensors only; a LoRA adapter folder loads
    as its base with the adapter merged in), or a new model initialised from the JSON
    `config_file` with the tokenizer's vocabulary and special tokens; attention as
    `attn_implementation` says (ModelArgs)."""
    if (name_or_path is None) == (config_file is None):
        raise ValueError("give exactly one of model_name_or_path and model_config")
    if name_or_path is not None:
        return load_pretrained(name_or_path, dtype, attn_implementation)
    values = json.loads(Path(config_file).read_text(encoding="utf-8"))
    values.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = AutoConfig.for_model(**values)
    torch.manual_seed(seed)  # the same initial weights on every rank and in every test
    return AutoModelForCausalLM.from_config(
        config, dtype=dtype, attn_implementation=attn_implementation
    )
