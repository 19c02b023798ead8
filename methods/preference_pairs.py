"""Preference pairs made from the model's own samples, for DPO on a task whose scorer says right
or wrong (math, postfix): each training prompt's sampled answers are scored against its
reference, and a prompt gives one pair, chosen = its first right sample (the reference answer
when no sample is right), rejected = its first wrong one. A prompt with no wrong sample has
nothing to reject and is skipped; so is one without samples; both are counted and printed, as
are the empty samples (an immediate EOS), which are not candidates.

    deepspeed --num_gpus 2 --module generate --model_name_or_path runs/sft/export \\
        --data train.jsonl --do_sample true --num_samples 4 --output runs/dpo/samples.jsonl
    python -m methods.preference_pairs --data train.jsonl --samples runs/dpo/samples.jsonl \\
        --tokenizer runs/sft/export --output runs/dpo/pairs.jsonl

writes rows {"id", "prompt", "chosen", "rejected", "task", "meta"} (the example's id; meta says
which sample each response is) that `data_tools.preferences` reads as strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from data_tools.atomic import write_jsonl
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.schema import DataError, Example
from data_tools.scoring import RIGHT_OR_WRONG
from data_tools.sources import load_examples
from methods.correction import is_right, read_drafts


def build_pairs(
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    samples: dict[str, list[list[int]]],
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One preference row per example that has a wrong sample (see the module doc), from
    `samples` (example id -> the token ids of its samples, in order), and a report of counts."""
    tasks = sorted({e.task for e in examples})
    if not set(tasks) <= set(RIGHT_OR_WRONG):
        raise ValueError(
            "pairs from samples need a scorer that says right or wrong, which only tasks "
            f"{', '.join(RIGHT_OR_WRONG)} have; the examples have task(s) {tasks}"
        )
    report = {"prompts": len(examples)}
    report |= dict.fromkeys(("samples", "empty", "right", "wrong", "pairs", "chosen_reference"), 0)
    report |= dict.fromkeys(("skipped_no_wrong", "skipped_no_samples"), 0)
    rows = []
    for example in examples:
        texts = [
            tokenizer.decode(ids, skip_special_tokens=True) for ids in samples.get(example.id, [])
        ]
        report["samples"] += len(texts)
        if not texts:
            report["skipped_no_samples"] += 1
            continue
        right, wrong = [], []
        for k, text in enumerate(texts):
            if not text.strip():
                report["empty"] += 1
                continue
            (right if is_right(text, example) else wrong).append(k)
        report["right"] += len(right)
        report["wrong"] += len(wrong)
        if not wrong:
            report["skipped_no_wrong"] += 1
            continue
        chosen = (
            (texts[right[0]], f"sample {right[0]}") if right else (example.response, "reference")
        )
        report["chosen_reference"] += not right
        report["pairs"] += 1
        rows.append(
            {
                "id": example.id,
                "prompt": example.prompt,
                "chosen": chosen[0],
                "rejected": texts[wrong[0]],
                "task": example.task,
                "meta": {**example.meta, "chosen": chosen[1], "rejected": f"sample {wrong[0]}"},
            }
        )
    return rows, report


@dataclass
class PreferencePairsArgs:
    data: str = field(metadata={"help": "the training data (file or hub dataset)"})
    samples: str = field(
        metadata={"help": "generate's output with several samples per prompt (num_samples)"}
    )
    tokenizer: str = field(metadata={"help": "the model's tokenizer (folder or hub name)"})
    output: str = field(metadata={"help": "the preference pairs jsonl to write"})
    task: str = field(
        default="math",
        metadata={"help": " or ".join(RIGHT_OR_WRONG) + " (a scorer says right or wrong)"},
    )
    limit: int | None = field(
        default=None, metadata={"help": "use only the first N examples of the data"}
    )


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((PreferencePairsArgs,), argv)
    examples, _ = load_examples(args.data, task=args.task, limit=args.limit)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)  # its vocabulary checks the samples
    samples = read_drafts(args.samples, {e.id for e in examples}, len(tokenizer))
    rows, report = build_pairs(tokenizer, examples, samples)
    print(json.dumps(report))
    if not rows:
        raise DataError(args.samples, None, "no pairs to write: no prompt has a wrong sample")
    write_jsonl(args.output, rows)
    print(
        f"wrote {len(rows)} pairs to {args.output}; skipped {report['skipped_no_wrong']} prompts "
        f"with no wrong sample and {report['skipped_no_samples']} without samples"
    )


if __name__ == "__main__":
    run_tool(main)
