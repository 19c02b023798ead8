"""The comparison's report: a table (method, exact match, on each extra evaluation split too,
tokens trained, wall time; for DPO rows the held-out preference accuracy), the same as
results.json, a plot of accuracy per method and by number of reasoning steps (results.png), the
methods' learning curves (learning_curves.png), and, with wandb, all of these in a run of job
type "report"."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from data_tools.atomic import write_json, write_text
from data_tools.scoring import score_file
from methods.correction import CORRECTION_MARKER
from pipeline.plan import DPO_SUFFIX, round_folders
from runtime import plots
from runtime.tracking import Tracker

# The stages whose wall time is each reported model's training cost (the SFT base, which every
# method starts from, is reported on its own line).
COSTS = {
    "pretrained": (),
    "sft_base": ("sft_base",),
    "sft": ("sft",),
    "scs": ("scs",),
}
# The models trained in rounds, each round's stages named "<method>_..." (pipeline.plan).
ROUNDS = {"bash": "bash", "rac": "rac", "rac_self_correct": "rac"}
DPO_PAIRS = ("dpo_samples", "dpo_pairs")  # the training pairs, shared by every DPO row


def _lines(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0


def _cost_stages(name: str, stages: list[str]) -> list[str]:
    """The stages (of the plan's `stages`) whose wall time is a row's cost. A DPO row's are its
    start method's, the shared pairs', its reference's and its own: the cost from the SFT base,
    as every other row's (held-out pairs are evaluation)."""
    if name.endswith(DPO_SUFFIX):
        start = name.removesuffix(DPO_SUFFIX)
        own = (*DPO_PAIRS, f"dpo_reference_{start}", name)
        return _cost_stages(start, stages) + [s for s in stages if s in own]
    if name in ROUNDS:  # every round's model tokens and training
        return [s for s in stages if s.startswith(f"{ROUNDS[name]}_")]
    return [s for s in stages if s in COSTS[name]]


def wall_time(name: str, stages: list[str], timings: dict[str, float]) -> float | None:
    """A row's training wall time; None when a stage's time was never recorded (a run stopped
    between a stage's end and the record of its time), rather than a sum that leaves it out."""
    costs = _cost_stages(name, stages)
    return None if any(s not in timings for s in costs) else sum(timings[s] for s in costs)


def _metrics_files(run: Path, base: Path, name: str) -> list[Path]:
    """The metrics.jsonl of the training that made a reported model (BASH: every round's)."""
    if name == "pretrained":
        return []
    if name == "sft_base":
        return [base / "sft_base" / "metrics.jsonl"]
    if name in ROUNDS:
        metrics = (d / "metrics.jsonl" for d in round_folders(run / ROUNDS[name]))
        return [f for f in metrics if f.exists()]
    return [run / name / "metrics.jsonl"]


def _training_cost(run: Path, base: Path, name: str) -> tuple[int, int]:
    """Loss tokens and sequences through a forward pass of the model's own training (the SFT
    base, shared by all, is counted apart); BASH's passes include those making its tokens, a DPO
    row's its start method's, the sampled answers and the reference's two per pair."""
    if name.endswith(DPO_SUFFIX):
        tokens, passes = _training_cost(run, base, name.removesuffix(DPO_SUFFIX))
        rows = plots.read_metrics(run / name / "metrics.jsonl")
        passes += _lines(run / "dpo" / "samples.jsonl") + 2 * _lines(run / name / "reference.jsonl")
        tokens += sum(r["train/trained_tokens"] for r in rows)
        return tokens, passes + sum(r["train/forward_sequences"] for r in rows)
    rows = [r for f in _metrics_files(run, base, name) for r in plots.read_metrics(f)]
    passes = sum(r.get("train/forward_sequences", 0) for r in rows)
    if name == "bash":
        passes += sum(_lines(f) for f in (run / "bash").glob("round*_predictions.jsonl"))
    return sum(r["train/trained_tokens"] for r in rows), passes


def _scores(path: Path, task: str) -> dict:
    """One generation file's exact match, its interval, its number of examples and the exact
    match by number of reasoning steps (a row's meta.num_steps)."""
    scores = score_file(path, task, CORRECTION_MARKER)
    steps = {r["id"]: r["meta"].get("num_steps") for r in map(json.loads, path.open())}
    by_steps: dict[int, list[bool]] = defaultdict(list)
    for e in scores["examples"]:
        by_steps[steps[e["id"]]].append(e["correct"])
    summary = scores["summary"]
    return {
        "exact_match": summary["exact_match"],
        "exact_match_ci": summary["exact_match_ci"],
        "n": summary["n"],
        "by_steps": {k: sum(v) / len(v) for k, v in sorted(by_steps.items()) if k is not None},
    }


def _exact_match(scores: dict) -> str:
    """Exact match and its count, e.g. 0.683 (342/500)."""
    n = scores["n"]
    return f"{scores['exact_match']:.3f} ({round(scores['exact_match'] * n)}/{n})"


def _fraction(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _seconds(value: float | None) -> str:
    return "not recorded" if value is None else f"{value:.0f}"


def report(
    run: Path,
    base: Path,
    evaluations: dict[str, Path],
    stages: list[str],
    timings: dict[str, float],
    *,
    task: str = "math",
    splits: dict[str, dict[str, Path]] | None = None,
) -> list[dict]:
    """The rows, scored by `task`'s scorer: each model's on the report split (`evaluations`), and
    under "splits" its scores on each extra split (`splits`: split -> model -> generations)."""
    splits = splits or {}
    rows = []
    for name, path in evaluations.items():
        wall = wall_time(name, stages, timings)
        tokens, passes = _training_cost(run, base, name)
        row = {
            "method": name,
            **_scores(path, task),
            "splits": {split: _scores(paths[name], task) for split, paths in splits.items()},
            "trained_tokens": tokens,
            "forward_sequences": passes,
            "train_wall_s": wall,
        }
        if name.endswith(DPO_SUFFIX):  # at the end of training, which always evaluates
            row["preference_accuracy"] = plots.read_metrics(run / name / "metrics.jsonl")[-1][
                "eval/reward_accuracy"
            ]
        rows.append(row)
    write_json(run / "results.json", rows)
    dpo = any("preference_accuracy" in r for r in rows)
    table = [
        "| method | exact match |"
        + "".join(f" {split} |" for split in splits)
        + " trained tokens | forward passes | training wall time (s) |"
        + (" held-out preference accuracy |" if dpo else ""),
        "|---|---:|" + "---:|" * len(splits) + "---:|---:|---:|" + ("---:|" if dpo else ""),
    ]
    table += [
        f"| {r['method']} | {_exact_match(r)} |"
        + "".join(f" {_exact_match(r['splits'][split])} |" for split in splits)
        + f" {r['trained_tokens']:,} | {r['forward_sequences']:,} | "
        f"{_seconds(r['train_wall_s'])} |"
        + (f" {_fraction(r.get('preference_accuracy'))} |" if dpo else "")
        for r in rows
    ]
    write_text(run / "results.md", "\n".join(table) + "\n")
    print("\n".join(table), flush=True)
    plots.accuracy(rows, run / "results.png")
    plots.learning_curves(
        method_curves(run, base, [r["method"] for r in rows]),
        run / "learning_curves.png",
        f"Learning curves of the methods from the SFT base ({run})",
    )
    return rows


def method_curves(run: Path, base: Path, names: list[str]) -> dict[str, list[dict]]:
    """Each method's metrics rows, BASH's rounds one after the other (the SFT base, which all
    start from, and RAC's second inference mode have no curve of their own here, nor DPO, whose
    loss is not per token: its curves are in its run's learning_curve.png and wandb)."""
    curves = {}
    for name in names:
        if name in ("pretrained", "sft_base", "rac_self_correct") or name.endswith(DPO_SUFFIX):
            continue
        rows: list[dict] = []
        for f in _metrics_files(run, base, name):
            offset = rows[-1]["step"] if rows else 0
            rows += [{**r, "step": r["step"] + offset} for r in plots.read_metrics(f)]
        curves[name] = rows
    return curves


def track(rows: list[dict], run: Path, tracker: Tracker) -> None:
    """The report in wandb: each method's exact match (with its interval; on each extra split,
    `<split>_exact_match`) and costs as summary metrics and as a table, and the two plots."""
    flat = []
    for r in rows:
        low, high = r["exact_match_ci"]
        by_steps = {f"exact_match_steps_{k}": v for k, v in r["by_steps"].items()}
        splits = {}
        for split, s in r["splits"].items():
            split_low, split_high = s["exact_match_ci"]
            splits |= {
                f"{split}_exact_match": s["exact_match"],
                f"{split}_exact_match_ci_low": split_low,
                f"{split}_exact_match_ci_high": split_high,
            }
        rest = {k: v for k, v in r.items() if k not in ("exact_match_ci", "by_steps", "splits")}
        flat.append(
            rest | {"exact_match_ci_low": low, "exact_match_ci_high": high} | by_steps | splits
        )
    tracker.summary({f"{f['method']}/{k}": v for f in flat for k, v in f.items() if k != "method"})
    columns = list(dict.fromkeys(k for f in flat for k in f))
    tracker.log_table("results/table", columns, [[f.get(k) for k in columns] for f in flat])
    tracker.log_image("results/plot", run / "results.png")
    tracker.log_image("learning_curves", run / "learning_curves.png")
