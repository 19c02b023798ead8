"""What `generate` feeds the model, built once for the run and its dry run: whole training
sequences (teacher forcing, encoded exactly as `train` encodes them so that the predictions align
with its labels), preference pairs (their reference log-probabilities, encoded as `train --mode
dpo` encodes them), or prompts (free running), with the checks that refuse a run before it
starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from data_tools.preferences import EncodedPair, encode_pairs
from data_tools.schema import Example, Preference
from data_tools.tokenization import Encoded, encode_examples, encode_prompts
from runtime.args import DataArgs


@dataclass(frozen=True)
class Inputs:
    encoded: list[Encoded]  # teacher_forced: prompt + reference, labels on the response
    prompts: list[list[int]]  # free running: the prompts' tokens
    lengths: list[int]  # tokens per input, to batch by length
    prompts_cut: int  # free running: prompts cut to max_prompt_length
    pairs: list[EncodedPair] = field(default_factory=list)  # pair_logps


def check_positions(max_positions: int | None, args: Any, max_length: int) -> None:
    """Refuse inputs the model has no positions for: whole sequences of up to `max_length`
    tokens (teacher forcing, pair log-probabilities), or a prompt budget plus a generation
    budget."""
    if not max_positions:
        return
    if args.teacher_forced or args.pair_logps:
        if max_length > max_positions:
            raise SystemExit(
                f"max_length {max_length} exceeds the model's {max_positions} positions; lower it"
            )
    elif args.max_prompt_length + args.max_new_tokens > max_positions:
        raise SystemExit(
            f"max_prompt_length {args.max_prompt_length} + max_new_tokens {args.max_new_tokens} "
            f"exceed the model's {max_positions} positions; lower one of them"
        )


def build_inputs(
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example] | list[Preference],
    data_args: DataArgs,
    args: Any,
) -> Inputs:
    """The model's inputs for `examples` (pairs with `pair_logps`), `args` being `GenerateArgs`."""
    if args.pair_logps:
        pairs, report = encode_pairs(tokenizer, examples, data_args.max_length, data_args.overlong)
        if report.skipped_ids:
            raise SystemExit(
                f"pair_logps: {report.summary()}; every pair needs its log-probabilities"
            )
        return Inputs([], [], [p.num_tokens for p in pairs], 0, pairs)
    if args.teacher_forced:
        encoded, report = encode_examples(
            tokenizer, examples, data_args.max_length, data_args.overlong
        )
        if report.skipped_ids:
            raise SystemExit(f"teacher_forced: {report.summary()}; every example needs predictions")
        return Inputs(encoded, [], [len(e.input_ids) for e in encoded], 0)
    prompts, n_cut = encode_prompts(tokenizer, [e.prompt for e in examples], args.max_prompt_length)
    return Inputs([], prompts, [len(p) for p in prompts], n_cut)
