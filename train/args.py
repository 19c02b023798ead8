"""Training options; every field can be set in the YAML config or on the command line."""

from __future__ import annotations

from dataclasses import dataclass, field

from data_tools.prompting import CORRECTION_MARKER


@dataclass
class TrainArgs:
    output_dir: str = field(metadata={"help": "run folder: checkpoints/, export/, wandb/"})
    mode: str = field(
        default="sft", metadata={"help": "sft, bash, scs or rac (see train/__main__.py)"}
    )
    predictions: str | None = field(
        default=None,
        metadata={
            "help": "bash: the model's tokens, from generate --mode teacher_forced (or free)"
        },
    )
    ss_schedule: str = field(
        default="constant",
        metadata={"help": "bash/scs: p over steps: constant, linear, inverse_sigmoid, exponential"},
    )
    ss_p_max: float = field(default=0.25, metadata={"help": "bash/scs: the largest p"})
    ss_warmup_steps: int = field(
        default=0, metadata={"help": "bash/scs: steps of pure ground truth first"}
    )
    ss_ramp_steps: int = field(
        default=100, metadata={"help": "bash/scs, linear: steps from 0 to p_max"}
    )
    ss_k: float = field(default=20.0, metadata={"help": "bash/scs, inverse_sigmoid: k"})
    ss_decay: float = field(
        default=0.99, metadata={"help": "bash/scs, exponential: ground-truth decay"}
    )
    correction_marker: str = field(
        default=CORRECTION_MARKER, metadata={"help": "rac: between draft and reference"}
    )
    deepspeed_config: str = field(
        default="ds_configs/zero2.json", metadata={"help": "a file from ds_configs/"}
    )
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32"}
    )
    eval_data: str | None = field(
        default=None, metadata={"help": "evaluation data; default: the data's eval_split"}
    )
    eval_split: str | None = field(
        default=None, metadata={"help": "split of the data used for evaluation loss"}
    )
    max_eval_examples: int = 512
    micro_batch_size: int = field(
        default=8, metadata={"help": "sequences per process per forward pass"}
    )
    gradient_accumulation_steps: int = 1
    max_steps: int = field(
        default=-1, metadata={"help": "optimizer steps; -1: num_epochs over the data"}
    )
    num_epochs: float = 1.0
    stop_at_step: int = field(
        default=-1,
        metadata={"help": "end this job after this step, with a checkpoint; a rerun continues"},
    )
    learning_rate: float = 3e-4
    lr_scheduler: str = field(default="cosine", metadata={"help": "a transformers scheduler name"})
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    seed: int = 42
    eval_every: int = field(
        default=0, metadata={"help": "steps between evaluations; 0: only at the end"}
    )
    save_every: int = field(
        default=0, metadata={"help": "steps between checkpoints; 0: only at the end"}
    )
    resume: bool = field(
        default=True, metadata={"help": "continue from the latest checkpoint in output_dir"}
    )
    export: bool = field(
        default=True, metadata={"help": "write a Hugging Face model to output_dir/export"}
    )
    wandb_project: str | None = field(
        default=None, metadata={"help": "log to wandb under this project"}
    )
    run_name: str | None = None
    log_file: bool = field(
        default=True, metadata={"help": "also write per-step metrics to output_dir/metrics.jsonl"}
    )

    def __post_init__(self) -> None:
        if self.mode not in ("sft", "bash", "scs", "rac"):
            raise ValueError(f"mode must be sft, bash, scs or rac, got {self.mode!r}")
        if self.mode == "bash" and not self.predictions:
            raise ValueError(
                "mode bash needs predictions: a file from generate --mode teacher_forced"
            )
