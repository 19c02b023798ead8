"""The study of issue 10 (its protocol is in bench/RESULTS.md): on a task family built to show
exposure bias, BASH, SCS, RAC and RAC-echo against SFT continued, on the in-distribution test
split and on the shifted ones.

    python -m bench.compare_shift --family math     [--output_dir bench_runs/shift_math]
    python -m bench.compare_shift --family postfix  [--seeds 0,1,2,3,4]

1. Tuning on the validation split, from seed 0's SFT base: the BASH and RAC variants of
   `VARIANTS`; the best of each by validation exact match. No shifted split is evaluated here.
2. The test splits, touched once: per seed its own SFT base (the config's task, data and model
   with that seed), and from it every arm for the same steps, batch and examples; every model
   on the test split and on the config's `eval_splits`.
3. Per arm against SFT continued, per split: the per-seed difference with the exact McNemar test
   on the same problems, and a paired bootstrap over every (seed, problem); RAC's first and
   second pass; for math, induced against propagated errors (`generate.error_propagation`) of
   seed 0's models.

Every run is a `pipeline` run, so a rerun skips what is finished; `--pipeline_options` adds
options to every run (e.g. fewer steps for a smoke run). Prints markdown for bench/RESULTS.md
and writes <output_dir>/summary.json.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.compare_dpo import mcnemar
from bench.compare_methods import REPO, CompareArgs, scs_options
from bench.compare_methods import pipeline as run_pipeline
from data_tools.atomic import write_json
from data_tools.bootstrap import paired_bootstrap
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.scoring import score_file
from methods.correction import CORRECTION_MARKER

CONFIGS = {"math": "configs/shift_math.yaml", "postfix": "configs/shift_postfix.yaml"}
# Variants tried on validation, (name, method, pipeline options), every option spelled out.
_BASH = ["--ss_schedule", "constant", "--bash_rounds", "1"]
_RAC = ["--rac_mix", "0.25"]
VARIANTS = [
    ("bash p0.25", "bash", [*_BASH, "--ss_p_max", "0.25", "--ss_position_ramp", "0"]),
    ("bash p0.5", "bash", [*_BASH, "--ss_p_max", "0.5", "--ss_position_ramp", "0"]),
    (
        "bash p0.5 sampled T1",
        "bash",
        [*_BASH, "--ss_p_max", "0.5", "--ss_position_ramp", "0", "--bash_temperature", "1.0"],
    ),
    ("bash p0.5 ramp32", "bash", [*_BASH, "--ss_p_max", "0.5", "--ss_position_ramp", "32"]),
    ("rac keep whole", "rac", [*_RAC, "--rac_right_drafts", "keep", "--rac_variant", "whole"]),
    (
        "rac correct whole",
        "rac",
        [*_RAC, "--rac_right_drafts", "correct", "--rac_variant", "whole"],
    ),
    (
        "rac keep first_divergence",
        "rac",
        [*_RAC, "--rac_right_drafts", "keep", "--rac_variant", "first_divergence"],
    ),
]


@dataclass
class CompareShiftArgs(CompareArgs):
    output_dir: str = field(
        default="",
        metadata={"help": "folder of every pipeline run (default bench_runs/shift_<family>)"},
    )
    seeds: str = field(default="0,1,2,3,4", metadata={"help": "the test runs' seeds"})
    family: str = field(default="math", metadata={"help": "math or postfix"})
    pipeline_options: str = field(
        default="", metadata={"help": "more pipeline options for every run, as one string"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.family not in CONFIGS:
            raise ValueError(f"family must be one of {', '.join(CONFIGS)}, got {self.family!r}")
        self.output_dir = self.output_dir or f"bench_runs/shift_{self.family}"


def pipeline(args: CompareShiftArgs, run_dir: Path, *options: str) -> dict[str, dict]:
    """Run (or finish) one pipeline of the family's config, with `pipeline_options` last."""
    extra = shlex.split(args.pipeline_options)
    return run_pipeline(run_dir, *options, *extra, config=CONFIGS[args.family])


def tune(args: CompareShiftArgs, base: Path) -> dict[str, tuple[str, list[str]]]:
    """Each method's best variant on validation (seed 0's base); SCS gets BASH's schedule."""
    best: dict[str, tuple[float, str, list[str]]] = {}
    print("\n| variant | validation exact match |\n|---|---:|")
    for name, method, options in VARIANTS:
        run_dir = Path(args.output_dir) / "validation" / name.replace(" ", "_")
        r = pipeline(
            args, run_dir, "--base_dir", str(base), "--seed", "0", "--methods", method,
            "--report_split", "validation", "--eval_splits", "", *options,
        )  # fmt: skip
        print(f"| {name} | {r[method]['exact_match']:.3f} |")
        if method not in best or r[method]["exact_match"] > best[method][0]:
            best[method] = (r[method]["exact_match"], name, options)
    chosen = {method: (name, options) for method, (_, name, options) in best.items()}
    name, options = chosen["bash"]
    chosen["scs"] = (name.replace("bash", "scs"), scs_options(options))
    name, options = chosen["rac"]
    chosen["rac_echo"] = (f"{name}, echo", [*options, "--rac_variant", "echo"])
    return chosen


