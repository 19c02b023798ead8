"""The benchmarks' own options: a bad value is refused in one sentence that names it and what
is allowed, before anything runs (the tools turn it into one `error:` line, exit status 2)."""

from __future__ import annotations

import pytest

from bench.bash_vs_scs import BashVsScsArgs
from bench.compare_dpo import CompareDPOArgs
from bench.compare_shift import CompareShiftArgs
from bench.data_memory import DataMemoryArgs
from bench.gpu_check import GpuCheckArgs
from bench.loss_memory import LossMemoryArgs


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CompareDPOArgs(setting="beta 9"), r"setting must be one of 'beta 0\.1, lr 3e-4'"),
        (lambda: CompareShiftArgs(family="gsm8k"), "family must be one of math, postfix"),
        (lambda: CompareShiftArgs(seeds="0,x"), "seeds must be integers separated by commas"),
        (lambda: BashVsScsArgs(epochs="1,0"), "epochs must be integers >= 1"),
        (lambda: BashVsScsArgs(epochs="two"), "epochs must be integers >= 1"),
        (lambda: BashVsScsArgs(examples=8), r"examples \(8\) must fill one micro-batch \(16\)"),
        (lambda: DataMemoryArgs(processes="1,0"), "processes must be integers >= 1"),
        (lambda: DataMemoryArgs(examples=0), "examples must be at least 1, got 0"),
        (lambda: GpuCheckArgs(output="o.json", size="7b"), "size must be one of"),
        (lambda: GpuCheckArgs(output="o.json", precision="fp16"), "fp16 is not measured"),
        (lambda: GpuCheckArgs(output="o.json", steps=0), "steps must be at least 1, got 0"),
        (lambda: GpuCheckArgs(output="o.json", warmup_steps=-1), "warmup_steps must be at least 0"),
        (lambda: LossMemoryArgs(prompt_fraction=1.0), r"prompt_fraction must be in \[0, 1\)"),
        (lambda: LossMemoryArgs(arm="fused"), "arm must be one of"),
    ],
)
def test_a_bad_option_is_refused_by_name(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_compare_shift_defaults_its_folder_to_the_family() -> None:
    assert CompareShiftArgs(family="postfix").output_dir == "bench_runs/shift_postfix"
