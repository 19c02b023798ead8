"""One GPU's figures in one run (bench/gpu_check.sh starts it within 8 minutes on an H200):

    python -m bench.gpu_check --size 1b --output gpu_check.json
    python -m bench.gpu_check --size tiny --output gpu_check.json     (on CPU, as the test does)

1. the peak matmul FLOP/s of this device, measured here (bf16 on GPU), the denominator of MFU;
2. training tokens/s and MFU of a Llama initialised from scratch (~1B at `--size 1b`) under
   ds_configs/zero2.json in one process, for `sdpa` and `eager` attention, each with gradient
   checkpointing off and on;
3. generation tokens/s: greedy static batches (`model.generate`, longest first, `generate`'s
   batch size) and transformers' continuous batching (`generate_batch`) on the same prompts;
4. the forward-only pass that `generate --teacher_forced` makes for BASH, in tokens/s;
5. peak memory of each phase.

MFU counts model FLOPs only: 6 x the weights of every matmul (each nn.Linear, the LM head
included; the input embedding is a lookup) + 12 x layers x hidden x sequence length for the
attention scores (PaLM's convention: the full square, not its causal half). The recomputation
of gradient checkpointing is not counted, so checkpointing lowers MFU by what it costs.
The JSON is rewritten after each phase, so a run cut by the wrapper's timeout keeps what it
measured ("complete": false).
"""

from __future__ import annotations

import gc
import math
import random
import resource
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import deepspeed
import torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, PreTrainedModel

from bench.generation import machine, timed
from data_tools.atomic import write_json
from data_tools.collate import pad_left
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.tokenization import IGNORE_INDEX, Encoded
from generate.args import GenerateArgs
from methods.scheduled_sampling import teacher_forced_predictions
from runtime import distributed
from runtime.ds_config import DTYPES, fill_ds_config, resolve_precision
from runtime.generation import generate_continuous, longest_first
from train.optimizer import param_groups

REPO = Path(__file__).resolve().parents[1]
ZERO2 = str(REPO / "ds_configs/zero2.json")
ATTENTION = ("sdpa", "eager")
PAD = 0  # token ids drawn for prompts and batches start above it
SEED = 0


@dataclass(frozen=True)
class Size:
    model: dict[str, int]
    seq_len: int
    micro_batch_size: int
    prompts: int
    max_prompt_length: int
    max_new_tokens: int
    matmul_n: int


SIZES = {
    # ~0.94B parameters; micro batch 4 x 2048 keeps eager attention without checkpointing in an
    # H100's 80 GB too.
    "1b": Size(
        model=dict(
            hidden_size=2048,
            num_hidden_layers=16,
            num_attention_heads=16,
            intermediate_size=5504,
            vocab_size=32000,
        ),
        seq_len=2048,
        micro_batch_size=4,
        prompts=64,
        max_prompt_length=512,
        max_new_tokens=256,
        matmul_n=8192,
    ),
    "tiny": Size(
        model=dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=172,
            vocab_size=512,
        ),
        seq_len=64,
        micro_batch_size=2,
        prompts=8,
        max_prompt_length=24,
        max_new_tokens=8,
        matmul_n=256,
    ),
}