def correct(path: Path, task: str) -> list[bool]:
    scores = score_file(path, task, CORRECTION_MARKER)
    return [e["correct"] for e in scores["examples"]]


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((CompareShiftArgs,), argv)
    out, seeds = Path(args.output_dir), args.seed_list()
    bases = {s: out / "test" / f"seed{s}" / "base" for s in seeds}
    base0 = bases.get(0, out / "test" / "seed0" / "base")
    pipeline(args, base0, "--seed", "0", "--methods", "")  # seed 0's base: tuning starts there
    chosen = tune(args, base0)
    print("\nChosen: " + "; ".join(f"{m}: {name}" for m, (name, _) in chosen.items()))

    # The test splits: per seed its base, then every arm from it.
    splits: list[str] = []
    answers: dict[str, dict[str, list[list[bool]]]] = {}  # split -> arm -> per seed
    runs: dict[int, dict[str, Path]] = {}
    for seed in seeds:
        pipeline(args, bases[seed], "--seed", str(seed), "--methods", "")
        runs[seed] = {}
        for arm, (_, options) in {"sft": ("", []), **chosen}.items():
            method = "rac" if arm == "rac_echo" else arm
            run_dir = out / "test" / f"seed{seed}" / arm
            results = pipeline(
                args, run_dir, "--base_dir", str(bases[seed]), "--seed", str(seed),
                "--methods", method, *options,
            )  # fmt: skip
            runs[seed][arm] = run_dir
            splits = ["test", *results[method]["splits"]]
            for split in splits:
                files = {arm: run_dir / "eval" / split / f"{method}.jsonl"}
                if method == "rac":
                    files[f"{arm}_self_correct"] = (
                        run_dir / "eval" / split / "rac_self_correct.jsonl"
                    )
                for name, path in files.items():
                    task = args.family
                    answers.setdefault(split, {}).setdefault(name, []).append(correct(path, task))

    summary: dict = {"chosen": {m: name for m, (name, _) in chosen.items()}, "splits": {}}
    for split in splits:
        print(f"\n### {split} (seeds {args.seeds}): each arm against SFT continued\n")
        print("| arm | exact match per seed | difference per seed (McNemar p) | ", end="")
        print("pooled difference [95%], p |")
        print("|---|---|---|---|")
        baseline = answers[split]["sft"]
        rows = {}
        for arm, per_seed in answers[split].items():
            ems = [sum(x) / len(x) for x in per_seed]
            row = {"exact_match": ems}
            cells = ""
            if arm != "sft":
                tests = [mcnemar(a, b) for a, b in zip(per_seed, baseline, strict=True)]
                diffs = [e - sum(b) / len(b) for e, b in zip(ems, baseline, strict=True)]
                pooled = paired_bootstrap(
                    [x for seed in per_seed for x in seed], [x for seed in baseline for x in seed]
                )
                row |= {"difference": diffs, "mcnemar": tests, "pooled": pooled}
                cells = ", ".join(
                    f"{d:+.3f} ({t[2]:.3f})" for d, t in zip(diffs, tests, strict=True)
                )
                lo, hi = pooled["ci"]
                cells += (
                    f" | {pooled['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}], p {pooled['p']:.4f}"
                )
            else:
                cells = "(baseline) | "
            print(f"| {arm} | {', '.join(f'{e:.3f}' for e in ems)} | {cells} |")
            rows[arm] = row
        summary["splits"][split] = rows

    if args.family == "math" and 0 in runs:
        print("\n### Induced against propagated errors (seed 0, every split)\n")
        print(
            "| arm, split | P(local error \\| an earlier one) | P(local error \\| none) | ", end=""
        )
        print("difference |")
        print("|---|---:|---:|---:|")
        summary["error_propagation"] = {}
        for arm, run_dir in runs[0].items():
            method = "rac" if arm == "rac_echo" else arm
            for split in splits:
                result_dir = run_dir / "error_propagation" / split
                if not (result_dir / "error_propagation.json").exists():
                    command = ["-m", "generate.error_propagation", "--output_dir", str(result_dir)]
                    command += ["--generations", str(run_dir / "eval" / split / f"{method}.jsonl")]
                    subprocess.run(
                        [sys.executable, *command], cwd=REPO, check=True, stdout=subprocess.DEVNULL
                    )
                r = json.loads((result_dir / "error_propagation.json").read_text())
                rates = (r["after_an_error"]["rate"], r["no_earlier_error"]["rate"])
                summary["error_propagation"][f"{arm}/{split}"] = r
                cells = [f"{x:.3f}" if x is not None else "-" for x in rates]
                gap = r["exposure_bias"]
                cells.append(f"{gap:+.3f}" if gap is not None else "-")
                print(f"| {arm}, {split} | " + " | ".join(cells) + " |")
    write_json(out / "summary.json", summary)


if __name__ == "__main__":
    run_tool(main)
