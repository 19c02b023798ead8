"""Fine-tune a causal LM under DeepSpeed ZeRO, in one of five modes:

- sft:  supervised fine-tuning on ground-truth prefixes;
- bash: Batch-Scheduled Sampling: each response position's input is the model's own token
        (made offline by `generate --mode teacher_forced`) with probability p(step), targets
        staying the reference;
- scs:  online scheduled sampling: the same, with the model's tokens made at every step by a
        no-grad forward pass of the current weights;
- rac:  Reference-Answer-based Correction: samples of prompt, the model's draft, a correction
        marker and the reference (made by `python -m methods.correction`);
- dpo:  Direct Preference Optimization on (prompt, chosen, rejected) pairs, against the starting
        model's log-probabilities of them, made offline by `generate --pair_logps true`
        (methods/dpo.py).

    deepspeed --num_gpus 2 --module train --config configs/sft_demo.yaml
    python -m train --config configs/sft_demo.yaml --max_steps 100     # one process

SIGTERM (preemption, `scancel`, `timeout`) and SIGUSR1 (SLURM's warning before a time limit,
`--signal=USR1@T`) end the run at the end of the step with a checkpoint and exit status 75
(runtime/stopping.py); slurm/train.sbatch then requeues the job, which resumes from that
checkpoint. Rank 0 holds `output_dir/.lock` while it runs: a second run on the folder refuses.

The loss is the mean over every trained (response) token of the global batch (dpo: over its
pairs), whatever the split into ranks and micro-batches, so runs with different world sizes
follow one curve.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import shutil
import sys
import time
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import AutoConfig, get_scheduler
from transformers.integrations import HfDeepSpeedConfig
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from data_tools.atomic import write_jsonl
from data_tools.collate import pad_right
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.packing import pack_batch
from data_tools.preferences import EncodedPair, sequences
from data_tools.token_store import TokenStore
from methods.dpo import PAIR_STATS, pair_metrics, pair_stats
from methods.scheduled_sampling import (
    interleave,
    num_changed,
    teacher_forced_predictions,
)
from runtime import distributed, lora, plots
from runtime.args import DataArgs, ModelArgs
from runtime.ds_config import (
    DTYPES,
    fill_for_run,
    offloads_optimizer,
    resolve_precision,
    zero_stage,
)
from runtime.lock import hold
from runtime.modeling import load_model
from runtime.stopping import STOPPED, requested
from runtime.tracking import Tracker
from train import checkpoint, dry_run
from train.args import TrainArgs
from train.loss import causal_lm_loss
from train.optimizer import param_groups
from train.setup import TrainSetup, setup


@torch.no_grad()
def evaluate(engine, run: TrainSetup, micro_batch_size: int, pad_id: int) -> dict[str, float]:
    """The evaluation metrics over `run.eval_set`, sharded over ranks: the token-mean loss, or
    DPO's loss, rewards and preference accuracy over held-out pairs. Every rank runs the same
    number of forward passes (ZeRO-3 gathers parameters collectively), padding its shard with
    no-ops."""
    rank, world = dist.get_rank(), dist.get_world_size()
    items = run.eval_set
    shard = items[rank::world]
    n_batches = -(-len(items) // (world * micro_batch_size))
    # DPO: pair_stats; else the loss sum and the token count
    totals = torch.zeros(PAIR_STATS if run.dpo else 2, dtype=torch.float64, device=engine.device)
    engine.eval()
    for b in range(n_batches):
        batch = shard[b * micro_batch_size : (b + 1) * micro_batch_size]
        if run.dpo:
            sums = pair_stats(
                *run.dpo.losses(engine, batch or items[:1], run.eval_reference, pad_id)
            )
        else:
            inputs = pad_right(batch or items[:1], pad_id)
            loss = causal_lm_loss(engine, {k: v.to(engine.device) for k, v in inputs.items()}, 1)
            sums = torch.stack(
                [loss.double(), loss.new_tensor(sum(e.num_trained for e in batch)).double()]
            )
        if batch:
            totals += sums
    engine.train()
    dist.all_reduce(totals)
    return (
        pair_metrics(totals, "eval") if run.dpo else {"eval/loss": (totals[0] / totals[1]).item()}
    )


def _batch_counts(train_set: TokenStore | list[EncodedPair], indices: list[int]) -> tuple[int, int]:
    """The trained tokens and all tokens of a global batch; a store's from its columns, without
    rebuilding the batch's examples on every rank."""
    if isinstance(train_set, TokenStore):
        return train_set.counts(indices)
    batch = sequences([train_set[i] for i in indices])
    return sum(e.num_trained for e in batch), sum(len(e.input_ids) for e in batch)