@dataclass
class GpuCheckArgs:
    output: str = field(metadata={"help": "JSON file of the results (rewritten after each phase)"})
    size: str = field(default="1b", metadata={"help": f"one of {sorted(SIZES)}"})
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 on a GPU that has it, else fp32), bf16, fp32"}
    )
    warmup_steps: int = field(default=3, metadata={"help": "training steps before the timing"})
    steps: int = field(default=20, metadata={"help": "timed training steps per setting"})
    seq_len: int | None = field(default=None, metadata={"help": "default: the size's"})
    micro_batch_size: int | None = field(default=None, metadata={"help": "default: the size's"})
    prompts: int | None = field(default=None, metadata={"help": "default: the size's"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "default: the size's"})

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {self.size!r}")
        if self.precision == "fp16":
            raise ValueError("precision fp16 is not measured here; use bf16 or fp32")
        for name in ("steps", "seq_len", "micro_batch_size", "prompts", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be at least 0, got {self.warmup_steps}")

    def sized(self) -> Size:
        """The size's settings with this run's overrides."""
        overrides = {
            k: getattr(self, k)
            for k in ("seq_len", "micro_batch_size", "prompts", "max_new_tokens")
            if getattr(self, k) is not None
        }
        return replace(SIZES[self.size], **overrides)


def on_gpu() -> bool:
    return torch.cuda.is_available()


def reset_peak() -> None:
    if on_gpu():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> int:
    """Bytes: the phase's peak of tensors on the GPU; on CPU the process's peak RSS so far
    (it never resets, so a later phase reports at least an earlier one's)."""
    if on_gpu():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def free_memory() -> None:
    """Give back what a finished phase held, so that the next one's peak is its own."""
    gc.collect()
    if on_gpu():
        torch.cuda.empty_cache()


def peak_matmul(n: int, dtype: torch.dtype, device: str, repeats: int = 5) -> float:
    """The best FLOP/s of back-to-back n x n matmuls over `repeats` timings: what this device
    reaches at all, rather than a datasheet figure it may not (clocks, power, cooling)."""
    generator = torch.Generator(device=device).manual_seed(SEED)
    a, b = (torch.randn(n, n, dtype=dtype, device=device, generator=generator) for _ in "ab")
    out = torch.empty_like(a)
    iters = max(4, int(1e14 // (2 * n**3))) if on_gpu() else 20  # ~0.1 s a timing on a GPU

    def run() -> None:
        for _ in range(iters):
            torch.matmul(a, b, out=out)

    run()  # warm-up: kernel selection, clocks
    return max(2 * n**3 * iters / timed(run)[1] for _ in range(repeats))


def new_model(config: LlamaConfig, attn: str, dtype: torch.dtype, device: str) -> PreTrainedModel:
    """A model with fresh weights, built on the device (a 1B model initialised on the CPU and
    moved would take longer than its measurement)."""
    torch.manual_seed(SEED)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)


def flops_per_token(model: PreTrainedModel, seq_len: int) -> float:
    """Training FLOPs per token, forward and backward (the module docstring's convention)."""
    c = model.config
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6 * matmul + 12 * c.num_hidden_layers * c.hidden_size * seq_len


def describe(config: LlamaConfig, seq_len: int) -> dict[str, Any]:
    """The model's shape and size, counted on the meta device (no memory, no initialisation)."""
    model = new_model(config, "sdpa", torch.float32, "meta")
    return {
        "config": {
            k: getattr(config, k)
            for k in (
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "intermediate_size",
                "vocab_size",
            )
        },
        "parameters": sum(p.numel() for p in model.parameters()),
        "flops_per_token": flops_per_token(model, seq_len),
    }


def train_rate(
    config: LlamaConfig,
    size: Size,
    args: GpuCheckArgs,
    precision: str,
    attn: str,
    checkpointing: bool,
    world: int,
    peak: float,
) -> dict[str, Any]:
    """Tokens/s and MFU of ZeRO-2 steps (forward, backward, clipping, AdamW) on one fixed batch
    of random ids, as `train` runs them."""
    device = distributed.device()
    reset_peak()
    model = new_model(config, attn, DTYPES[precision], device)
    if checkpointing:
        model.gradient_checkpointing_enable()
    flops = flops_per_token(model, size.seq_len)
    ds_config = fill_ds_config(
        ZERO2,
        micro_batch_size=size.micro_batch_size,
        gradient_accumulation_steps=1,
        world_size=world,
        max_grad_norm=1.0,
        precision=precision,
        hidden_size=config.hidden_size,
    )
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-4, betas=(0.9, 0.95))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    generator = torch.Generator().manual_seed(SEED)
    shape = (size.micro_batch_size, size.seq_len)
    ids = torch.randint(PAD + 1, config.vocab_size, shape, generator=generator).to(engine.device)

    def step() -> float:
        loss = engine(input_ids=ids, labels=ids, use_cache=False).loss
        engine.backward(loss)
        engine.step()
        return loss.item()

    for _ in range(args.warmup_steps):
        step()
    losses, seconds = timed(lambda: [step() for _ in range(args.steps)])
    tokens_per_s = size.micro_batch_size * size.seq_len * args.steps / seconds
    result = {
        "attn_implementation": attn,
        "gradient_checkpointing": checkpointing,
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * flops / peak,
        "step_s": seconds / args.steps,
        "last_loss": losses[-1],
        "peak_memory_bytes": peak_memory(),
    }
    if not math.isfinite(result["last_loss"]):
        raise RuntimeError(
            f"training loss {result['last_loss']} ({attn}, checkpointing {checkpointing})"
        )
    engine.destroy()
    return result  # the engine goes with this frame; the caller then frees its memory


def generation_rates(
    model: PreTrainedModel, size: Size, prompts: list[list[int]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tokens/s of greedy decoding in static batches and with continuous batching, every prompt
    run to max_new_tokens (no EOS: random weights would stop at random)."""
    gen = GenerationConfig(
        do_sample=False, max_new_tokens=size.max_new_tokens, eos_token_id=None, pad_token_id=PAD
    )
    order, batch_size = longest_first([len(p) for p in prompts]), GenerateArgs.batch_size

    def static() -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            inputs = {
                k: v.to(model.device) for k, v in pad_left([prompts[i] for i in batch], PAD).items()
            }
            new = model.generate(**inputs, generation_config=gen)[:, inputs["input_ids"].shape[1] :]
            out.update(zip(batch, new.tolist(), strict=True))
        return [out[i] for i in range(len(prompts))]

    reset_peak()
    with torch.no_grad():
        model.generate(torch.tensor([prompts[0]], device=model.device), generation_config=gen)
        static_out, seconds = timed(static)
    tokens = sum(map(len, static_out))
    static_result = {
        "batch_size": batch_size,
        "new_tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "peak_memory_bytes": peak_memory(),
    }
    free_memory()
    return static_result, continuous_rate(model, gen, prompts, static_out)


def continuous_rate(
    model: PreTrainedModel,
    gen: GenerationConfig,
    prompts: list[list[int]],
    static_out: list[list[int]],
) -> dict[str, Any]:
    """Continuous batching on the same prompts, as `generate --continuous_batching` runs it, or
    "unavailable" with the reason. The first call builds the manager (sized for this workload)
    and warms it up (CUDA graphs); the second, timed, reuses it."""
    if not hasattr(model, "generate_batch"):
        return unavailable(f"transformers {transformers.__version__} has no generate_batch")

    def run() -> list[list[int]]:
        return generate_continuous(model, prompts, gen, persistent=True)

    reset_peak()
    try:
        _, warmup_s = timed(run)
        new, seconds = timed(run)
    except Exception as e:  # an API this version lacks or breaks on this device is the finding
        return unavailable(f"continuous batching raised {type(e).__name__}: {e}")
    finally:
        model.destroy_cached_continuous_batching_manager()
    tokens = sum(map(len, new))
    result = {
        "status": "ok",
        "new_tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "warmup_s": warmup_s,
        "same_as_static": sum(a == b for a, b in zip(new, static_out, strict=True)) / len(new),
        "peak_memory_bytes": peak_memory(),
    }
    free_memory()
    return result


def unavailable(reason: str) -> dict[str, str]:
    return {"status": "unavailable", "reason": reason}


def teacher_forced_rate(
    model: PreTrainedModel, size: Size, prompts: list[list[int]], rng: random.Random
) -> dict[str, Any]:
    """Tokens/s (prompt + response) of BASH's prediction pass, `teacher_forced_predictions` on
    batches of `generate`'s batch size, exactly as `generate --teacher_forced` calls it."""
    examples = []
    for i, p in enumerate(prompts):
        response = [
            rng.randrange(PAD + 1, model.config.vocab_size) for _ in range(size.max_new_tokens)
        ]
        examples.append(Encoded(str(i), p + response, [IGNORE_INDEX] * len(p) + response))
    batch_size = GenerateArgs.batch_size

    def run() -> None:
        for start in range(0, len(examples), batch_size):
            teacher_forced_predictions(model, examples[start : start + batch_size], PAD)

    reset_peak()
    with torch.no_grad():
        teacher_forced_predictions(model, examples[:1], PAD)  # warm-up
        _, seconds = timed(run)
    tokens = sum(len(e.input_ids) for e in examples)
    result = {
        "batch_size": batch_size,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "peak_memory_bytes": peak_memory(),
    }
    free_memory()
    return result


def ratios(training: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The comparisons the check is for, each against its baseline of the same run."""
    by = {(r["attn_implementation"], r["gradient_checkpointing"]): r for r in training}
    return {
        "sdpa_over_eager_tokens_per_s": {
            f"checkpointing_{'on' if c else 'off'}": by["sdpa", c]["tokens_per_s"]
            / by["eager", c]["tokens_per_s"]
            for c in (False, True)
        },
        "checkpointing_on_over_off": {
            attn: {
                "tokens_per_s": by[attn, True]["tokens_per_s"] / by[attn, False]["tokens_per_s"],
                "peak_memory": by[attn, True]["peak_memory_bytes"]
                / by[attn, False]["peak_memory_bytes"],
            }
            for attn in ATTENTION
        },
    }


def table(result: dict[str, Any]) -> str:
    gib = 2**30
    rows = ["| phase | setting | tokens/s | MFU | peak memory (GiB) |", "|---|---|---:|---:|---:|"]
    for r in result.get("training", []):
        setting = f"{r['attn_implementation']}, checkpointing {'on' if r['gradient_checkpointing'] else 'off'}"
        rows.append(
            f"| training, ZeRO-2 | {setting} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} "
            f"| {r['peak_memory_bytes'] / gib:.2f} |"
        )
    phases: list[tuple[str, str, dict | None]] = [
        ("generation", "static batches, greedy", result.get("generation", {}).get("static")),
        ("generation", "continuous batching", result.get("generation", {}).get("continuous")),
        ("BASH teacher-forced pass", "forward only", result.get("teacher_forced")),
    ]
    for phase, setting, r in phases:
        if r is None:
            continue
        if r.get("status") == "unavailable":
            rows.append(f"| {phase} | {setting} | unavailable: {r['reason']} | | |")
        else:
            memory = f"{r['peak_memory_bytes'] / gib:.2f}"
            rows.append(f"| {phase} | {setting} | {r['tokens_per_s']:,.0f} | | {memory} |")
    flops = result["peak_matmul"]["flops_per_s"]
    lines = [
        f"{result['device']}; {result['precision']}; {result['model']['parameters'] / 1e6:,.1f}M "
        f"parameters; peak matmul {flops / 1e12:.2f} TFLOP/s (measured)",
        "",
        *rows,
    ]
    if "ratios" in result:
        r = result["ratios"]
        lines.append(
            "\nsdpa / eager tokens/s: "
            + ", ".join(
                f"{k.replace('_', ' ')} {v:.2f}"
                for k, v in r["sdpa_over_eager_tokens_per_s"].items()
            )
        )
        for attn, v in r["checkpointing_on_over_off"].items():
            lines.append(
                f"checkpointing on / off, {attn}: tokens/s {v['tokens_per_s']:.2f}, "
                f"peak memory {v['peak_memory']:.2f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((GpuCheckArgs,), argv)  # drops the launcher's --local_rank
    started = time.perf_counter()
    _, world = distributed.init()
    size, precision, device = args.sized(), resolve_precision(args.precision), distributed.device()
    dtype = DTYPES[precision]
    rng = random.Random(SEED)
    config = LlamaConfig(
        **size.model,
        num_key_value_heads=size.model["num_attention_heads"],
        max_position_embeddings=max(size.seq_len, size.max_prompt_length + size.max_new_tokens),
        tie_word_embeddings=False,
        pad_token_id=PAD,
    )
    result: dict[str, Any] = {
        "complete": False,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": machine(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "deepspeed": deepspeed.__version__,
        },
        "size": args.size,
        "precision": precision,
        "settings": {
            "seq_len": size.seq_len,
            "micro_batch_size": size.micro_batch_size,
            "warmup_steps": args.warmup_steps,
            "steps": args.steps,
            "deepspeed_config": "ds_configs/zero2.json",
            "world_size": world,
            "prompts": size.prompts,
            "max_prompt_length": size.max_prompt_length,
            "max_new_tokens": size.max_new_tokens,
        },
        "model": describe(config, size.seq_len),
        "peak_memory_kind": (
            "torch.cuda.max_memory_allocated per phase"
            if on_gpu()
            else "process peak RSS so far (ru_maxrss; never resets)"
        ),
    }

    def save(key: str, value: Any) -> None:
        result[key] = value
        write_json(args.output, result)

    reset_peak()
    flops = peak_matmul(size.matmul_n, dtype, device)
    save("peak_matmul", {"n": size.matmul_n, "dtype": str(dtype), "flops_per_s": flops})
    training: list[dict[str, Any]] = []
    for attn in ATTENTION:
        for checkpointing in (False, True):
            training.append(
                train_rate(config, size, args, precision, attn, checkpointing, world, flops)
            )
            free_memory()
            save("training", training)
    save("ratios", ratios(training))

    model = new_model(config, "sdpa", dtype, device).eval()
    low = max(1, size.max_prompt_length // 4)
    prompts = [
        [
            rng.randrange(PAD + 1, config.vocab_size)
            for _ in range(rng.randint(low, size.max_prompt_length))
        ]
        for _ in range(size.prompts)
    ]
    # Before generation: continuous batching may switch the model's attention (to flash).
    save("teacher_forced", teacher_forced_rate(model, size, prompts, rng))
    static, continuous = generation_rates(model, size, prompts)
    save("generation", {"static": static, "continuous": continuous})
    phases = [*training, static, continuous, result["teacher_forced"]]
    result["peak_memory_bytes"] = max(p.get("peak_memory_bytes", 0) for p in phases)
    result["wall_s"] = time.perf_counter() - started
    save("complete", True)
    print(table(result))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    run_tool(main)
