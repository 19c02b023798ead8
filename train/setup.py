"""What a training run settles before its engine: the tokenizer, the tokenized data (examples, or
DPO's pairs), BASH's predictions and the schedule, DPO's loss and reference log-probabilities,
the data order and the number of steps.

One function for `train`, its dry run and the inspector, so that the three build (and refuse)
the data exactly alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from data_tools.preferences import EncodedPair, encode_pairs
from data_tools.tokenization import Encoded, encode_examples
from methods.correction import encode_correction, read_draft_ids
from methods.dpo import DPO, ReferenceLogps, load_reference_logps
from methods.scheduled_sampling import SamplingSchedule, load_predictions
from runtime import distributed
from runtime.args import DataArgs, ModelArgs
from runtime.fingerprint import model_fingerprint, tokenizer_fingerprint
from runtime.modeling import load_tokenizer
from train.batches import BatchPlan


@dataclass(frozen=True)
class TrainSetup:
    tokenizer: PreTrainedTokenizerBase
    train_set: list[Encoded] | list[EncodedPair]  # pairs in mode dpo
    eval_set: list[Encoded] | list[EncodedPair]
    schedule: SamplingSchedule | None  # bash and scs
    predictions: dict[str, list[int]] | None  # bash, unless not checked (a dry run's choice)
    plan: BatchPlan
    total_steps: int
    dpo: DPO | None = None  # dpo
    reference: dict[str, ReferenceLogps] | None = None  # dpo, unless not checked
    eval_reference: dict[str, ReferenceLogps] | None = None  # dpo, with evaluation pairs


def encode(
    tokenizer: PreTrainedTokenizerBase,
    data_args: DataArgs,
    data: str | None = None,
    split: str | None = None,
    marker: str | None = None,
    loss_on: str = "response",
    limit: int | None = None,
    pairs: bool = False,
) -> list[Encoded] | list[EncodedPair]:
    """Tokenized examples with the loss on the response (or `loss_on` "all"); with a `marker`
    (RAC), samples of prompt, the model's draft, the marker and the reference, the loss on the
    last two; with `pairs` (DPO), preference pairs. `limit` keeps the first examples before any
    is tokenized."""
    source = data or data_args.data
    max_length, overlong = data_args.max_length, data_args.overlong
    if pairs:
        preferences = data_args.load_preferences(data, split)[:limit]
        encoded, report = encode_pairs(tokenizer, preferences, max_length, overlong)
        summary = report.summary()
    elif marker is None:
        examples = data_args.load(data, split)[:limit]
        encoded, report = encode_examples(tokenizer, examples, max_length, overlong, loss_on)
        summary = report.summary()
    else:
        examples = data_args.load(data, split)[:limit]
        drafts = read_draft_ids(source, len(tokenizer))
        encoded = [
            encode_correction(tokenizer, e, drafts[e.id], max_length, marker) for e in examples
        ]
        summary = f"{len(encoded)} samples, {sum(drafts[e.id] is not None for e in examples)} with a draft"
    if distributed.is_main():
        # A local file has no splits; a hub dataset's split is named.
        name = source if Path(source).exists() else f"{source} [{split or data_args.split}]"
        print(f"{name}: {summary}", flush=True)
    return encoded


def setup(
    model_args: ModelArgs,
    data_args: DataArgs,
    args: Any,
    world_size: int,
    check_fingerprints: bool = True,
) -> TrainSetup:
    """The run's data and plan, `args` being `TrainArgs`; BASH's predictions and DPO's reference
    log-probabilities are checked against the tokenizer and the starting weights unless
    `check_fingerprints` is false (a dry run's choice for weights too large to hash)."""
    tokenizer = load_tokenizer(model_args.tokenizer_path())
    marker = args.correction_marker if args.mode == "rac" else None
    pairs = args.mode == "dpo"
    train_set = encode(tokenizer, data_args, marker=marker, loss_on=args.loss_on, pairs=pairs)
    eval_set = []
    if args.eval_data or args.eval_split:
        eval_set = encode(
            tokenizer,
            data_args,
            args.eval_data,
            args.eval_split,
            limit=args.max_eval_examples,
            pairs=pairs,
        )
    schedule = SamplingSchedule.from_args(args) if args.mode in ("bash", "scs") else None
    predictions = reference = eval_reference = None
    if args.mode in ("bash", "dpo") and check_fingerprints:
        fingerprints = (
            tokenizer_fingerprint(tokenizer),
            model_fingerprint(model_args.model_name_or_path),
        )
        if args.mode == "bash":
            predictions = load_predictions(
                args.predictions, train_set, *fingerprints, len(tokenizer)
            )
        else:
            reference = load_reference_logps(args.reference_logps, train_set, *fingerprints)
            if eval_set:
                eval_reference = load_reference_logps(
                    args.eval_reference_logps, eval_set, *fingerprints
                )
    plan = BatchPlan(
        len(train_set),
        args.micro_batch_size,
        args.gradient_accumulation_steps,
        world_size,
        args.seed,
    )
    total_steps = (
        args.max_steps if args.max_steps > 0 else int(args.num_epochs * plan.steps_per_epoch)
    )
    return TrainSetup(
        tokenizer,
        train_set,
        eval_set,
        schedule,
        predictions,
        plan,
        total_steps,
        DPO.from_args(args) if pairs else None,
        reference,
        eval_reference,
    )
