"""The science of issue 3: SFT (continued), BASH, RAC (direct and self-correct) and SCS from one
SFT model on the synthetic math task, under the same budget (steps x batch, on the same
training examples), and what each costs.

    python -m bench.compare_methods [--output_dir bench_runs/compare] [--seeds 0,1,2]

1. The base: data, tokenizer and the SFT model every method starts from (`pipeline`).
2. Tuning on the validation split (seed 0): BASH's p and schedule, RAC's cut variant and mix.
   The best variant of each method (by validation exact match) is kept.
3. The test split, touched once: every method with its chosen variant, for each seed (the seed
   sets the data order, the interleaved positions and RAC's sample order; the base is shared).
   Mean and standard deviation of exact match, overall and by number of reasoning steps, and the
   cost of BASH and SCS against SFT (wall time and sequences through a forward pass) as ratios
   within each seed's run, where the three ran one after another on the same machine.
4. Exposure bias of each seed-0 model (`generate.exposure_bias`, the first 200 test problems):
   token accuracy per response position under teacher forcing and free running.

Every run is a `pipeline` run, so a rerun skips what is finished. The base's fingerprint, the
tuning's choice and each seed's results are recorded in `--results_dir` (bench/results/compare) as
they finish, so a study longer than a session goes on from a fresh machine: the base is made
again there and must be the recorded one. Prints markdown for bench/RESULTS.md and writes
<output_dir>/summary.json.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_tools.atomic import write_json
from data_tools.config import parse_config
from data_tools.errors import run_tool
from pipeline.plan import round_folders
from runtime.fingerprint import model_fingerprint

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/compare_demo.yaml"


def _bash(schedule: str, p: str, *extra: str) -> list[str]:
    return ["--ss_schedule", schedule, "--ss_p_max", p, "--ss_ramp_steps", "100", *extra]


def _rac(variant: str, mix: str, *extra: str) -> list[str]:
    return ["--rac_variant", variant, "--rac_mix", mix, *extra]


# Variants tried on the validation split: (name, method, pipeline options). Every option a
# variant depends on is spelled out, so that a variant means the same whatever the defaults.
VARIANTS = [
    ("sft", "sft", []),
    ("bash p0.1 linear", "bash", _bash("linear", "0.1")),
    ("bash p0.25 linear", "bash", _bash("linear", "0.25")),
    ("bash p0.5 linear", "bash", _bash("linear", "0.5")),
    ("bash p0.25 constant", "bash", _bash("constant", "0.25")),
    ("bash p0.25 linear, 2 rounds", "bash", _bash("linear", "0.25", "--bash_rounds", "2")),
    (
        "bash p0.25 constant, sampled T1",
        "bash",
        _bash("constant", "0.25", "--bash_temperature", "1.0"),
    ),
    ("rac first_divergence mix0.5", "rac", _rac("first_divergence", "0.5")),
    ("rac whole mix0.5", "rac", _rac("whole", "0.5")),
    ("rac whole mix0.25", "rac", _rac("whole", "0.25")),
    ("rac whole only_wrong", "rac", _rac("whole", "0.5", "--rac_right_drafts", "drop")),
]


# Options of BASH's offline tokens, which SCS (tokens made online, by argmax) does not have.
BASH_ONLY = ("--bash_rounds", "--bash_temperature")


def pipeline(run_dir: Path, *options: str, config: str = CONFIG) -> dict[str, dict]:
    """Run (or finish) one pipeline; its results by reported model."""
    command = [sys.executable, "-m", "pipeline", "--config", config, "--run_dir", str(run_dir)]
    print(f"$ {' '.join(command[2:])} {' '.join(options)}", flush=True)
    subprocess.run([*command, *options], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return {r["method"]: r for r in json.loads((run_dir / "results.json").read_text())}


def scs_options(bash_options: list[str]) -> list[str]:
    """BASH's options less those of its offline tokens (`BASH_ONLY`): SCS, the online version of
    BASH, gets BASH's schedule, so that the two differ in the source of the model's tokens
    alone."""
    pairs = [bash_options[i : i + 2] for i in range(0, len(bash_options), 2)]
    return [o for pair in pairs if pair[0] not in BASH_ONLY for o in pair]


def slug(name: str) -> str:
    return name.replace(" ", "_").replace(",", "")


def tune(out: Path) -> dict[str, Any]:
    """Validation exact match of every variant (`validation`: variant, model, exact match) and
    the best variant per reported model (`chosen`: variant, [method, *options])."""
    rows, best = [], {}
    for name, method, options in VARIANTS:
        results = pipeline(
            out / "validation" / slug(name),
            "--base_dir",
            str(out / "base"),
            "--methods",
            method,
            "--report_split",
            "validation",
            *options,
        )
        for model, r in results.items():
            if model == "sft_base":
                continue
            rows.append((name, model, r["exact_match"]))
            if model not in best or r["exact_match"] > best[model][0]:
                best[model] = (r["exact_match"], name, [method, *options])
    chosen = {model: (name, options) for model, (_, name, options) in best.items()}
    name, (_, *options) = chosen["bash"]
    chosen["scs"] = (name.replace("bash", "scs").split(",")[0], ["scs", *scs_options(options)])
    return {"validation": rows, "chosen": chosen}


def trained_model(run_dir: Path, method: str) -> Path:
    """A method's model in a pipeline run: BASH's and RAC's from their last round."""
    if method not in ("bash", "rac"):
        return run_dir / method / "export"
    return round_folders(run_dir / method)[-1] / "export"


