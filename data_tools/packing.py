"""Sequence packing: several encoded examples in one row, so that a micro-batch is mostly tokens,
not padding, with the same loss as the examples padded one per row.

Each example keeps its own positions (`position_ids` restart at 0 at its first token) and sees
only itself: given `position_ids`, no `attention_mask` and no cache (the training loop passes
`use_cache=False`; a cache disables it), transformers builds a block-diagonal causal mask from
the restarts (`transformers.masking_utils.find_packed_sequence_indices`). The loss shifts the
labels inside the model (the logits at t predict the label at t + 1), so the last token of an
example would be trained to predict the first token of the next: each example's first label is
set to -100. Unpacked, that label is never a target either (no position precedes it), so the
targets are exactly the same. Packing works on `Encoded` examples, after BASH's interleaving and
RAC's encoding, and changes neither their inputs nor their labels otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from data_tools.tokenization import IGNORE_INDEX, Encoded


@dataclass
class PackedRow:
    ids: list[str] = field(default_factory=list)
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)

    def add(self, e: Encoded) -> None:
        self.ids.append(e.id)
        self.input_ids += e.input_ids
        self.labels += [IGNORE_INDEX] + e.labels[1:]
        self.position_ids += range(len(e.input_ids))


def pack(examples: Sequence[Encoded], max_length: int) -> list[PackedRow]:
    """Rows of at most `max_length` tokens, filled first-fit in the examples' order (each goes
    into the first row with room for it, else a new row), so the result depends only on the
    examples. An example longer than `max_length` is refused."""
    rows: list[PackedRow] = []
    for e in examples:
        if len(e.input_ids) > max_length:
            raise ValueError(
                f"example {e.id!r}: {len(e.input_ids)} tokens do not fit a packed row of "
                f"{max_length} (raise packing_length)"
            )
        row = next((r for r in rows if len(r.input_ids) + len(e.input_ids) <= max_length), None)
        if row is None:
            row = PackedRow()
            rows.append(row)
        row.add(e)
    return rows


def pad_packed(rows: Sequence[PackedRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Tensors for the model: input_ids, labels, position_ids, and no attention_mask (the
    restarts of position_ids say which tokens see which). A row's padding is a block of its
    own (its positions restart at 0), with labels -100."""
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.arange(width).repeat(len(rows), 1)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        input_ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        position_ids[i, :n] = torch.tensor(r.position_ids)
        position_ids[i, n:] = torch.arange(width - n)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def pack_batch(batch: Sequence[Encoded], pad_id: int, max_length: int) -> dict[str, torch.Tensor]:
    """The collate hook: `batch` packed into rows of `max_length`, as tensors."""
    return pad_packed(pack(batch, max_length), pad_id)
