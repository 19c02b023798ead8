"""Generate a response for every prompt of a dataset, sharded over ranks, resumable.

    python -m generate --config configs/generate_demo.yaml
    deepspeed --num_gpus 2 --module generate --config configs/generate_demo.yaml --do_sample true

Each rank generates for its own share of the prompts that are not done yet, in batches of
similar prompt length, and appends each finished batch to `<output>.parts/part-<rank>.jsonl`.
A rerun (with any number of ranks) skips the ids found there and shares out the rest; at the
end rank 0 merges everything, in input order, into `<output>` (atomically) and removes the
parts. A run whose `<output>` already holds every id does nothing. Resuming assumes the same
model and decoding options: nothing checks that the parts were made with them.

One line per example: {"id", "prompt", "reference", "generation", "generation_ids", "task",
"meta"}. `generation_ids` are the new tokens up to and including the first EOS (absent when
`max_new_tokens` cut the generation short), never padding; `generation` is their text without
special tokens. Greedy and sampled outputs depend only on the example (and, for sampling, on
seed and id), not on the number of ranks or the batch (exactly so in fp32): see sampling.py.

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
from transformers import GenerationConfig, PreTrainedTokenizerBase

from data_tools.atomic import write_jsonl
from data_tools.schema import Example
from data_tools.tokenization import encode_examples, encode_prompts
from generate.args import GenerateArgs
from generate.sampling import eos_ids, example_seed, generate_batch, longest_first
from runtime import distributed, dry_run
from runtime.args import DataArgs, ModelArgs
from runtime.config import parse_config
from runtime.ds_config import DTYPES, resolve_precision
from runtime.fingerprint import model_fingerprint, tokenizer_fingerprint
from runtime.modeling import load_model, load_tokenizer
from runtime.self_tokens import teacher_forced_predictions
from runtime.tracking import Tracker


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


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, args = parse_config((ModelArgs, DataArgs, GenerateArgs), argv)
    output, parts = Path(args.output), Path(f"{args.output}.parts")
    # What is left to do: every id (load_examples refuses duplicates) not in the output or in a
    # part file of an earlier run.
    examples = with_samples(data_args.load(), args.num_samples)
    done = read_rows(output)
    if args.dry_run:
        dry_run.plan_generate(model_args, data_args, args, examples, {**done, **read_parts(parts)})
        return
    precision = resolve_precision(args.precision)
    rank, world = distributed.init()
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
        )
        # Decode exactly as the options say, not with a checkpoint's defaults (sampling, penalties).
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=eos_ids(model, tokenizer),
            pad_token_id=tokenizer.pad_token_id,
        )
        model.to(distributed.device()).eval()
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions and args.max_prompt_length + args.max_new_tokens > positions:
            raise SystemExit(
                f"max_prompt_length {args.max_prompt_length} + max_new_tokens {args.max_new_tokens} "
                f"exceed the model's {positions} positions; lower one of them"
            )

        fingerprints = {
            "model_fingerprint": model_fingerprint(model_args.model_name_or_path),
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        }
        # Every rank tokenizes all that is left and deals the same length-sorted list round-robin,
        # so shards are equally long and, sliced in order, give batches of similar length.
        if args.mode == "teacher_forced":
            # Encoded exactly as `train` encodes them: the predictions align with its labels.
            encoded, report = encode_examples(
                tokenizer, todo, data_args.max_length, data_args.overlong
            )
            if report.skipped_ids:
                raise SystemExit(
                    f"teacher_forced: {report.summary()}; every example needs predictions"
                )
            lengths = [len(e.input_ids) for e in encoded]
        else:
            prompts, n_cut = encode_prompts(
                tokenizer, [e.prompt for e in todo], args.max_prompt_length
            )
            lengths = [len(p) for p in prompts]
            if distributed.is_main():
                print(
                    f"{n_cut} prompts cut to max_prompt_length={args.max_prompt_length}", flush=True
                )
        marker = tokenizer(args.correction_marker, add_special_tokens=False)["input_ids"]
        shard = longest_first(lengths)[rank::world]
        with (
            open_part(parts, rank) as part,
            tqdm(
                total=len(shard), desc=f"rank 0 of {world}", disable=not distributed.is_main()
            ) as bar,
        ):
            for start in range(0, len(shard), args.batch_size):
                batch = shard[start : start + args.batch_size]
                seeds = (
                    [example_seed(args.seed, todo[i].id) for i in batch] if args.do_sample else None
                )
                if args.mode == "teacher_forced":
                    temperature = args.temperature if args.do_sample else 0.0
                    predictions = teacher_forced_predictions(
                        model,
                        [encoded[i] for i in batch],
                        tokenizer.pad_token_id,
                        temperature,
                        seeds,
                    )
                    rows = [
                        {
                            "id": todo[i].id,
                            "predictions": p,
                            "task": todo[i].task,
                            "meta": todo[i].meta,
                        }
                        for i, p in zip(batch, predictions, strict=True)
                    ]
                else:
                    sample = (args.max_new_tokens, args.temperature, args.top_p)
                    new = generate_batch(
                        model, tokenizer, [prompts[i] for i in batch], sample[0], seeds, *sample[1:]
                    )
                    if args.self_correct:
                        # The draft (less its EOS), the marker, then a second generation from there.
                        drafts = [
                            d[:-1] if d and d[-1] in eos_ids(model, tokenizer) else d for d in new
                        ]
                        second = [
                            prompts[i] + d + marker for i, d in zip(batch, drafts, strict=True)
                        ]
                        seeds = (
                            [example_seed(args.seed, f"{todo[i].id}#correct") for i in batch]
                            if seeds
                            else None
                        )
                        fixes = generate_batch(
                            model, tokenizer, second, sample[0], seeds, *sample[1:]
                        )
                        new = [d + marker + f for d, f in zip(drafts, fixes, strict=True)]
                    rows = [
                        to_row(todo[i], ids, tokenizer) for i, ids in zip(batch, new, strict=True)
                    ]
                rows = [{**r, **fingerprints} for r in rows]
                part.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                part.flush()
                bar.update(len(batch))

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
        kind = "predictions" if args.mode == "teacher_forced" else "generations"
        tracker.log_artifact(kind, output)
    tracker.finish()


if __name__ == "__main__":
    main()
