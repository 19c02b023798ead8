"""Generate a response for every prompt of a dataset, sharded over ranks, resumable.

    python -m generate --config configs/generate_demo.yaml
    deepspeed --num_gpus 2 --module generate --config configs/generate_demo.yaml --do_sample true

Each rank generates for its own share of the prompts that are not done yet, in batches of
similar prompt length, and appends each finished batch to `<output>.parts/part-<rank>.jsonl`.
A rerun (with any number of ranks) skips the ids found there and shares out the rest; at the
end rank 0 merges everything, in input order, into `<output>` (atomically) and removes the
parts. A run whose `<output>` already holds every id does nothing. The parts record what their
rows depend on (`options.json`: the model's and tokenizer's fingerprints and the decoding
options, not the batch size or the number of ranks); a rerun with others refuses, naming them.

SIGTERM or SIGUSR1 (runtime/stopping.py) ends each rank after the batch it is generating, with
its parts intact, and exit status 75: a rerun goes on from there. Rank 0 holds `<output>.lock`
while it runs: a second generation into the same output refuses.

With `--pair_logps true` the data is preference pairs, and each line holds the model's summed
log-probabilities of a pair's chosen and rejected responses (DPO's reference, for `train --mode
dpo`; methods/dpo.py), with the model and tokenizer fingerprints that `train` checks.

One line per example: {"id", "prompt", "reference", "generation", "generation_ids", "task",
"meta"}. `generation_ids` are the new tokens up to and including the first EOS (absent when
`max_new_tokens` cut the generation short), never padding; `generation` is their text without
special tokens. Greedy and sampled outputs depend only on the example (and, for sampling, on
seed and id), not on the number of ranks or the batch (exactly so in fp32): see sampling.py.
With `--self_correct true` a line also has "confirm_probability", the model's probability of
RAC's confirmation after the marker (`methods.correction.self_correct`; `--confirm_threshold`
confirms drafts at least that sure without a second pass).

Every rank holds a full replica of the model (bf16 on GPU, fp32 on CPU). A model too big for
one device is not supported yet: ZeRO-3 would all-gather every layer for every new token, far
too slow for decoding. The way there is tensor parallelism (e.g. DeepSpeed's `init_inference`
with `tensor_parallel`), the ranks of a tensor-parallel group sharing one shard of prompts.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from data_tools.atomic import write_json, write_jsonl
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.schema import Example, Preference
from generate.args import GenerateArgs
from generate.dry_run import plan_generate
from generate.inputs import Inputs, build_inputs, check_positions
from methods.correction import self_correct
from methods.dpo import reference_rows
from methods.scheduled_sampling import teacher_forced_predictions
from runtime import distributed
from runtime.args import DataArgs, ModelArgs
from runtime.ds_config import DTYPES, resolve_precision
from runtime.fingerprint import differences, model_fingerprint, tokenizer_fingerprint
from runtime.generation import eos_ids, example_seed, generate_batch, longest_first
from runtime.lock import hold
from runtime.modeling import load_model, load_tokenizer
from runtime.stopping import STOPPED, requested
from runtime.tracking import Tracker

OPTIONS = "options.json"  # in <output>.parts: what the rows there depend on
# The options a row depends on, beside the model, tokenizer, precision and max_length (not the
# batch size or the number of ranks: see sampling.py).
DECODING = (
    "max_prompt_length",
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_p",
    "seed",
    "teacher_forced",
    "pair_logps",
    "self_correct",
    "correction_marker",
    "confirm_threshold",
)


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """The lines of a jsonl file by id, less a last line without its newline (cut by a crash)."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    return {row["id"]: row for row in map(json.loads, lines)}


def read_parts(parts: Path) -> dict[str, dict[str, Any]]:
    """The rows of every part file (of earlier, unfinished runs) by id."""
    rows = {}
    for part in sorted(parts.glob("*.jsonl")):
        rows.update(read_rows(part))
    return rows


