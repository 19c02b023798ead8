"""The measurement of issue 14: DPO after SFT, after RAC and after BASH on the synthetic math task
(configs/compare_demo.yaml), the same DPO for every start, so that the start is what differs.

    python -m bench.compare_dpo [--output_dir bench_runs/compare_dpo] [--seeds 0,1,2]
                                [--setting 'beta 0.1, lr 1e-5']   # skips step 4

1. The base: data, tokenizer and the SFT model every method starts from (`pipeline`).
2. The starts: SFT (continued), BASH and RAC from the base with the config's variants (those the
   methods' comparison chose on validation, bench/RESULTS.md), `method_steps` each.
3. The pairs, shared by every start: the SFT base samples `dpo_samples_per_prompt` answers at
   T = 1 to each of the first `DPO_PROMPTS` training problems; chosen a right one (or the
   reference), rejected a wrong one. Held-out pairs the same way from validation problems.
4. Tuning on the validation split (seed 0), on the SFT start alone: every DPO setting of
   `SETTINGS`; the one with the best validation exact match of sft+dpo is used for every start.
5. The test split, touched once: for each seed, every start and its DPO (one pipeline run).
   Exact match mean and sd over seeds; per seed, the paired exact McNemar test of each m+dpo
   against sft+dpo and against its own start m, on the same test problems; the held-out
   preference accuracy and the last step's reward margin of each DPO run.

Every run is a `pipeline` run, so a rerun skips what is finished. The base's fingerprint, the
tuning's choice and each seed's results are recorded in `--results_dir`
(bench/results/compare_dpo) as they finish, so a study longer than a session goes on from a fresh
machine: the base is made again there and must be the recorded one. Prints markdown for
bench/RESULTS.md and writes <output_dir>/summary.json.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.compare_methods import CompareArgs, base, load, pipeline
from data_tools.atomic import write_json
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.scoring import score_file
from methods.correction import CORRECTION_MARKER
from pipeline.plan import DPO_SUFFIX

STARTS = ("sft", "rac", "bash")
DPO_PROMPTS = 1000
# DPO settings tried on validation: (name, pipeline options). The last two were added after the
# first collapsed the model (validation exact match 0.674 -> 0.046), before any test run.
SETTINGS = [
    ("beta 0.1, lr 3e-4", ["--dpo_beta", "0.1", "--dpo_learning_rate", "3e-4"]),
    ("beta 0.5, lr 3e-4", ["--dpo_beta", "0.5", "--dpo_learning_rate", "3e-4"]),
    ("beta 0.1, lr 1e-4", ["--dpo_beta", "0.1", "--dpo_learning_rate", "1e-4"]),
    ("beta 0.1, lr 3e-5", ["--dpo_beta", "0.1", "--dpo_learning_rate", "3e-5"]),
    ("beta 0.1, lr 1e-5", ["--dpo_beta", "0.1", "--dpo_learning_rate", "1e-5"]),
]
COMMON = ["--dpo_prompts", str(DPO_PROMPTS), "--dpo_steps", "100"]


def mcnemar(a: list[bool], b: list[bool]) -> tuple[int, int, float]:
    """The exact McNemar test of two models' correctness on the same problems: the problems only
    `a` got right, those only `b` got right, and the two-sided p-value (a binomial test of the
    discordant pairs at one half)."""
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return only_a, only_b, min(1.0, 2 * tail)


def correct(run_dir: Path, split: str, model: str) -> list[bool]:
    """Each problem's correctness, in the split's order."""
    scores = score_file(run_dir / "eval" / split / f"{model}.jsonl", "math", CORRECTION_MARKER)
    return [e["correct"] for e in scores["examples"]]


def last_metrics(run_dir: Path, model: str) -> dict:
    *_, last = (run_dir / model / "metrics.jsonl").read_text().splitlines()
    return json.loads(last)


def tune(out: Path, base: list[str]) -> dict[str, Any]:
    """Every DPO setting on the SFT start (seed 0, validation split): per setting the exact
    match of sft and sft+dpo and the held-out preference accuracy (`validation`), and the
    setting whose sft+dpo has the best exact match (`chosen`)."""
    rows = []
    for name, options in SETTINGS:
        run_dir = out / "validation" / name.replace(" ", "").replace(",", "_")
        r = pipeline(
            run_dir, *base, "--methods", "sft", "--dpo_after", "sft", *COMMON, *options,
            "--report_split", "validation",
        )  # fmt: skip
        dpo = r["sft+dpo"]
        rows.append([name, r["sft"]["exact_match"], dpo["exact_match"], dpo["preference_accuracy"]])
    return {"validation": rows, "chosen": max(rows, key=lambda row: row[2])[0]}


def run_seed(out: Path, seed: int, options: list[str]) -> dict[str, Any]:
    """One seed's test run: every start and its DPO; per DPO model its exact match, its start's,
    the paired tests against its start and against sft+dpo, the held-out preference accuracy
    and the last step's reward margin."""
    run_dir = out / "test" / f"seed{seed}"
    results = pipeline(
        run_dir, "--base_dir", str(out / "base"), "--seed", str(seed), "--methods",
        ",".join(STARTS), "--dpo_after", ",".join(STARTS), *COMMON, *options,
        "--report_split", "test",
    )  # fmt: skip
    # the starts and their DPO (the SFT base's file is in the base run, and not compared)
    answers = {m: correct(run_dir, "test", m) for s in STARTS for m in (s, s + DPO_SUFFIX)}
    rows = {}
    for m in STARTS:
        dpo = m + DPO_SUFFIX
        rows[dpo] = {
            "exact_match": results[dpo]["exact_match"],
            "start_exact_match": results[m]["exact_match"],
            "against_start": mcnemar(answers[dpo], answers[m]),
            "against_sft+dpo": mcnemar(answers[dpo], answers["sft+dpo"]),
            "preference_accuracy": results[dpo]["preference_accuracy"],
            "reward_margin": last_metrics(run_dir, dpo)["train/reward_margin"],
        }
    return {"n": len(answers["sft"]), "models": rows}


