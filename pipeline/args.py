"""Pipeline options: one YAML file says the whole comparison."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_tools.holdout import HoldoutArgs
from generate.args import GenerateArgs
from methods.correction import CorrectionArgs
from methods.dpo import DPO
from methods.scheduled_sampling import SamplingSchedule
from runtime.args import DataArgs
from train.args import TrainArgs


@dataclass
class PipelineArgs:
    run_dir: str = field(metadata={"help": "everything goes here; a rerun skips finished stages"})
    nproc: int = field(
        default=2, metadata={"help": "processes per deepspeed stage (GPUs, or CPU processes)"}
    )
    seed: int = field(default=TrainArgs.seed, metadata={"help": "the task's, and every stage's"})
    base_dir: str | None = field(
        default=None,
        metadata={
            "help": "a run folder whose data, tokenizer and SFT base this run reuses: "
            "seeds and variants of the methods from one SFT model"
        },
    )
    # The task: its name, and a folder with train/validation/test.jsonl or (when empty) its
    # generator's data.
    task: str = field(
        default=DataArgs.task,
        metadata={
            "help": "math (data: data_tools.synthetic_math) or postfix (data_tools.postfix): "
            "the generator, and the task every stage trains, generates and scores"
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "a folder with train.jsonl and test.jsonl (and validation.jsonl; without it, "
            "validation_size training rows are held out); default: the synthetic task"
        },
    )
    validation_size: int = HoldoutArgs.validation_size
    synthetic_sizes: str = field(
        default="train=20000,validation=500,test=500",
        metadata={
            "help": "the generator's split sizes, each its option: math also shifted_size=N "
            "(each shifted split), postfix test_long=N"
        },
    )
    task_difficulty: str = field(
        default="",
        metadata={
            "help": "the generator's difficulty knobs as key=value pairs, e.g. postfix "
            "operands=abcdefgh,max_operators=12 (data_tools.postfix, data_tools.synthetic_math: "
            "Difficulty); default: the generator's"
        },
    )
    shifted_steps: str = field(
        default="",
        metadata={
            "help": "math: length-shifted test splits, e.g. 6-8,10 (test_6to8, test_10); "
            "evaluated when named in eval_splits"
        },
    )
    # Options of the stages, forwarded to them; their defaults are the stages' own.
    max_length: int = DataArgs.max_length
    max_new_tokens: int = GenerateArgs.max_new_tokens
    max_prompt_length: int = GenerateArgs.max_prompt_length
    continuous_batching: bool = field(
        default=GenerateArgs.continuous_batching,
        metadata={"help": "the greedy generation stages with continuous batching (generate's)"},
    )
    report_split: str = field(
        default="test",
        metadata={
            "help": "the split every model is evaluated on: test (once, for results) or validation (tuning)"
        },
    )
    eval_splits: str = field(
        default="",
        metadata={
            "help": "more splits every model is evaluated on, e.g. test_6to8,test_10 "
            "(shifted_steps) or test_long (postfix): a column each in the report"
        },
    )
    report_examples: int | None = field(
        default=None,
        metadata={"help": "evaluate on the first N of each evaluated split (default: all)"},
    )
    max_eval_examples: int = field(
        default=TrainArgs.max_eval_examples,
        metadata={"help": "validation examples of each training's eval loss"},
    )
    diagnostics: str = field(
        default="",
        metadata={
            "help": "diagnostics of every evaluated model, each a stage: exposure_bias (the "
            "report split), error_propagation (every evaluated split, from its generations) and "
            "error_injection (the report split, at steps 1-3); the last two for task math"
        },
    )
    diagnostic_examples: int = field(
        default=200,
        metadata={
            "help": "the first N of the report split that exposure_bias and error_injection use"
        },
    )
    # The model: a pretrained one, or a new one from a config with a tokenizer trained on the data.
    model_name_or_path: str | None = None
    model_config: str | None = None
    deepspeed_config: str = TrainArgs.deepspeed_config
    micro_batch_size: int = TrainArgs.micro_batch_size
    # LoRA on every training stage (each export merged, so the next stage starts from a plain model)
    lora_rank: int = TrainArgs.lora_rank
    lora_target_modules: str = TrainArgs.lora_target_modules
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
    ss_schedule: str = SamplingSchedule.kind
    ss_p_max: float = SamplingSchedule.p_max
    ss_warmup_steps: int = SamplingSchedule.warmup_steps
    ss_ramp_steps: int = SamplingSchedule.ramp_steps
    ss_position_ramp: int = SamplingSchedule.position_ramp
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
    rac_tokens: bool = field(
        default=False,
        metadata={
            "help": "the embedded tokenizer keeps RAC's marker and confirmation as one token "
            "each (off: spelled in pieces, as the math study's seeds were)"
        },
    )
    rac_rounds: int = field(
        default=1, metadata={"help": "draft again with the newest model every round"}
    )
    rac_variant: str = CorrectionArgs.variant
    rac_mix: float = CorrectionArgs.mix
    rac_right_drafts: str = CorrectionArgs.right_drafts
    # DPO after methods: one set of preference pairs from the SFT base's samples, then per method
    # its model as the reference and the start of the same DPO budget (a row "<method>+dpo").
    dpo_after: str = field(
        default="",
        metadata={
            "help": "methods (of `methods`) whose models DPO continues, e.g. sft,rac,bash; "
            "empty: no DPO"
        },
    )
    dpo_prompts: int | None = field(
        default=None,
        metadata={
            "help": "training prompts the SFT base samples for, to make the pairs (the first "
            "of the method examples); default: method_examples"
        },
    )
    dpo_samples_per_prompt: int = field(
        default=4, metadata={"help": "sampled answers per prompt, scored right or wrong"}
    )
    dpo_steps: int = field(default=100, metadata={"help": "steps of every method's DPO"})
    dpo_learning_rate: float = TrainArgs.learning_rate
    dpo_beta: float = DPO.beta
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
        return _names(self.methods)

    def dpo_list(self) -> list[str]:
        return _names(self.dpo_after)

    def eval_split_list(self) -> list[str]:
        return _names(self.eval_splits)

    def diagnostic_list(self) -> list[str]:
        return _names(self.diagnostics)

    def shifted_step_list(self) -> list[str]:
        return _names(self.shifted_steps)


def _names(option: str) -> list[str]:
    """The names of a comma-separated option."""
    return [m.strip() for m in option.split(",") if m.strip()]