def check_options(parts: Path, options: dict[str, Any]) -> None:
    """Record in `parts` what its rows depend on, or refuse to add rows made otherwise to those
    of an earlier run. Parts from before this record existed are taken as they are."""
    path = parts / OPTIONS
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if changed := differences(saved, options):
            raise ValueError(
                f"{parts} holds rows made with other options, and resuming would mix two runs "
                f"(parts -> this run): {'; '.join(changed)}. Rerun with the parts' options, "
                f"or delete {parts} to start over"
            )
    else:
        write_json(path, options)


def open_part(parts: Path, rank: int) -> TextIO:
    """This rank's part file, opened for appending after cutting off any half-written line."""
    parts.mkdir(parents=True, exist_ok=True)
    path = parts / f"part-{rank}.jsonl"
    if path.exists():
        os.truncate(path, path.read_bytes().rfind(b"\n") + 1)
    return path.open("a", encoding="utf-8")


def to_row(example: Example, ids: list[int], tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    return {
        "id": example.id,
        "prompt": example.prompt,
        "reference": example.response,
        "generation": tokenizer.decode(ids, skip_special_tokens=True),
        "generation_ids": ids,
        "task": example.task,
        "meta": example.meta,
    }


def with_samples(examples: list[Example], n: int) -> list[Example]:
    """`n` copies of each example for `n` samples per prompt, with ids "<id>#s<k>" and the
    source id in `meta` (one sample keeps the example as it is)."""
    if n == 1:
        return examples
    return [
        replace(e, id=f"{e.id}#s{k}", meta={**e.meta, "source_id": e.id, "sample": k})
        for e in examples
        for k in range(n)
    ]


def generate_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    args: GenerateArgs,
    batch: list[Example] | list[Preference],
    inputs: Inputs,
    indices: list[int],
) -> list[dict[str, Any]]:
    """The output rows of one batch (`indices` into `inputs`): the log-probabilities of pairs, the
    model's predictions under teacher forcing, or a generation (greedy or sampled; with
    `self_correct`, RAC's draft, marker and correction)."""
    if args.pair_logps:
        return reference_rows(model, [inputs.pairs[i] for i in indices], tokenizer.pad_token_id)
    seeds = [example_seed(args.seed, e.id) for e in batch] if args.do_sample else None
    if args.teacher_forced:
        temperature = args.temperature if args.do_sample else 0.0
        encoded = [inputs.encoded[i] for i in indices]
        predictions = teacher_forced_predictions(
            model, encoded, tokenizer.pad_token_id, temperature, seeds
        )
        return [
            {"id": e.id, "predictions": p, "task": e.task, "meta": e.meta}
            for e, p in zip(batch, predictions, strict=True)
        ]
    prompts = [inputs.prompts[i] for i in indices]
    sampling = (args.temperature, args.top_p)
    continuous = args.continuous_batching
    new = generate_batch(
        model, tokenizer, prompts, args.max_new_tokens, seeds, *sampling, continuous
    )
    if args.self_correct:
        seeds = [example_seed(args.seed, f"{e.id}#correct") for e in batch] if seeds else None
        new, confirm = self_correct(
            model,
            tokenizer,
            prompts,
            new,
            args.correction_marker,
            args.max_new_tokens,
            seeds,
            *sampling,
            continuous,
            args.confirm_threshold,
        )
        return [
            to_row(e, ids, tokenizer) | {"confirm_probability": p}
            for e, ids, p in zip(batch, new, confirm, strict=True)
        ]
    return [to_row(e, ids, tokenizer) for e, ids in zip(batch, new, strict=True)]


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, args = parse_config((ModelArgs, DataArgs, GenerateArgs), argv)
    output, parts = Path(args.output), Path(f"{args.output}.parts")
    # What is left to do: every id (load_examples refuses duplicates) not in the output or in a
    # part file of an earlier run.
    examples = (
        data_args.load_preferences()
        if args.pair_logps
        else with_samples(data_args.load(), args.num_samples)
    )
    done = read_rows(output)
    if args.dry_run:
        plan_generate(model_args, data_args, args, examples, {**done, **read_parts(parts)})
        return
    precision = resolve_precision(args.precision)
    stop = requested()  # SIGTERM, SIGUSR1: acted on between batches
    rank, world = distributed.init()
    hold(Path(f"{output}.lock"), output)
    if set(done) >= {e.id for e in examples}:
        if distributed.is_main():
            print(f"{output} already holds all {len(examples)} examples", flush=True)
            shutil.rmtree(parts, ignore_errors=True)  # left if a run died just after its merge
        return
    done.update(read_parts(parts))
    todo = [e for e in examples if e.id not in done]
    distributed.barrier()  # every rank has read the parts before any rank appends to them
    tracker = Tracker(
        args.wandb_project,
        str(output.parent),
        {**asdict(model_args), **asdict(data_args), **asdict(args), "world_size": world},
        args.run_name or output.stem,
        "generate",
        args.wandb_group,
        id_file=Path(f"{output}.wandb_run_id"),
    )
    if distributed.is_main():
        print(
            f"{len(examples)} examples: {len(examples) - len(todo)} done before, "
            f"{len(todo)} to generate on {world} rank(s)",
            flush=True,
        )

    if todo:
        tokenizer = load_tokenizer(model_args.tokenizer_path())
        model = load_model(
            tokenizer,
            model_args.model_name_or_path,
            model_args.model_config,
            dtype=DTYPES[precision],
            seed=args.seed,
            attn_implementation=model_args.attn_implementation,
        )
        # Decode exactly as the options say, not with a checkpoint's defaults (sampling, penalties).
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=eos_ids(model, tokenizer),
            pad_token_id=tokenizer.pad_token_id,
        )
        model.to(distributed.device()).eval()
        check_positions(
            getattr(model.config, "max_position_embeddings", None), args, data_args.max_length
        )
        fingerprints = {
            "model_fingerprint": model_fingerprint(model_args.model_name_or_path),
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        }
        decoding = {k: getattr(args, k) for k in DECODING} | {"precision": precision}
        options = fingerprints | decoding | {"max_length": data_args.max_length}
        distributed.on_main(lambda: check_options(parts, options))
        # Every rank builds all that is left and deals the same length-sorted list round-robin,
        # so shards are equally long and, sliced in order, give batches of similar length.
        inputs = build_inputs(tokenizer, todo, data_args, args)
        if distributed.is_main() and not (args.teacher_forced or args.pair_logps):
            print(
                f"{inputs.prompts_cut} prompts cut to max_prompt_length={args.max_prompt_length}",
                flush=True,
            )
        shard = longest_first(inputs.lengths)[rank::world]
        with (
            open_part(parts, rank) as part,
            tqdm(
                total=len(shard), desc=f"rank 0 of {world}", disable=not distributed.is_main()
            ) as bar,
        ):
            for start in range(0, len(shard), args.batch_size):
                if stop:
                    break
                indices = shard[start : start + args.batch_size]
                batch = [todo[i] for i in indices]
                rows = generate_rows(model, tokenizer, args, batch, inputs, indices)
                rows = [{**r, **fingerprints} for r in rows]
                part.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                part.flush()
                bar.update(len(batch))
        if stop:  # each rank stops on its own: generation has no collective to agree in
            print(
                f"{stop.reason}: rank {rank} stopped between batches, the finished ones in "
                f"{parts}; exiting with {STOPPED}",
                flush=True,
            )
            tracker.finish()
            raise SystemExit(STOPPED)

    # Rank 0 merges once every rank has finished its shard.
    distributed.barrier()
    if distributed.is_main():
        rows = {**read_rows(output), **read_parts(parts)}
        missing = [e.id for e in examples if e.id not in rows]
        if missing:
            raise RuntimeError(f"{len(missing)} ids have no generation (first: {missing[:5]})")
        write_jsonl(output, (rows[e.id] for e in examples))
        shutil.rmtree(parts, ignore_errors=True)
        print(
            f"wrote {len(examples)} generations to {output} ({len(todo)} generated now)", flush=True
        )
        tracker.summary({"examples": len(examples), "generated": len(todo)})
        kind = (
            "predictions"
            if args.teacher_forced
            else "reference_logps"
            if args.pair_logps
            else "generations"
        )
        tracker.log_artifact(kind, output)
    tracker.finish()


if __name__ == "__main__":
    run_tool(main)