def exposure_bias(out: Path, chosen: dict[str, tuple[str, list[str]]]) -> dict[str, dict]:
    """Teacher-forced and free-running token accuracy of each seed-0 model, averaged over the
    response positions that at least half of the examples reach, and their gap."""
    seed0 = out / "test" / "seed0"
    exports = {"sft_base": out / "base" / "sft_base" / "export"}
    for model in ("sft", "bash", "rac", "scs"):
        if model in chosen:
            exports[model] = trained_model(seed0 / slug(chosen[model][0]), model)
    rows = {}
    for model, export in exports.items():
        result_dir = seed0 / "exposure_bias" / model
        if not (result_dir / "exposure_bias.json").exists():
            command = ["-m", "generate.exposure_bias", "--model_name_or_path", str(export)]
            command += ["--data", str(out / "base/data/test.jsonl"), "--task", "math"]
            command += ["--output_dir", str(result_dir), "--limit", "200"]
            print(f"$ {' '.join(command[1:])}", flush=True)
            subprocess.run([sys.executable, *command], cwd=REPO, check=True)
        r = json.loads((result_dir / "exposure_bias.json").read_text())
        reached = [i for i, n in enumerate(r["count"]) if n >= r["count"][0] / 2]
        teacher = statistics.mean(r["teacher_forced"]["accuracy"][i] for i in reached)
        free = statistics.mean(r["free_running"]["accuracy"][i] for i in reached)
        rows[model] = {"positions": len(reached), "teacher_forced": teacher, "free_running": free}
    return rows


@dataclass
class CompareArgs:
    output_dir: str = field(
        default="bench_runs/compare", metadata={"help": "folder of every pipeline run"}
    )
    seeds: str = field(default="0,1,2", metadata={"help": "the test runs' seeds, comma-separated"})
    results_dir: str = field(
        default="bench/results/compare",
        metadata={"help": "the tuning's choice and each seed's results, kept across sessions"},
    )

    def __post_init__(self) -> None:
        try:
            self.seed_list()
        except ValueError:
            raise ValueError(
                f"seeds must be integers separated by commas, got {self.seeds!r}"
            ) from None

    def seed_list(self) -> list[int]:
        return [int(s) for s in self.seeds.split(",")]

    def stamp(self) -> str:
        """What the records depend on: the config."""
        return hashlib.sha256((REPO / CONFIG).read_text().encode()).hexdigest()[:16]


def load(path: Path, stamp: str) -> dict[str, Any] | None:
    """A finished record, or None; one made under another config is refused."""
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if record["stamp"] != stamp:
        raise ValueError(
            f"{path}: made under another config or other options (stamp {record['stamp']}, now "
            f"{stamp}); move the folder away to run the study again"
        )
    return record


def base(out: Path, path: Path, stamp: str) -> dict[str, Any]:
    """The shared SFT base, made (or finished) here, with its validation exact match and its
    weights' fingerprint, recorded at `path` the first time. A base made again in a later session
    must be the recorded one, since the recorded runs continued that model (one made by other
    code or libraries is another)."""
    results = pipeline(out / "base", "--methods", "", "--report_split", "validation")
    made = {
        "stamp": stamp,
        "base": model_fingerprint(str(out / "base" / "sft_base" / "export")),
        "base_exact_match": results["sft_base"]["exact_match"],
    }
    recorded = load(path, stamp)
    if recorded is None:
        write_json(path, made)
    else:
        same_base(path, recorded["base"], made["base"])
    return made


def same_base(path: Path, recorded: str | None, made: str) -> None:
    """Refuse to add to the runs recorded at `path` unless the SFT base they continued (by its
    weights' fingerprint) is the one made now: a base made by other code or libraries is another
    model."""
    if recorded != made:
        raise ValueError(
            f"{path}: its runs continued the SFT base {recorded}, but the base made now is {made} "
            "(other code or libraries); move it away to run them again in full"
        )