@dataclass
class CompareDPOArgs(CompareArgs):
    output_dir: str = field(
        default="bench_runs/compare_dpo", metadata={"help": "folder of every pipeline run"}
    )
    results_dir: str = field(
        default="bench/results/compare_dpo",
        metadata={"help": "the tuning's choice and each seed's results, kept across sessions"},
    )
    setting: str = field(
        default="",
        metadata={
            "help": "a DPO setting of SETTINGS (e.g. 'beta 0.1, lr 1e-5', the one chosen on "
            "validation in bench/RESULTS.md) to use without the validation sweep; empty: sweep"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.setting and self.setting not in dict(SETTINGS):
            names = ", ".join(repr(name) for name, _ in SETTINGS)
            raise ValueError(f"setting must be one of {names}, got {self.setting!r}")


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((CompareDPOArgs,), argv)
    out, results, stamp = Path(args.output_dir), Path(args.results_dir), args.stamp()
    made = None  # the base, made and checked once, before the first run of this invocation
    if args.setting:
        chosen = args.setting
    else:
        tuning = load(results / "tuning.json", stamp)
        if tuning is None:
            made = base(out, results / "base.json", stamp)
            tuning = {"stamp": stamp, **tune(out, ["--base_dir", str(out / "base")])}
            write_json(results / "tuning.json", tuning)
        print(
            "\n| DPO setting | sft validation exact match | sft+dpo | held-out preference accuracy |"
        )
        print("|---|---:|---:|---:|")
        for name, sft, dpo, accuracy in tuning["validation"]:
            print(f"| {name} | {sft:.3f} | {dpo:.3f} | {accuracy:.3f} |")
        chosen = tuning["chosen"]
    print(f"\nDPO setting: {chosen}")

    # The test split, touched once; each seed recorded as it finishes.
    summary: dict = {"setting": chosen, "seeds": {}}
    for seed in (seeds := args.seed_list()):
        path = results / f"seed{seed}.json"
        record = load(path, stamp)
        if record is None:
            made = made or base(out, results / "base.json", stamp)
            run = run_seed(out, seed, dict(SETTINGS)[chosen])
            record = {"stamp": stamp, "seed": seed, "setting": chosen, **run}
            write_json(path, record)
        if record["setting"] != chosen:
            raise ValueError(
                f"{path}: made with DPO {record['setting']!r}, not {chosen!r}; move it away to "
                "run the seed again with this setting"
            )
        summary["seeds"][seed] = record["models"]

    print(f"\n### The test split (n = {record['n']}, seeds {args.seeds}), DPO {chosen}\n")
    print("| model | exact match, mean ± sd | per seed | its start, per seed |")
    print("|---|---:|---|---|")
    for m in STARTS:
        runs = [summary["seeds"][s][m + DPO_SUFFIX] for s in seeds]
        ems = [r["exact_match"] for r in runs]
        starts = [r["start_exact_match"] for r in runs]
        sd = statistics.stdev(ems) if len(ems) > 1 else 0.0
        print(
            f"| {m + DPO_SUFFIX} | {statistics.mean(ems):.3f} ± {sd:.3f} | "
            f"{', '.join(f'{e:.3f}' for e in ems)} | {', '.join(f'{e:.3f}' for e in starts)} |"
        )
    print("\n| model, seed | only it right / only the other right, p (exact McNemar) | ", end="")
    print("held-out preference accuracy | last reward margin |")
    print("|---|---|---:|---:|")
    for s in seeds:
        for m in STARTS:
            r = summary["seeds"][s][m + DPO_SUFFIX]
            against = {m: r["against_start"]}
            if m != "sft":
                against["sft+dpo"] = r["against_sft+dpo"]
            tests = "; ".join(
                f"against {o}: {a}/{b}, p {p:.3f}" for o, (a, b, p) in against.items()
            )
            print(
                f"| {m + DPO_SUFFIX}, {s} | {tests} | {r['preference_accuracy']:.3f} | "
                f"{r['reward_margin']:.3f} |"
            )
    write_json(out / "summary.json", summary)


if __name__ == "__main__":
    run_tool(main)
