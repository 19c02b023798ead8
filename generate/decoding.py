"""The model as the diagnostics that continue its own text decode with it."""

from __future__ import annotations

from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from runtime import distributed
from runtime.args import ModelArgs
from runtime.ds_config import DTYPES, resolve_precision
from runtime.generation import eos_ids
from runtime.modeling import load_model


def greedy_decoder(
    tokenizer: PreTrainedTokenizerBase, model_args: ModelArgs, precision: str
) -> PreTrainedModel:
    """`model_args`' model on this rank's device, in eval mode, decoding greedily with plain
    options rather than a checkpoint's defaults (sampling, penalties)."""
    model = load_model(
        tokenizer,
        model_args.model_name_or_path,
        model_args.model_config,
        dtype=DTYPES[resolve_precision(precision)],
        attn_implementation=model_args.attn_implementation,
    )
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    return model.to(distributed.device()).eval()
