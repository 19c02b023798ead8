"""Train a sentencepiece tokenizer on the training text and save it for `AutoTokenizer`.

Digits are split into single tokens (as in Llama), so that numbers are spelled digit by digit;
byte fallback keeps every unseen character encodable.

    python -m data_tools.tokenizer_training --data runs/demo/data/train.jsonl --out runs/demo/tokenizer
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from data_tools.atomic import atomic_dir

SPECIAL = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def train_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 512
) -> PreTrainedTokenizerBase:
    """Train a BPE sentencepiece model on `texts` and save it as a Llama tokenizer in `out_dir`."""
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
            user_defined_symbols=["\n"],
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
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield from (v for v in json.loads(line).values() if isinstance(v, str))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", nargs="+", required=True, help="jsonl files to train on")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=512)
    args = p.parse_args()
    tokenizer = train_tokenizer(_texts(args.data), args.out, args.vocab_size)
    print(f"saved a {len(tokenizer)}-token tokenizer to {args.out}")


if __name__ == "__main__":
    main()
