"""The comparison's report: a table (method, exact match, tokens trained, wall time), the same
as results.json, and a plot of accuracy per method and by number of reasoning steps."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from data_tools.atomic import atomic_open, write_json, write_text  # noqa: E402
from data_tools.scoring import score_file  # noqa: E402

# The stages whose wall time is each reported model's training cost (the SFT base, which every
# method starts from, is reported on its own line).
COSTS = {
    "sft_base": ("sft_base",),
    "sft": ("sft",),
    "rac": ("rac_drafts", "rac_build", "rac"),
    "rac_self_correct": ("rac_drafts", "rac_build", "rac"),
    "scs": ("scs",),
}


def _cost_stages(name: str, timings: dict[str, float]) -> list[str]:
    if name == "bash":  # every round's predictions and training
        return [s for s in timings if s.startswith("bash_")]
    return [s for s in timings if s in COSTS[name]]


def _training_cost(run: Path, base: Path, name: str) -> tuple[int, int]:
    """Loss tokens and sequences through a forward pass of the model's own training (the SFT
    base, shared by all, is counted apart); BASH's passes include those making its tokens."""
    if name == "sft_base":
        files = [base / "sft_base" / "metrics.jsonl"]
    elif name == "bash":
        files = sorted((run / "bash").glob("round*/metrics.jsonl"))
    else:
        files = [run / ("rac" if name == "rac_self_correct" else name) / "metrics.jsonl"]
    rows = [json.loads(line) for f in files if f.exists() for line in f.open()]
    passes = sum(r.get("train/forward_sequences", 0) for r in rows)
    if name == "bash":
        passes += sum(1 for f in (run / "bash").glob("round*_predictions.jsonl") for _ in f.open())
    return sum(r["train/trained_tokens"] for r in rows), passes


def report(
    run: Path, base: Path, evaluations: dict[str, Path], timings: dict[str, float]
) -> list[dict]:
    rows = []
    for name, path in evaluations.items():
        scores = score_file(path, "math")
        steps = {r["id"]: r["meta"].get("num_steps") for r in map(json.loads, path.open())}
        by_steps: dict[int, list[bool]] = defaultdict(list)
        for e in scores["examples"]:
            by_steps[steps[e["id"]]].append(e["correct"])
        wall = sum(timings[s] for s in _cost_stages(name, timings))
        tokens, passes = _training_cost(run, base, name)
        rows.append(
            {
                "method": name,
                "exact_match": scores["summary"]["exact_match"],
                "n": scores["summary"]["n"],
                "by_steps": {
                    k: sum(v) / len(v) for k, v in sorted(by_steps.items()) if k is not None
                },
                "trained_tokens": tokens,
                "forward_sequences": passes,
                "train_wall_s": wall,
            }
        )
    write_json(run / "results.json", rows)
    table = [
        "| method | exact match | trained tokens | forward passes | training wall time (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    table += [
        f"| {r['method']} | {r['exact_match']:.3f} ({round(r['exact_match'] * r['n'])}/{r['n']}) | "
        f"{r['trained_tokens']:,} | {r['forward_sequences']:,} | {r['train_wall_s']:.0f} |"
        for r in rows
    ]
    write_text(run / "results.md", "\n".join(table) + "\n")
    print("\n".join(table), flush=True)
    plot(rows, run / "results.png")
    return rows


def plot(rows: list[dict], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar([r["method"] for r in rows], [r["exact_match"] for r in rows], color="tab:blue")
    left.set(title="Exact match per method", ylabel="exact match", ylim=(0, 1))
    left.tick_params(axis="x", rotation=30)
    for r in rows:
        steps = [int(k) for k in r["by_steps"]]
        right.plot(steps, list(r["by_steps"].values()), marker="o", label=r["method"])
    right.set(
        title="Exact match by number of reasoning steps",
        xlabel="reasoning steps",
        ylabel="exact match",
        ylim=(0, 1),
    )
    right.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
