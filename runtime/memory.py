"""Memory per rank for a model's states (parameters, gradients, optimizer states) under DeepSpeed,
as the engine allocates them; activations and buffers of the order of a bucket are left out.

Bytes per parameter, `b` being 2 (bf16, fp16) or 4 (fp32) and W the world size, read from
DeepSpeed 0.19 (runtime/engine.py, fp16/unfused_optimizer.py, zero/stage_1_and_2.py, stage3.py)
and measured (tests/test_dry_run.py):

| stage | parameters | gradients | fp32 master copy | Adam (exp_avg, exp_avg_sq) |
|---|---|---|---|---|
| 0 | b | b | 4 if b = 2, else none (the optimizer updates the weights) | 8 |
| 1 | b | b, or b/W without accumulation (reduced at each boundary) | 4/W | 8/W |
| 2 | b | b/W | 4/W | 8/W |
| 3 | b/W | b/W | 4/W | 8/W |

ZeRO 1-3 keep the fp32 master partition even in fp32 runs (stage 1/2 clone it from the flat
parameters, stage 3 converts its partition). DeepSpeed's `estimate_zero2/3_model_states_mem_needs`
assume mixed precision and would be wrong for fp32. Frozen parameters (LoRA's base) take
parameter memory only. With `offload_optimizer`, master copy, Adam states and an fp32 gradient
partition live in CPU memory instead (and stage 3's gradient partition too); with
`offload_param` (stage 3) the parameter partition does.
"""

from __future__ import annotations

from dataclasses import dataclass

BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank of each kind of state, on the device and in CPU memory."""

    device: dict[str, float]
    host: dict[str, float]

    @property
    def device_total(self) -> float:
        return sum(self.device.values())

    @property
    def host_total(self) -> float:
        return sum(self.host.values())

    def describe(self) -> str:
        def parts(d: dict[str, float]) -> str:
            return ", ".join(f"{k} {gib(v)}" for k, v in d.items() if v)

        text = f"{gib(self.device_total)} on the device ({parts(self.device)})"
        if self.host_total:
            text += f"; {gib(self.host_total)} in CPU memory ({parts(self.host)})"
        return text


def gib(n: float) -> str:
    return f"{n / 2**30:.3f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def model_states(
    num_params: int,
    trainable: int,
    *,
    stage: int,
    precision: str,
    world_size: int,
    gradient_accumulation_steps: int = 1,
    offload_optimizer: bool = False,
    offload_param: bool = False,
) -> MemoryEstimate:
    """The bytes of parameters, gradients, master copy and Adam states on one rank."""
    b, w = BYTES[precision], world_size
    if stage == 0:
        grads, master, adam = b * trainable, (4 * trainable if b == 2 else 0), 8 * trainable
    else:
        shard = 1 if stage == 1 and gradient_accumulation_steps > 1 else w
        grads, master, adam = b * trainable / shard, 4 * trainable / w, 8 * trainable / w
    params = b * num_params / (w if stage == 3 else 1)
    device = {"parameters": params, "gradients": grads, "master": master, "adam": adam}
    host: dict[str, float] = {}
    if offload_optimizer and stage > 0:
        host = {"master": device.pop("master"), "adam": device.pop("adam")}
        host["fp32 gradients"] = 4 * trainable / w
        if stage == 3:
            host["gradients"] = device.pop("gradients")
    if offload_param and stage == 3:
        host["parameters"] = device.pop("parameters")
    return MemoryEstimate(device, host)
