"""Train a sentencepiece tokenizer on the training text and save it for `AutoTokenizer`.

Digits are split into single tokens (as in Llama), so that numbers are spelled digit by digit;
byte fallback keeps every unseen character encodable. `--symbols` are kept as one token each,
for strings a method adds to the task's text after the tokenizer is trained (RAC's marker and
confirmation), which it would otherwise spell in one- and two-character pieces.

    python -m data_tools.tokenizer_training --data runs/demo/data/train.jsonl \\
        --output_dir runs/demo/tokenizer [--vocab_size 512]
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sentencepiece as spm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from data_tools.atomic import atomic_dir
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.schema import DataError
from data_tools.sources import jsonl_objects

SPECIAL = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def train_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 512, symbols: Sequence[str] = ()
) -> PreTrainedTokenizerBase:
    """Train a BPE sentencepiece model on `texts` and save it as a Llama tokenizer in `out_dir`;
    each of `symbols` one token wherever its text occurs (transformers loads sentencepiece's
    user-defined pieces as added tokens, matched in the raw text)."""
    with tempfile.TemporaryDirectory() as tmp:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_prefix=f"{tmp}/spm",
            vocab_size=vocab_size,
            model_type="bpe",
            split_digits=True,
            byte_fallback=True,
            hard_vocab_limit=False,
            remove_extra_whitespaces=False,
            user_defined_symbols=["\n", *symbols],
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            minloglevel=2,
        )
        src = Path(tmp) / "hf"
        src.mkdir()
        (src / "tokenizer.model").write_bytes(Path(f"{tmp}/spm.model").read_bytes())
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "add_bos_token": True,
            "add_eos_token": False,
        }
        (src / "tokenizer_config.json").write_text(json.dumps({**config, **SPECIAL}))
        tokenizer = AutoTokenizer.from_pretrained(src)
    with atomic_dir(out_dir) as tmp_out:
        tokenizer.save_pretrained(tmp_out)
    return tokenizer


def _texts(paths: list[str]) -> Iterable[str]:
    """Every string field of every jsonl row: prompts and references alike."""
    for path in paths:
        for _, row in jsonl_objects(path):  # a bad line is a DataError naming it
            yield from (v for v in row.values() if isinstance(v, str))


@dataclass
class TokenizerArgs:
    data: list[str] = field(metadata={"help": "jsonl files to train on"})
    output_dir: str = field(metadata={"help": "folder for the tokenizer (AutoTokenizer's files)"})
    vocab_size: int = field(
        default=512, metadata={"help": "tokens in the vocabulary (a target, not a hard limit)"}
    )
    symbols: list[str] = field(
        default_factory=list, metadata={"help": "strings to keep as one token each"}
    )

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be at least 1, got {self.vocab_size}")


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((TokenizerArgs,), argv)
    # Read (and checked) first: sentencepiece turns an error in its input into a RuntimeError.
    texts = list(_texts(args.data))
    if not texts:
        raise DataError(", ".join(args.data), None, "no text to train on")
    tokenizer = train_tokenizer(texts, args.output_dir, args.vocab_size, args.symbols)
    print(f"saved a {len(tokenizer)}-token tokenizer to {args.output_dir}")


if __name__ == "__main__":
    run_tool(main)
