"""The PNG plots written beside the results: learning curves (train), accuracy per method and by
reasoning steps (pipeline report), exposure bias per response position (generate.exposure_bias).

Figures are built without pyplot (no global state, no display backend) and saved atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from data_tools.atomic import atomic_open


def save(fig: Figure, path: Path) -> Path:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    return path


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a training run's metrics.jsonl (one per step)."""
    return [json.loads(line) for line in path.open(encoding="utf-8")] if path.exists() else []


def _smoothed(values: np.ndarray, window: int) -> np.ndarray:
    return np.convolve(values, np.ones(window) / window, mode="valid")


def _loss_axes(ax: Axes, title: str) -> None:
    """Steps as integers; a log scale when the loss falls by more than a factor of 10."""
    values = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax.lines] or [[]])
    log = values.size > 0 and values.min() > 0 and values.max() / values.min() > 10
    ax.set(title=title, xlabel="step", ylabel="loss per trained token (nats)")
    ax.set_yscale("log" if log else "linear")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()


def learning_curves(curves: dict[str, list[dict[str, float]]], path: Path, title: str) -> Path:
    """Train loss and eval loss against the step, one line per run (`curves`: label -> the rows
    of its metrics.jsonl). The noisy train loss is drawn faint, with its running mean on top."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    train_ax, eval_ax = fig.subplots(1, 2)
    for i, (label, rows) in enumerate(curves.items()):
        color = f"C{i}"
        steps = np.array([r["step"] for r in rows if "train/loss" in r])
        loss = np.array([r["train/loss"] for r in rows if "train/loss" in r])
        if not len(loss):  # a run with no metrics (yet)
            continue
        window = max(1, len(loss) // 25)
        if window > 1:
            train_ax.plot(steps, loss, color=color, alpha=0.25, linewidth=0.8)
            label_train = f"{label} (mean of {window} steps)"
        else:
            label_train = label
        train_ax.plot(steps[window - 1 :], _smoothed(loss, window), color=color, label=label_train)
        evaluated = [r for r in rows if "eval/loss" in r]
        if evaluated:
            eval_ax.plot(
                [r["step"] for r in evaluated],
                [r["eval/loss"] for r in evaluated],
                color=color,
                marker="o",
                label=label,
            )
    _loss_axes(train_ax, "Train loss (on each run's own training inputs)")
    _loss_axes(eval_ax, "Eval loss (held-out data, reference prefixes)")
    fig.suptitle(title)
    return save(fig, path)


def learning_curve(run_dir: Path) -> Path:
    """`run_dir`/learning_curve.png from `run_dir`/metrics.jsonl (a `train` output folder)."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    return learning_curves(
        {run_dir.name: rows}, run_dir / "learning_curve.png", f"Learning curve: {run_dir}"
    )


def accuracy(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Exact match per method (with its 95% interval, when the rows have one) and exact match
    against the number of reasoning steps, one line per method (pipeline report rows)."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    methods = [r["method"] for r in rows]
    values = np.array([r["exact_match"] for r in rows])
    errors, title = None, "Exact match per method"
    if all("exact_match_ci" in r for r in rows):
        ci = np.array([r["exact_match_ci"] for r in rows])
        errors, title = np.abs(ci.T - values), title + " (95% bootstrap CI)"
    left.bar(methods, values, yerr=errors, capsize=4, color=[f"C{i}" for i in range(len(rows))])
    tops = values if errors is None else values + errors[1]
    for x, (v, top) in enumerate(zip(values, tops, strict=True)):
        left.annotate(f"{v:.3f}", (x, top + 0.01), ha="center", va="bottom", fontsize=8)
    left.set(title=title, ylabel="exact match", ylim=(0, 1))
    left.tick_params(axis="x", rotation=30)
    for i, r in enumerate(rows):
        steps = [int(k) for k in r["by_steps"]]
        right.plot(
            steps, list(r["by_steps"].values()), marker="o", color=f"C{i}", label=r["method"]
        )
    right.set(
        title="Exact match by number of reasoning steps",
        xlabel="reasoning steps",
        ylabel="exact match",
        ylim=(0, 1),
    )
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.grid(alpha=0.3)
    right.legend()
    return save(fig, path)


def _nan(values: Sequence[float | None]) -> list[float]:
    return [np.nan if v is None else v for v in values]


def exposure_bias(result: dict[str, Any], path: Path) -> Path:
    """Accuracy and loss per position under teacher forcing and free running, and the cumulative
    gaps (an `exposure_bias.json` result)."""
    x = result["position"]
    fig = Figure(figsize=(15, 4.5), layout="tight")
    axes = fig.subplots(1, 3)
    for ax, key in zip(axes[:2], ("accuracy", "loss"), strict=True):
        ax.plot(x, _nan(result["teacher_forced"][key]), label="teacher forced (reference prefix)")
        ax.plot(x, _nan(result["free_running"][key]), label="free running (own greedy prefix)")
        ax.set(title=f"Token {key} per response position", xlabel="response position")
        ax.set(ylabel=f"token {key}" + (" (cross-entropy)" if key == "loss" else ""))
        ax.legend()
    # The two gaps differ in scale: one axis each.
    accuracy_axis, loss_axis = axes[2], axes[2].twinx()
    lines = accuracy_axis.plot(
        x, _nan(result["gap"]["cumulative_accuracy"]), color="tab:blue", label="accuracy (left)"
    )
    lines += loss_axis.plot(
        x, _nan(result["gap"]["cumulative_loss"]), color="tab:red", label="loss (right)"
    )
    accuracy_axis.axhline(0, color="grey", linewidth=0.8)
    accuracy_axis.set(
        title="Cumulative gap, free running - teacher forced",
        xlabel="response position",
        ylabel="cumulative accuracy gap",
    )
    loss_axis.set(ylabel="cumulative loss gap (nats)")
    accuracy_axis.legend(handles=lines)
    fig.suptitle(
        f"Exposure bias: {result['model']} on {result['data']} ({result['examples']} examples)"
    )
    return save(fig, path)
