"""The model's own tokens under teacher forcing: one forward pass over prompt + reference gives,
at every response position, the token the model would have put there. BASH stores them offline
(`generate --mode teacher_forced`); online scheduled sampling computes them at every step."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from data_tools.collate import pad_right
from data_tools.tokenization import IGNORE_INDEX, Encoded


@torch.no_grad()
def teacher_forced_predictions(
    model: torch.nn.Module,
    batch: Sequence[Encoded],
    pad_id: int,
    temperature: float = 0.0,
    seeds: Sequence[int] | None = None,
) -> list[list[int]]:
    """For each example, the model's token at each of its response positions (labels != -100):
    the argmax (temperature 0), or a sample at `temperature` from the example's own generator
    (one seed per example), so that the result does not depend on the batch."""
    inputs = pad_right(batch, pad_id)
    device = next(model.parameters()).device
    logits = model(
        input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device)
    ).logits
    # The logits at position t predict the token at t + 1.
    logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1).float().cpu()
    out = []
    for i, e in enumerate(batch):
        positions = torch.tensor([t for t, label in enumerate(e.labels) if label != IGNORE_INDEX])
        rows = logits[i, positions]
        if temperature == 0:
            out.append(rows.argmax(-1).tolist())
        else:
            generator = torch.Generator().manual_seed(seeds[i])
            probs = torch.softmax(rows / temperature, dim=-1)
            out.append(torch.multinomial(probs, 1, generator=generator).squeeze(-1).tolist())
    return out
