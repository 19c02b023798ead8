"""The order of training data, a pure function of (seed, step).

Every rank knows every global batch, so a resumed run sees exactly the batches the uninterrupted
run would have, and each rank can count the trained tokens of the whole global batch (for a
loss averaged over tokens, not over micro-batches) without communicating.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchPlan:
    num_examples: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    world_size: int
    seed: int

    def __post_init__(self) -> None:
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{self.num_examples} training examples do not fill one global batch of "
                f"{self.global_batch_size} (micro_batch_size x gradient_accumulation_steps x world size)"
            )

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch_size  # the incomplete last batch is left out

    def global_indices(self, step: int) -> list[int]:
        epoch, within = divmod(step, self.steps_per_epoch)
        order = torch.randperm(
            self.num_examples, generator=torch.Generator().manual_seed(self.seed + epoch)
        )
        return order[
            within * self.global_batch_size : (within + 1) * self.global_batch_size
        ].tolist()

    def micro_indices(self, global_indices: list[int], micro_step: int, rank: int) -> list[int]:
        start = (micro_step * self.world_size + rank) * self.micro_batch_size
        return global_indices[start : start + self.micro_batch_size]
