"""Options that `train` and `generate` share: which model, which data."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from transformers.utils import is_flash_attn_2_available

from data_tools.preferences import load_preferences
from data_tools.schema import TASKS, Example, Preference
from data_tools.sources import load_examples

ATTENTION = ("sdpa", "eager", "flash_attention_2")


@dataclass
class ModelArgs:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "hub name or local folder of a pretrained causal LM (safetensors)"},
    )
    model_config: str | None = field(
        default=None,
        metadata={
            "help": "JSON config of a new, randomly initialised model (e.g. configs/models/tiny-llama.json)"
        },
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer; default: model_name_or_path"}
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={
            "help": "sdpa (PyTorch's fused attention), eager, or flash_attention_2 (GPUs, with "
            "the flash-attn package); packed rows stay block-diagonal under each"
        },
    )

    def __post_init__(self) -> None:
        if self.attn_implementation not in ATTENTION:
            raise ValueError(
                f"attn_implementation {self.attn_implementation!r}: choose one of {ATTENTION}"
            )
        if self.attn_implementation == "flash_attention_2" and not is_flash_attn_2_available():
            raise ValueError(
                "attn_implementation flash_attention_2 needs a CUDA GPU and the flash-attn "
                "package (pip install flash-attn); sdpa runs everywhere"
            )

    def tokenizer_path(self) -> str:
        path = self.tokenizer or self.model_name_or_path
        if path is None:
            raise SystemExit("a model from model_config needs --tokenizer")
        return path


@dataclass
class DataArgs:
    data: str = field(
        metadata={"help": "hub dataset name, or a local .jsonl / .json / .parquet file"}
    )
    data_name: str | None = field(default=None, metadata={"help": "hub dataset config name"})
    split: str = "train"
    data_format: str = field(
        default="auto", metadata={"help": "gsm8k, tldr, messages, alpaca, plain, or auto"}
    )
    task: str = field(default="math", metadata={"help": ", ".join(TASKS)})
    limit: int | None = field(default=None, metadata={"help": "use only the first N examples"})
    skip_invalid: bool = field(
        default=False, metadata={"help": "skip (and count) invalid rows instead of failing"}
    )
    max_length: int = field(
        default=512, metadata={"help": "tokens per sequence (prompt + response)"}
    )
    overlong: str = field(
        default="truncate",
        metadata={"help": "truncate (cut the prompt from the left), error, or skip"},
    )

    def load(self, data: str | None = None, split: str | None = None) -> list[Example]:
        """The training examples; with `data` or `split`, evaluation examples, which `limit`
        does not cut and, from another source than the training data, whose format is detected
        (the training data may be RAC samples, the evaluation data the task's own)."""
        source = data or self.data
        loader = functools.partial(
            load_examples,
            task=self.task,
            format="auto" if source != self.data else self.data_format,
        )
        return self._read(loader, data, split)

    def load_preferences(
        self, data: str | None = None, split: str | None = None
    ) -> list[Preference]:
        """The preference pairs (DPO), training or, with `data` or `split`, evaluation ones, as
        `load` reads examples."""
        return self._read(load_preferences, data, split)

    def _read(
        self, loader: Callable[..., tuple[list, int]], data: str | None, split: str | None
    ) -> list:
        source = data or self.data
        evaluation = data is not None or split is not None
        records, skipped = loader(
            source,
            name=self.data_name if source == self.data else None,
            split=split or self.split,
            limit=None if evaluation else self.limit,
            skip_invalid=self.skip_invalid,
        )
        if skipped:
            print(f"{source}: skipped {skipped} invalid rows (skip_invalid is set)", flush=True)
        return records