def run_seed(out: Path, seed: int, chosen: dict[str, Any]) -> dict[str, dict]:
    """One seed's test run of every chosen variant: each model's results, the base's too."""
    models = {}
    for model, (name, (method, *options)) in chosen.items():
        results = pipeline(
            out / "test" / f"seed{seed}" / slug(name), "--base_dir", str(out / "base"),
            "--seed", str(seed), "--methods", method, "--report_split", "test", *options,
        )  # fmt: skip
        models[model] = results[model]
    models["sft_base"] = results["sft_base"]  # the same model every seed
    return models


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((CompareArgs,), argv)
    out, results, stamp = Path(args.output_dir), Path(args.results_dir), args.stamp()
    made = None  # the base, made and checked once, before the first run of this invocation
    tuning = load(results / "tuning.json", stamp)
    if tuning is None:
        made = base(out, results / "base.json", stamp)
        tuning = {"stamp": stamp, "base_exact_match": made["base_exact_match"], **tune(out)}
        write_json(results / "tuning.json", tuning)
    print(f"SFT base, validation exact match: {tuning['base_exact_match']:.3f}")
    print("\n| variant | model | validation exact match |\n|---|---|---:|")
    for name, model, em in tuning["validation"]:
        print(f"| {name} | {model} | {em:.3f} |")
    chosen = tuning["chosen"]

    # The test split, touched once: every chosen configuration, each seed, each recorded as it
    # finishes, so that a study longer than a session resumes where it stopped.
    records = []
    for seed in args.seed_list():
        path = results / f"seed{seed}.json"
        record = load(path, stamp)
        if record is None:
            made = made or base(out, results / "base.json", stamp)
            record = {"stamp": stamp, "seed": seed, "models": run_seed(out, seed, chosen)}
            if seed == 0:
                record["exposure_bias"] = exposure_bias(out, chosen)
            write_json(path, record)
        records.append(record)

    write_json(out / "summary.json", summarise(records, chosen))


def summarise(records: list[dict[str, Any]], chosen: dict[str, Any]) -> dict[str, Any]:
    """Print the test split's tables for bench/RESULTS.md: exact match over seeds, by number of
    steps, the cost against SFT's and (seed 0) exposure bias; return their numbers."""
    test: dict[str, list[dict]] = {}
    for record in records:
        for model, r in record["models"].items():
            test.setdefault(model, []).append(r)

    summary = {}
    print("\n| model (variant) | test exact match, mean ± sd over seeds | per seed |")
    print("|---|---:|---|")
    for model, runs in test.items():
        ems = [r["exact_match"] for r in runs]
        steps = sorted({k for r in runs for k in r["by_steps"]}, key=int)
        summary[model] = {
            "variant": chosen[model][0] if model in chosen else "",
            "exact_match": ems,
            "mean": statistics.mean(ems),
            "sd": statistics.stdev(ems) if len(ems) > 1 else 0.0,
            "by_steps": {
                k: statistics.mean(r["by_steps"][k] for r in runs if k in r["by_steps"])
                for k in steps
            },
            "train_wall_s": [r["train_wall_s"] for r in runs],
            "forward_sequences": [r["forward_sequences"] for r in runs],
            "trained_tokens": [r["trained_tokens"] for r in runs],
        }
        s = summary[model]
        print(
            f"| {model} ({s['variant']}) | {s['mean']:.3f} ± {s['sd']:.3f} | "
            f"{', '.join(f'{e:.3f}' for e in ems)} |"
        )
    steps = sorted({k for s in summary.values() for k in s["by_steps"]}, key=int)
    print("\n| model | " + " | ".join(f"{k} steps" for k in steps) + " |")
    print("|---|" + "---:|" * len(steps))
    for model, s in summary.items():
        print(f"| {model} | " + " | ".join(f"{s['by_steps'].get(k, 0):.3f}" for k in steps) + " |")
    print("\n| method | wall time / SFT's | forward passes / SFT's | trained tokens / SFT's |")
    print("|---|---:|---:|---:|")
    for model in ("sft", "bash", "scs"):
        if model in summary:
            ratios = [
                statistics.mean(
                    a / b for a, b in zip(summary[model][k], summary["sft"][k], strict=True)
                )
                for k in ("train_wall_s", "forward_sequences", "trained_tokens")
            ]
            print(f"| {model} | " + " | ".join(f"{x:.2f}" for x in ratios) + " |")
    if "exposure_bias" in records[0]:
        print(
            "\n| model (seed 0) | positions | token accuracy, teacher forced | free running | gap |"
        )
        print("|---|---:|---:|---:|---:|")
        for model, r in records[0]["exposure_bias"].items():
            gap = r["free_running"] - r["teacher_forced"]
            print(
                f"| {model} | {r['positions']} | {r['teacher_forced']:.3f} | "
                f"{r['free_running']:.3f} | {gap:+.3f} |"
            )
        summary["exposure_bias"] = records[0]["exposure_bias"]
    return summary


if __name__ == "__main__":
    run_tool(main)