def _remove_new(folder: Path, known: set[Path]) -> None:
    """Remove what this start added to `folder` (its token stores), and `folder` if it made it."""
    with contextlib.suppress(OSError):  # the other ranks are removing them too
        for path in set(folder.iterdir()) - known:
            shutil.rmtree(path, ignore_errors=True)
        if not known:
            folder.rmdir()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the rows a resumed run is about to redo (those logged after its checkpoint), and a
    last line cut short by a crash while it was appended (with a warning). Any other line that
    is not a row is an error naming it: the file is the run's record, not to be guessed at."""
    lines = path.read_bytes().split(b"\n") if path.exists() else [b""]
    rows = []
    for number, line in enumerate(lines, 1):
        if number == len(lines) and not line:
            break  # the file ends with its newline (or is empty)
        try:
            row = json.loads(line)
            rows.append((row["step"], row))
        except (ValueError, KeyError, TypeError) as e:
            if number < len(lines):
                raise ValueError(f"{path}:{number}: not a metrics row ({e})") from e
            print(
                f"warning: {path}:{number}: the last line was cut short (a crash while it was "
                "written); dropped",
                file=sys.stderr,
                flush=True,
            )
    write_jsonl(path, [row for done, row in rows if done <= step])


def main() -> None:
    model_args, data_args, args = parse_config((ModelArgs, DataArgs, TrainArgs))
    if args.dry_run:
        dry_run.plan_train(model_args, data_args, args)
        return
    stop = requested()  # SIGTERM, SIGUSR1: acted on by every rank together, at a step's end
    rank, world = distributed.init()
    output_dir, ckpt_dir = Path(args.output_dir), Path(args.output_dir) / "checkpoints"
    hold(output_dir / ".lock", output_dir)
    precision = resolve_precision(args.precision)
    # The DeepSpeed config is settled (or refused) before any data or weights are loaded.
    model_config = AutoConfig.from_pretrained(  # an adapter's: its base's
        lora.base_name(model_args.model_name_or_path or model_args.model_config)
    )
    ds_config = fill_for_run(args, world, precision, model_config.hidden_size)

    # Data: tokenized once per node into the run's folder, mapped by every rank, in one order.
    stores = output_dir / "tokenized"
    known_stores = set(stores.iterdir()) if stores.is_dir() else set()
    run = setup(model_args, data_args, args, world, cache=stores)
    tokenizer, train_set, eval_set, plan = run.tokenizer, run.train_set, run.eval_set, run.plan
    schedule, predictions, total_steps = run.schedule, run.predictions, run.total_steps

    # What fixes the meaning of a step, hashed on rank 0: saved with each checkpoint. The
    # checkpoint to resume is verified (and refused if saved with other options) before any
    # weights are loaded; one of another world size is converted first, which needs the config.
    identity = checkpoint.run_identity(model_args, data_args, args, run) if rank == 0 else {}
    try:
        resume_from = (
            checkpoint.resume_tag(ckpt_dir, world, ds_config, identity) if args.resume else None
        )
    except Exception:  # a refused resume leaves the run's folder as it was
        _remove_new(stores, known_stores)
        raise

    # Model, optimizer and schedule, wrapped by the DeepSpeed engine.
    # Under ZeRO-3, this makes from_pretrained load each weight straight into its partition. A
    # new model from a config is built whole (it is small), so its initial weights do not depend
    # on the ZeRO stage.
    partitioned_load = zero_stage(ds_config) == 3 and model_args.model_name_or_path is not None
    ds_hf = HfDeepSpeedConfig(ds_config) if partitioned_load else None
    model = load_model(
        tokenizer,
        model_args.model_name_or_path,
        model_args.model_config,
        seed=args.seed,
        attn_implementation=model_args.attn_implementation,
    )
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if args.lora_rank:
        model = lora.from_args(model, args, model_args.model_name_or_path)
    groups = param_groups(model, args.weight_decay)
    adam = (
        deepspeed.ops.adam.DeepSpeedCPUAdam if offloads_optimizer(ds_config) else torch.optim.AdamW
    )
    optimizer = adam(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2))
    scheduler = get_scheduler(args.lr_scheduler, optimizer, args.warmup_steps, total_steps)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    if ds_hf is not None:
        unset_hf_deepspeed_config()  # only loading needed it; later loads (export check) are plain

    start_step = checkpoint.resume(engine, ckpt_dir, resume_from) if resume_from else 0
    save = functools.partial(
        checkpoint.save,
        engine,
        ckpt_dir,
        identity=identity,
        keep_last=args.keep_last_checkpoints,
        keep_best=args.keep_best_checkpoint,
    )
    if args.log_file:  # rank 0's error, if any, stops every rank
        distributed.on_main(lambda: _truncate_metrics(output_dir / "metrics.jsonl", start_step))
    run_config = {
        **dataclasses.asdict(model_args),
        **dataclasses.asdict(data_args),
        **dataclasses.asdict(args),
        "world_size": world,
        "global_batch_size": plan.global_batch_size,
        "total_steps": total_steps,
    }
    tracker = Tracker(
        args.wandb_project, args.output_dir, run_config, args.run_name, "train", args.wandb_group
    )
    if distributed.is_main():
        print(
            f"{len(train_set)} training {'pairs' if run.dpo else 'examples'}, "
            f"{plan.steps_per_epoch} steps per epoch, "
            f"global batch {plan.global_batch_size}; steps {start_step} -> {total_steps}",
            flush=True,
        )
    last_step = min(total_steps, args.stop_at_step) if args.stop_at_step > 0 else total_steps
    progress = tqdm(
        range(start_step, last_step),
        initial=start_step,
        total=total_steps,
        disable=not distributed.is_main(),
        dynamic_ncols=True,
    )
    pad_id, saved_at = tokenizer.pad_token_id, None
    for step in progress:
        started = time.perf_counter()
        batch_ids = plan.global_indices(step)
        trained_tokens, tokens = _batch_counts(train_set, batch_ids)
        # loss, tokens replaced, sequences through a forward pass (SCS: twice), ranks signalled,
        # tokens changed (replaced by a token other than the reference's)
        stats = torch.zeros(5, dtype=torch.float64, device=engine.device)
        pairs = torch.zeros(PAIR_STATS, dtype=torch.float64, device=engine.device)  # dpo
        p = schedule.p(step) if schedule else 0.0
        lr = scheduler.get_last_lr()[0]  # the rate this step runs at (the scheduler steps with it)
        for micro in range(args.gradient_accumulation_steps):
            batch = [train_set[i] for i in plan.micro_indices(batch_ids, micro, rank)]
            if run.dpo:  # chosen and rejected in one forward pass
                losses, chosen, rejected = run.dpo.losses(engine, batch, run.reference, pad_id)
                pairs += pair_stats(losses, chosen, rejected)
                loss = losses.sum() / plan.global_batch_size  # the global batch's mean
                stats[2] += 2 * len(batch)
            else:
                if schedule and p > 0:
                    # BASH reads the model's tokens from disk; SCS makes them now, with these weights.
                    batch_predictions = (
                        [predictions[e.id] for e in batch]
                        if args.mode == "bash"
                        else teacher_forced_predictions(engine, batch, pad_id)
                    )
                    mixed = [
                        interleave(e, t, p, args.seed, step, schedule.position_ramp)
                        for e, t in zip(batch, batch_predictions, strict=True)
                    ]
                    batch = [e for e, _ in mixed]
                    stats[1] += sum(n for _, n in mixed)
                    stats[4] += sum(num_changed(e) for e in batch)
                    stats[2] += len(batch) if args.mode == "scs" else 0
                stats[2] += len(batch)
                inputs = (
                    pack_batch(batch, pad_id, args.packing_length or data_args.max_length)
                    if args.packing
                    else pad_right(batch, pad_id)
                )
                loss = causal_lm_loss(  # the global batch's token mean
                    engine, {k: v.to(engine.device) for k, v in inputs.items()}, trained_tokens
                )
            # DeepSpeed averages gradients over ranks and micro-steps; undo both for a global mean.
            engine.backward(loss * world * args.gradient_accumulation_steps)
            engine.step()
            stats[0] += loss.detach().double()
        stats[3] = float(bool(stop))
        dist.all_reduce(stats)
        if run.dpo:
            dist.all_reduce(pairs)
        metrics = pair_metrics(pairs, "train") if run.dpo else {"train/loss": stats[0].item()}
        metrics |= {
            "train/lr": lr,
            "train/grad_norm": float(engine.get_global_grad_norm() or 0.0),
            "train/tokens_per_s": tokens / (time.perf_counter() - started),
            "train/trained_tokens": trained_tokens,
            "train/forward_sequences": int(stats[2].item()),
        }
        if schedule:
            metrics["train/p"] = p
            metrics["train/replaced_fraction"] = stats[1].item() / trained_tokens
            metrics["train/changed_fraction"] = stats[4].item() / trained_tokens
        if eval_set and (
            (args.eval_every and (step + 1) % args.eval_every == 0) or step + 1 == total_steps
        ):
            metrics |= evaluate(engine, run, args.micro_batch_size, pad_id)
        if distributed.is_main():
            progress.set_postfix(
                loss=f"{metrics['train/loss']:.4f}", tok_s=f"{metrics['train/tokens_per_s']:.0f}"
            )
            if args.log_file:
                with open(output_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": step + 1, **metrics}) + "\n")
        tracker.log(metrics, step=step + 1)
        if args.save_every and (step + 1) % args.save_every == 0:
            saved_at = save(step + 1, metrics.get("eval/loss"))
        if stats[3] > 0 and step + 1 < last_step:  # a rank was asked to stop: all stop here
            if saved_at != f"step_{step + 1}":
                save(step + 1, metrics.get("eval/loss"))
            if distributed.is_main():
                why = stop.reason or "another rank was asked to stop"
                print(
                    f"{why}: checkpoint step_{step + 1} saved; exiting with {STOPPED}", flush=True
                )
            tracker.finish()
            raise SystemExit(STOPPED)

    if saved_at != f"step_{last_step}" and start_step < last_step:
        saved_at = save(last_step, metrics.get("eval/loss"))
    if args.export and last_step == total_steps:
        tag = checkpoint.latest_tag(ckpt_dir)
        checkpoint.export(
            engine,
            ckpt_dir,
            tag,
            output_dir / "export",
            tokenizer,
            DTYPES[precision],
            args.lora_export,
        )
        probe = pad_right(sequences(eval_set or train_set)[: args.micro_batch_size], pad_id)
        checkpoint.check_export(engine, output_dir / "export", probe, precision)
        tracker.log_artifact("model", output_dir / "export", reference=True)
    if distributed.is_main() and args.log_file:
        plots.learning_curve(output_dir)
    tracker.finish()


if __name__ == "__main__":
    run_tool(main)
