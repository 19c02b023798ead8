"""Batched decoding whose output for an example depends on that example alone.

Greedy decoding is per-row already. Sampling is made so by `SeededSampler`: each row draws from
its own `torch.Generator`, seeded from (seed, example id), once per decoding step, so a sampled
generation is the same whatever the batch it lands in, its position there, or the number of
ranks. The sampler runs as the last logits processor of HF's greedy loop and hands back logits
whose argmax is the sampled token, so HF still does the KV cache, padding and stopping.

"The same" is exact in fp32. In bf16 (on GPU) a different padding width can round logits
differently and, rarely, flip a near-tie; that is true of any batched bf16 decoding.

Greedy decoding can also run with transformers' continuous batching (`generate_batch`, paged
attention): a finished row's slot takes the next prompt instead of waiting for the batch's
longest answer. Its outputs are one-by-one greedy decoding's (tested); whether it is faster is
the device's to say (`bench/gpu_check.sh` measures both; on CPU it was far slower,
bench/RESULTS.md), so it is an option, off by default.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from data_tools.collate import pad_left


def example_seed(seed: int, example_id: str) -> int:
    """A 63-bit seed from the run's seed and an example id, stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}\x00{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class SeededSampler(LogitsProcessor):
    """Sample each row with temperature and top-p (nucleus) from its own generator.

    One uniform number is drawn per row per step (inverse-CDF sampling over the probabilities
    sorted stably in descending order), so a row's draws never depend on the other rows. The
    generators live on the CPU: the same draws on any device, one small copy per step.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature, self.top_p = temperature, top_p
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} seeds for a batch of {scores.shape[0]} rows")
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        before = probs.cumsum(-1) - probs  # mass of the more likely tokens
        if self.top_p < 1:
            probs = probs.masked_fill(before >= self.top_p, 0.0)  # the most likely one stays
        cdf = probs.cumsum(-1)
        u = torch.stack([torch.rand((), generator=g) for g in self.generators]).to(cdf.device)
        pick = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1).contiguous(), right=True)
        kept = (probs > 0).sum(-1, keepdim=True)
        token = order.gather(-1, torch.minimum(pick, kept - 1))
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's EOS and any the model's generation config adds (chat models often have two)."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    return sorted({tokenizer.eos_token_id, *ids})


@torch.no_grad()
def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    seeds: Sequence[int] | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    continuous: bool = False,
) -> list[list[int]]:
    """New token ids for each prompt, left-padded into one batch: greedy, or sampled when
    `seeds` (one per prompt) are given; greedy with `continuous` batching instead. Each list ends
    at the first EOS, which it keeps, so a generation that stopped can be told from one cut by
    `max_new_tokens`."""
    stop = eos_ids(model, tokenizer)
    if continuous:
        if seeds is not None:
            raise ValueError(
                "continuous batching decodes greedily here: it would drop the per-example "
                "seeded sampler"
            )
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=stop,
            pad_token_id=tokenizer.pad_token_id,
        )
        return [_cut_at_eos(row, stop) for row in generate_continuous(model, prompts, config)]
    inputs = {k: v.to(model.device) for k, v in pad_left(prompts, tokenizer.pad_token_id).items()}
    processors = LogitsProcessorList()
    if seeds is not None:
        processors.append(SeededSampler(seeds, temperature, top_p))
    out = model.generate(
        **inputs,
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=stop,
        pad_token_id=tokenizer.pad_token_id,
        logits_processor=processors,
    )
    new = out[:, inputs["input_ids"].shape[1] :].tolist()
    return [_cut_at_eos(row, stop) for row in new]


def generate_continuous(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    persistent: bool = False,
) -> list[list[int]]:
    """The new tokens of each prompt, in order, from transformers' continuous batching under
    `config`; a request that failed (which `generate_batch` logs rather than raises) raises.
    `persistent` keeps the manager for the next call (`model.
    destroy_cached_continuous_batching_manager()` ends it)."""
    sizes = {}
    if model.device.type == "cpu":
        # Its automatic sizing takes a share of free memory, on CPU of the host's RAM (14 GiB
        # for a 2-layer toy model): size the cache for these prompts instead.
        longest = max(map(len, prompts)) + config.max_new_tokens
        pages = -(-longest // ContinuousBatchingConfig.page_size)
        sizes = {"num_blocks": len(prompts) * pages, "max_batch_tokens": 512}
    results = model.generate_batch(
        [list(p) for p in prompts],
        generation_config=config,
        continuous_batching_config=ContinuousBatchingConfig(**sizes),
        persistent_manager=persistent,
    )
    outputs = list(results.values())  # in the order of `prompts`
    failed = [o for o in outputs if o.error is not None or not o.is_finished()]
    if len(outputs) != len(prompts) or failed:
        reason = failed[0].error if failed else "requests missing from its results"
        raise RuntimeError(
            f"continuous batching: {len(failed) or len(prompts) - len(outputs)} of "
            f"{len(prompts)} requests failed: {reason}"
        )
    return [list(o.generated_tokens) for o in outputs]


def _cut_at_eos(ids: list[int], stop: Sequence[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in stop:
            return ids[: i + 1]
    return ids


def longest_first(lengths: Sequence[int]) -> list[int]:
    """Indices by decreasing length (input order among equals): consecutive slices make batches
    with little padding, and an out-of-memory error shows in the first batch."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])
