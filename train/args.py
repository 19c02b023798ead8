"""Training options; every field can be set in the YAML config or on the command line."""

from __future__ import annotations

from dataclasses import dataclass, field

from methods.correction import CORRECTION_MARKER
from methods.dpo import DPO
from methods.scheduled_sampling import SamplingSchedule

MODES = ("sft", "bash", "scs", "rac", "dpo")


@dataclass
class TrainArgs:
    output_dir: str = field(metadata={"help": "run folder: checkpoints/, export/, wandb/"})
    mode: str = field(
        default="sft", metadata={"help": "sft, bash, scs, rac or dpo (see train/__main__.py)"}
    )
    predictions: str | None = field(
        default=None,
        metadata={
            "help": "bash: the model's tokens, from generate --mode teacher_forced (or free)"
        },
    )
    ss_schedule: str = field(
        default=SamplingSchedule.kind,
        metadata={"help": "bash/scs: p over steps: constant, linear, inverse_sigmoid, exponential"},
    )
    ss_p_max: float = field(
        default=SamplingSchedule.p_max, metadata={"help": "bash/scs: the largest p"}
    )
    ss_warmup_steps: int = field(
        default=SamplingSchedule.warmup_steps,
        metadata={"help": "bash/scs: steps of pure ground truth first"},
    )
    ss_ramp_steps: int = field(
        default=SamplingSchedule.ramp_steps,
        metadata={"help": "bash/scs, linear: steps from 0 to p_max"},
    )
    ss_k: float = field(
        default=SamplingSchedule.k, metadata={"help": "bash/scs, inverse_sigmoid: k"}
    )
    ss_decay: float = field(
        default=SamplingSchedule.decay,
        metadata={"help": "bash/scs, exponential: ground-truth decay"},
    )
    ss_position_ramp: int = field(
        default=SamplingSchedule.position_ramp,
        metadata={
            "help": "bash/scs: 0, the same p at every response position; N > 0, p * min(1, "
            "(j + 1) / N) at response position j, so early positions are seldom replaced"
        },
    )
    correction_marker: str = field(
        default=CORRECTION_MARKER, metadata={"help": "rac: between draft and reference"}
    )
    reference_logps: str | None = field(
        default=None,
        metadata={
            "help": "dpo: the reference model's log-probabilities of the training pairs (data),"
            " from generate --pair_logps true"
        },
    )
    eval_reference_logps: str | None = field(
        default=None, metadata={"help": "dpo: the same for the evaluation pairs"}
    )
    dpo_beta: float = field(
        default=DPO.beta, metadata={"help": "dpo: beta, how far the rewards' scale pulls"}
    )
    dpo_loss: str = field(default=DPO.loss, metadata={"help": "dpo: sigmoid (the paper's) or ipo"})
    dpo_label_smoothing: float = field(
        default=DPO.label_smoothing,
        metadata={"help": "dpo, sigmoid: the assumed rate of flipped preferences (cDPO)"},
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
    loss_on: str = field(
        default="response",
        metadata={
            "help": "response (the loss on response and EOS) or all (also on the prompt; sft only);"
            " the eval loss stays on the response"
        },
    )
    packing: bool = field(
        default=False,
        metadata={
            "help": "pack each micro-batch's examples into rows (positions restart, no attention"
            " across examples): less padding, the same loss"
        },
    )
    packing_length: int = field(
        default=0, metadata={"help": "tokens per packed row; 0: max_length"}
    )
    lora_rank: int = field(
        default=0, metadata={"help": "LoRA rank; 0: train every weight (no LoRA)"}
    )
    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA scale numerator (alpha / rank)"}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    lora_target_modules: str = field(
        default="all-linear",
        metadata={
            "help": "all-linear (every attention and MLP projection) or comma-separated module"
            " names (q_proj,v_proj)"
        },
    )
    lora_export: str = field(
        default="merged",
        metadata={
            "help": "merged (a plain model, the adapter merged in) or adapter (peft's adapter"
            " alone, naming its base model_name_or_path)"
        },
    )
    seed: int = 0
    eval_every: int = field(
        default=0, metadata={"help": "steps between evaluations; 0: only at the end"}
    )
    save_every: int = field(
        default=0, metadata={"help": "steps between checkpoints; 0: only at the end"}
    )
    keep_last_checkpoints: int = field(
        default=2, metadata={"help": "checkpoints kept, the newest; older ones are deleted; 0: all"}
    )
    keep_best_checkpoint: bool = field(
        default=False,
        metadata={"help": "also keep the checkpoint of lowest eval loss (eval when saving)"},
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
    wandb_group: str | None = field(
        default=None, metadata={"help": "wandb group (the pipeline's: its run folder's name)"}
    )
    run_name: str | None = field(
        default=None, metadata={"help": "wandb run name (default: output_dir's name)"}
    )
    log_file: bool = field(
        default=True, metadata={"help": "also write per-step metrics to output_dir/metrics.jsonl"}
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "check and print the plan (config, batches, memory, paths); write nothing"
        },
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "bash" and not self.predictions:
            raise ValueError(
                "mode bash needs predictions: a file from generate --mode teacher_forced"
            )
        if self.mode == "dpo":
            DPO.from_args(self)  # refused here, before anything is loaded
            if not self.reference_logps:
                raise ValueError(
                    "mode dpo needs reference_logps: a file from generate --pair_logps true"
                )
            if (self.eval_data or self.eval_split) and not self.eval_reference_logps:
                raise ValueError(
                    "mode dpo evaluates on held-out pairs against their reference: give "
                    "eval_reference_logps (generate --pair_logps true on the evaluation pairs)"
                )
            if self.packing:
                raise ValueError("packing is not offered in mode dpo: a pair is two sequences")
        if self.loss_on not in ("response", "all"):
            raise ValueError(f"loss_on must be response or all, got {self.loss_on!r}")
        if self.loss_on == "all" and self.mode != "sft":
            why = {
                "rac": "RAC never trains on the draft (its mistakes must not be learnt), nor on "
                "the prompt",
                "dpo": "DPO compares the responses to one prompt",
            }.get(
                self.mode,
                "BASH/SCS put the model's tokens at the trained positions, which must be the "
                "response's (the prompt is never changed)",
            )
            raise ValueError(f"loss_on all is for mode sft only, not {self.mode}: {why}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: no LoRA), got {self.lora_rank}")
        if self.lora_export not in ("merged", "adapter"):
            raise ValueError(f"lora_export must be merged or adapter, got {self.lora_export!r}")
