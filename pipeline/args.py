"""Pipeline options: one YAML file says the whole comparison."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

METHODS = ("sft", "bash", "rac", "scs")


@dataclass
class PipelineArgs:
    run_dir: str = field(metadata={"help": "everything goes here; a rerun skips finished stages"})
    nproc: int = field(
        default=2, metadata={"help": "processes per deepspeed stage (GPUs, or CPU processes)"}
    )
    seed: int = 0
    base_dir: str | None = field(
        default=None,
        metadata={
            "help": "a run folder whose data, tokenizer and SFT base this run reuses: "
            "seeds and variants of the methods from one SFT model"
        },
    )
    # The task: a folder with train/validation/test.jsonl, or (when empty) the synthetic task.
    data_dir: str | None = None
    synthetic_sizes: str = field(default="train=20000,validation=500,test=500")
    max_length: int = 256
    max_new_tokens: int = 160
    eval_split: str = field(
        default="test", metadata={"help": "test (once, for results) or validation (tuning)"}
    )
    # The model: a pretrained one, or a new one from a config with a tokenizer trained on the data.
    model_name_or_path: str | None = None
    model_config: str = "configs/models/tiny-llama.json"
    deepspeed_config: str = "ds_configs/zero2.json"
    micro_batch_size: int = 16
    sft_steps: int = field(
        default=500, metadata={"help": "steps of the SFT model the methods start from"}
    )
    sft_learning_rate: float = 3e-3
    method_steps: int = field(
        default=150, metadata={"help": "steps of every method from the SFT model"}
    )
    method_learning_rate: float = 1e-3
    method_examples: int = field(
        default=4800,
        metadata={
            "help": "every method trains on the first N training examples (BASH's tokens and "
            "RAC's drafts are made for these only)"
        },
    )
    methods: str = field(
        default="sft,bash,rac,scs", metadata={"help": "sft here means SFT continued"}
    )
    # BASH and SCS
    ss_schedule: str = "constant"
    ss_p_max: float = 0.25
    ss_warmup_steps: int = 0
    ss_ramp_steps: int = 100
    bash_rounds: int = field(default=1, metadata={"help": "regenerate the predictions every round"})
    bash_temperature: float = field(
        default=0.0,
        metadata={"help": "BASH's tokens: argmax (0) or sampled at this temperature, per example"},
    )
    # RAC
    rac_prompts: int | None = field(
        default=None,
        metadata={
            "help": "prompts the SFT model drafts for (the first of the method examples); "
            "default: method_examples * rac_mix, as many drafts as correction rows needed"
        },
    )
    rac_variant: str = "whole"
    rac_mix: float = 0.25
    rac_only_wrong: bool = False
    # wandb: off by default; when set, every stage logs to one group, and the generations are
    # scored by score stages (job type "score") that log their summaries and samples.
    wandb_project: str | None = field(
        default=None, metadata={"help": "log every stage to wandb under this project"}
    )
    wandb_group: str | None = field(
        default=None, metadata={"help": "the stages' wandb group (default: run_dir's name)"}
    )

    def group(self) -> str:
        return self.wandb_group or Path(self.run_dir).resolve().name

    def method_list(self) -> list[str]:
        methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        unknown = set(methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; known: {METHODS}")
        return methods
