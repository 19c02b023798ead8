"""What a training run settles before its engine: the tokenizer, the tokenized data (examples, or
DPO's pairs), BASH's predictions and the schedule, DPO's loss and reference log-probabilities,
the data order and the number of steps.

One function for `train`, its dry run and the inspector, so that the three build (and refuse)
the data exactly alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from data_tools.preferences import EncodedPair, encode_pairs
from data_tools.token_store import (
    TokenStore,
    build_store,
    encode_in_chunks,
    store_key,
    write_store,
)
from data_tools.tokenization import Encoded, TruncationReport
from methods.correction import encode_correction, read_draft_ids
from methods.dpo import DPO, ReferenceLogps, load_reference_logps
from methods.scheduled_sampling import SamplingSchedule, load_predictions
from runtime import distributed
from runtime.args import DataArgs, ModelArgs
from runtime.fingerprint import file_sha256, model_fingerprint, tokenizer_fingerprint
from runtime.forked import run_forked
from runtime.modeling import load_tokenizer
from train.batches import BatchPlan


@dataclass(frozen=True)
class TrainSetup:
    tokenizer: PreTrainedTokenizerBase
    train_set: TokenStore | list[EncodedPair]  # pairs in mode dpo
    eval_set: TokenStore | list[EncodedPair]
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
    cache: Path | None = None,
) -> TokenStore | list[EncodedPair]:
    """Tokenized examples with the loss on the response (or `loss_on` "all"); with a `marker`
    (RAC), samples of prompt, the model's draft, the marker and the reference, the loss on the
    last two; with `pairs` (DPO), preference pairs (as lists). `limit` keeps the first examples
    before any is tokenized.

    Examples are held in a `TokenStore`: with a `cache` folder and data from a file, written
    once per node (by its local rank 0, under a key of everything that decides the tokens, or
    found there from an earlier start) and memory-mapped by every rank; else built in memory."""
    source = data or data_args.data
    max_length, overlong = data_args.max_length, data_args.overlong

    def tokenized() -> tuple[Iterator[Encoded], Callable[[], str]]:
        examples = data_args.load(data, split)[:limit]
        if marker is None:
            report = TruncationReport()
            encoded = encode_in_chunks(tokenizer, examples, max_length, overlong, loss_on, report)
            return encoded, report.summary
        drafts = read_draft_ids(source, len(tokenizer))
        summary = f"{len(examples)} samples, {sum(drafts[e.id] is not None for e in examples)} with a draft"
        encoded = (
            encode_correction(tokenizer, e, drafts[e.id], max_length, marker) for e in examples
        )
        return encoded, lambda: summary

    if pairs:
        preferences = data_args.load_preferences(data, split)[:limit]
        encoded, report = encode_pairs(tokenizer, preferences, max_length, overlong)
        summary = report.summary()
    elif cache is None or not Path(source).is_file():
        encoded = build_store(*tokenized(), len(tokenizer))
        summary = encoded.summary
    else:
        key = {
            **{k: v for k, v in asdict(data_args).items() if k != "data"},
            "data_sha256": file_sha256(Path(source)),
            "evaluation_source": source != data_args.data,  # read with format auto
            "eval_split": split,
            "eval_limit": limit,
            "loss_on": loss_on,
            "marker": marker,
            "tokenizer": tokenizer_fingerprint(tokenizer),
        }
        folder = cache / store_key(key)

        def build() -> None:
            if not folder.is_dir():  # else made by an earlier start of this run
                # In a child, so that the texts and lists it passes through leave with it.
                run_forked(lambda: write_store(folder, *tokenized(), len(tokenizer), key))

        distributed.on_local_main(build)
        encoded = TokenStore.open(folder)
        summary = f"{encoded.summary} (tokens in {folder})"
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
    cache: Path | None = None,
) -> TrainSetup:
    """The run's data and plan, `args` being `TrainArgs`; BASH's predictions and DPO's reference
    log-probabilities are checked against the tokenizer and the starting weights unless
    `check_fingerprints` is false (a dry run's choice for weights too large to hash). The
    examples are tokenized once per node into `cache` (the run's), or in memory without one."""
    tokenizer = load_tokenizer(model_args.tokenizer_path())
    marker = args.correction_marker if args.mode == "rac" else None
    pairs = args.mode == "dpo"
    train_set = encode(
        tokenizer, data_args, marker=marker, loss_on=args.loss_on, pairs=pairs, cache=cache
    )
    eval_set = []
    if args.eval_data or args.eval_split:
        eval_set = encode(
            tokenizer,
            data_args,
            args.eval_data,
            args.eval_split,
            limit=args.max_eval_examples,
            pairs=pairs,
            cache=cache,
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
