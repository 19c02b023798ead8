"""Generation options; every field can be set in the YAML config or on the command line."""

from __future__ import annotations

from dataclasses import dataclass, field

from methods.correction import CORRECTION_MARKER


@dataclass
class GenerateArgs:
    output: str = field(
        metadata={"help": "jsonl of generations; <output>.parts/ holds the work of unfinished runs"}
    )
    batch_size: int = field(default=32, metadata={"help": "prompts per forward pass, per rank"})
    max_prompt_length: int = field(
        default=256, metadata={"help": "prompt tokens kept; longer prompts are cut from the left"}
    )
    max_new_tokens: int = 256
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding"})
    temperature: float = field(default=1.0, metadata={"help": "with do_sample only"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling, with do_sample only"})
    seed: int = field(
        default=0,
        metadata={"help": "with the example id, seeds each example's sampling (and a new model)"},
    )
    teacher_forced: bool = field(
        default=False,
        metadata={
            "help": "instead of generating from the prompt, the model's token at every reference "
            "position, from one forward pass over prompt + reference (BASH's predictions)"
        },
    )
    pair_logps: bool = field(
        default=False,
        metadata={
            "help": "data of preference pairs: the model's log-probabilities of each pair's chosen"
            " and rejected responses, from one forward pass (DPO's reference, for train --mode dpo)"
        },
    )
    num_samples: int = field(
        default=1, metadata={"help": "generations per prompt (with do_sample)"}
    )
    continuous_batching: bool = field(
        default=False,
        metadata={
            "help": "greedy decoding with transformers' continuous batching (paged attention): "
            "a finished answer's slot takes the next prompt; the same outputs; measure it on "
            "your GPU (bench/gpu_check.sh) before turning it on (on CPU it is far slower)"
        },
    )
    self_correct: bool = field(
        default=False,
        metadata={"help": "generate a draft, append the correction marker, generate again"},
    )
    correction_marker: str = field(
        default=CORRECTION_MARKER, metadata={"help": "RAC's correction marker"}
    )
    confirm_threshold: float | None = field(
        default=None,
        metadata={
            "help": "self_correct: confirm a draft without a second pass where the model's "
            "probability of the confirmation is at least this (default: always a second pass)"
        },
    )
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32"}
    )
    wandb_project: str | None = field(
        default=None, metadata={"help": "log the output file to wandb (an artifact)"}
    )
    wandb_group: str | None = field(default=None, metadata={"help": "wandb group"})
    run_name: str | None = field(
        default=None, metadata={"help": "wandb run name (default: the output's file name)"}
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "check and print the plan (data, memory, paths); write nothing"},
    )

    def __post_init__(self) -> None:
        if self.num_samples < 1 or (self.num_samples > 1 and not self.do_sample):
            raise ValueError(
                f"num_samples={self.num_samples} needs do_sample (greedy samples are all alike)"
            )
        if self.teacher_forced and (self.self_correct or self.num_samples > 1):
            raise ValueError(
                "teacher_forced makes one prediction per position: no self_correct or num_samples"
            )
        if self.pair_logps and (
            self.teacher_forced or self.self_correct or self.do_sample or self.num_samples > 1
        ):
            raise ValueError(
                "pair_logps scores the pairs' own responses: no teacher_forced, self_correct, "
                "do_sample or num_samples"
            )
        if self.continuous_batching and (self.do_sample or self.teacher_forced or self.pair_logps):
            raise ValueError(
                "continuous_batching decodes greedily: no do_sample (its seeded sampler would be "
                "dropped), teacher_forced or pair_logps (one forward pass, nothing decoded)"
            )
        if self.confirm_threshold is not None and not (
            self.self_correct and 0 <= self.confirm_threshold <= 1
        ):
            raise ValueError(
                f"confirm_threshold gates self_correct's second pass: a probability in [0, 1] "
                f"with self_correct, got {self.confirm_threshold}"
            )
        if self.teacher_forced and self.top_p != 1.0:
            raise ValueError("teacher_forced sampling uses temperature only; leave top_p at 1.0")
        for name in ("batch_size", "max_prompt_length", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.do_sample:
            if self.temperature <= 0:
                raise ValueError(
                    f"temperature must be > 0 with do_sample, got {self.temperature} "
                    "(for greedy decoding, leave do_sample off)"
                )
            if not 0 < self.top_p <= 1:
                raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        elif (self.temperature, self.top_p) != (1.0, 1.0):
            raise ValueError(
                f"temperature={self.temperature} and top_p={self.top_p} apply only when sampling: "
                "set do_sample to sample, or leave them at 1.0 for greedy decoding"
            )
