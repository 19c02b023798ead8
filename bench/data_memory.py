"""Data in memory (issue 13): the tokenized training set per rank, as lists (before) and as a token
store (after), with 1 and 2 processes.

    python -m bench.data_memory [--examples 100000] [--max_length 512]

Before, every rank tokenizes the whole set with `encode_examples` and holds Python lists; after,
`train.setup.encode` with a cache folder: local rank 0 tokenizes into the store (in a forked
child) while the other waits, then both map it; restart, the same again with the store already
on disk (a resumed run). Each rank is its own process (a gloo group, as `train` on CPU): it loads
the tokenizer, measures its memory, builds the data (timed), reads every example once (as a run
does, touching every page), waits for the others and measures again. The data's memory is the
growth of USS (pages this process alone holds) and of PSS (shared pages split among the
processes that map them) over the measure before; peak RSS is the process's high-water mark,
and its child's that of the forked tokenizer. Token bytes are the store's token array (the ids
at their smallest width). The synthetic math task gives the examples, a 512-token tokenizer
trained on it tokenizes them. Prints a markdown snippet for bench/RESULTS.md.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
import torch.distributed as dist

from bench.generation import machine
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.synthetic_math import Difficulty, make_splits, write_splits
from data_tools.tokenization import encode_examples
from data_tools.tokenizer_training import train_tokenizer
from runtime.args import DataArgs
from runtime.distributed import free_port
from runtime.modeling import load_tokenizer
from train.setup import encode

PATHS = ("before", "after", "restart")  # restart: after, its store found on disk
MIB = 2**20


@dataclass
class DataMemoryArgs:
    examples: int = field(default=100_000, metadata={"help": "synthetic training examples"})
    max_length: int = 512
    processes: str = field(default="1,2", metadata={"help": "process counts to run"})
    worker: str | None = field(
        default=None, metadata={"help": "internal: run one rank of this path"}
    )
    folder: str | None = field(default=None, metadata={"help": "internal: the worker's files"})

    def __post_init__(self) -> None:
        if self.examples < 1:
            raise ValueError(f"examples must be at least 1, got {self.examples}")
        if not all(n.isdigit() and int(n) >= 1 for n in self.processes.split(",")):
            raise ValueError(f"processes must be integers >= 1, got {self.processes!r}")
        if self.worker not in (None, *PATHS):
            raise ValueError(f"worker must be one of {PATHS}, got {self.worker!r}")


def _memory() -> dict[str, int]:
    info = psutil.Process().memory_full_info()
    return {"rss": info.rss, "uss": info.uss, "pss": info.pss}


def _children_peak() -> int:
    """The peak RSS of the largest child waited for so far (import-time tools included)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def worker(args: DataMemoryArgs) -> None:
    """One rank: its measures written to `<folder>/<path>-<world>-<rank>.json`."""
    folder = Path(args.folder)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tokenizer = load_tokenizer(str(folder / "tokenizer"))
    data_args = DataArgs(str(folder / "data" / "train.jsonl"), max_length=args.max_length)
    gc.collect()
    dist.barrier()
    base, children = _memory(), _children_peak()
    start = time.perf_counter()
    if args.worker == "before":
        data, _ = encode_examples(tokenizer, data_args.load(), args.max_length)
    else:
        data = encode(tokenizer, data_args, cache=folder / f"tokenized-{world}")
    seconds = time.perf_counter() - start
    tokens = sum(len(e.input_ids) for e in data)  # every example read once
    gc.collect()
    dist.barrier()  # every rank holds (and maps) its data now
    held = _memory()
    dist.barrier()
    result = {
        "seconds": seconds,
        "tokens": tokens,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        # the forked child that tokenized the store, if this rank started one
        "child_peak_rss": _children_peak() if _children_peak() > children else None,
        "base": base,
        "held": held,
        "token_bytes": None if args.worker == "before" else data.token_bytes,
    }
    (folder / f"{args.worker}-{world}-{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _run(path: str, world: int, folder: Path, args: DataMemoryArgs) -> list[dict]:
    """Start `world` ranks of `path` and wait for them; their measures, by rank."""
    common = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(world),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    options = ["--examples", str(args.examples), "--max_length", str(args.max_length)]
    command = [sys.executable, "-m", "bench.data_memory", *options]
    ranks = [
        subprocess.Popen(
            [*command, "--worker", path, "--folder", str(folder)],
            env={**common, "RANK": str(r), "LOCAL_RANK": str(r)},
        )
        for r in range(world)
    ]
    for r, process in enumerate(ranks):
        if process.wait() != 0:
            raise RuntimeError(f"{path}, {world} processes: rank {r} exited {process.returncode}")
    return [json.loads((folder / f"{path}-{world}-{r}.json").read_text()) for r in range(world)]


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((DataMemoryArgs,), argv)
    if args.worker:
        worker(args)
        return
    worlds = [int(n) for n in args.processes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = make_splits({"train": 500}, Difficulty(), seed=0)["train"]
        train_tokenizer(
            [t for r in rows for t in (r["question"], r["answer"])], folder / "tokenizer"
        )
        write_splits(folder / "data", {"train": args.examples}, Difficulty(), seed=1)
        results = {(p, w): _run(p, w, folder, args) for w in worlds for p in PATHS}
    token_bytes = results["after", worlds[0]][0]["token_bytes"]
    tokens = results["after", worlds[0]][0]["tokens"]
    lines = [
        f"{machine()}; torch {torch.__version__}; {args.examples} synthetic math examples, "
        f"{tokens:,} tokens (max_length {args.max_length}); token bytes "
        f"{token_bytes / MIB:.1f} MiB (uint16).\n",
        "| path | processes | rank | data ready s | peak RSS MiB | its child's peak MiB "
        "| USS growth MiB | PSS growth MiB | PSS growth / token bytes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (path, world), ranks in results.items():
        for rank, r in enumerate(ranks):
            uss = (r["held"]["uss"] - r["base"]["uss"]) / MIB
            pss = r["held"]["pss"] - r["base"]["pss"]
            child = f"{r['child_peak_rss'] / MIB:.0f}" if r["child_peak_rss"] else "-"
            lines.append(
                f"| {path} | {world} | {rank} | {r['seconds']:.1f} | {r['peak_rss'] / MIB:.0f} "
                f"| {child} | {uss:.1f} | {pss / MIB:.1f} | {pss / token_bytes:.2f} |"
            )
    for world in worlds:
        before, after = results["before", world], results["after", world]
        memory = sum(r["held"]["pss"] - r["base"]["pss"] for r in before) / sum(
            r["held"]["pss"] - r["base"]["pss"] for r in after
        )
        seconds = max(r["seconds"] for r in before) / max(r["seconds"] for r in after)
        restart = max(r["seconds"] for r in results["restart", world])
        lines.append(
            f"\n{world} process(es): the data's memory (PSS growth, all ranks) before / after = "
            f"**{memory:.1f}x**; time until every rank has its data, before / after = "
            f"**{seconds:.2f}x**; a restart has it in {restart:.1f} s."
        )
    print("\n".join(lines))


if __name__ == "__main__":
    run_tool(main)
