"""Where static batches wait (issue 13): the decoding slots `generate`'s batches leave idle, and so
the most continuous batching could gain, on any device.

    python -m bench.slot_waste --tokenizer TOKENIZER --generations eval/test/sft.jsonl
    python -m bench.slot_waste --tokenizer models/smollm2 --data ../shared/data/gsm8k/test.jsonl

`generate` sorts the prompts longest first, deals them to the ranks in turn and decodes each
rank's slices of `batch_size` together: a batch runs as many decoding steps as its longest
answer, and a row whose answer has ended holds its slot until then. From the answers' lengths
(a generation file's `generation_ids`, or with `--data` the references' tokens plus EOS, for
data no model has answered yet) this counts, per rank and batch, the decoding slots used and
idle, and the prompt positions that are padding. Continuous batching gives an ended row's slot
to the next prompt, so with every slot kept busy it needs the used slots alone: total / used is
the most it can gain in decoding steps, whatever the device (it adds its own per-step costs, which
`bench/gpu_check.sh` measures). Prints markdown for bench/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.schema import DataError
from data_tools.sources import jsonl_objects, load_examples
from data_tools.tokenization import encode_prompts, response_ids
from generate.args import GenerateArgs
from runtime.generation import longest_first
from runtime.modeling import load_tokenizer


@dataclass
class SlotWasteArgs:
    tokenizer: str = field(
        metadata={"help": "the tokenizer the prompts were (or will be) cut with"}
    )
    generations: str | None = field(default=None, metadata={"help": "a generate output jsonl"})
    data: str | None = field(
        default=None, metadata={"help": "instead: a dataset, its references as the answers"}
    )
    task: str = "math"
    batch_sizes: str = field(default="8,32,128", metadata={"help": "per rank"})
    ranks: int = 1
    max_prompt_length: int = GenerateArgs.max_prompt_length

    def __post_init__(self) -> None:
        if (self.generations is None) == (self.data is None):
            raise ValueError("give one of generations or data")
        if not all(b.isdigit() and int(b) >= 1 for b in self.batch_sizes.split(",")):
            raise ValueError(f"batch_sizes must be integers >= 1, got {self.batch_sizes!r}")
        if self.ranks < 1:
            raise ValueError(f"ranks must be at least 1, got {self.ranks}")


def slots(prompts: list[int], answers: list[int], batch_size: int, ranks: int) -> dict[str, int]:
    """Decoding slots (used, idle) and prompt positions (real, padding) of `generate`'s batches
    over prompts and answers of these lengths."""
    order = longest_first(prompts)
    out = {"used": 0, "idle": 0, "prompt": 0, "padding": 0, "steps": 0}
    for rank in range(ranks):
        shard = order[rank::ranks]
        for start in range(0, len(shard), batch_size):
            batch = shard[start : start + batch_size]
            steps, width = max(answers[i] for i in batch), max(prompts[i] for i in batch)
            out["steps"] += steps
            out["used"] += sum(answers[i] for i in batch)
            out["idle"] += sum(steps - answers[i] for i in batch)
            out["prompt"] += sum(prompts[i] for i in batch)
            out["padding"] += sum(width - prompts[i] for i in batch)
    return out


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((SlotWasteArgs,), argv)
    tokenizer = load_tokenizer(args.tokenizer)
    if args.generations:
        prompt_texts, answers = [], []
        for where, row in jsonl_objects(args.generations):
            for name, kind in (("prompt", str), ("generation_ids", list)):
                if not isinstance(row.get(name), kind):
                    raise DataError(where, name, f"missing or not a {kind.__name__}")
            prompt_texts.append(row["prompt"])
            answers.append(len(row["generation_ids"]))
        source = f"{args.generations}: the model's answers"
    else:
        examples, _ = load_examples(args.data, task=args.task)
        prompt_texts = [e.prompt for e in examples]
        answers = [len(ids) + 1 for ids in response_ids(tokenizer, [e.response for e in examples])]
        source = f"{args.data}: the references' lengths (+ EOS) as the answers"
    if not answers:
        raise ValueError(f"{args.generations or args.data}: no answers to count")
    prompts = [len(p) for p in encode_prompts(tokenizer, prompt_texts, args.max_prompt_length)[0]]
    print(
        f"{source}; {len(answers)} answers of {min(answers)}-{max(answers)} tokens (mean "
        f"{sum(answers) / len(answers):.1f}); prompts {min(prompts)}-{max(prompts)} tokens; "
        f"{args.ranks} rank(s), prompts longest first as `generate` orders them.\n"
    )
    print(
        "| batch size | decoding steps | slots idle | prompt padding | continuous batching's bound |"
    )
    print("|---:|---:|---:|---:|---:|")
    for batch_size in map(int, args.batch_sizes.split(",")):
        s = slots(prompts, answers, batch_size, args.ranks)
        total = s["used"] + s["idle"]
        print(
            f"| {batch_size} | {s['steps']:,} | {s['idle'] / total:.1%} "
            f"| {s['padding'] / (s['prompt'] + s['padding']):.1%} | {total / s['used']:.2f}x |"
        )


if __name__ == "__main__":
    run_tool(main)
