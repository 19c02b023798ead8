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
from bench.slot_waste import SlotWasteArgs, slots
from bench.slot_waste import main as slot_waste
from data_tools.schema import DataError


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
        (lambda: LossMemoryArgs(steps=0), "steps must be at least 1, got 0"),
        (lambda: LossMemoryArgs(max_length=1), "max_length must be at least 2, got 1"),
        (lambda: SlotWasteArgs(tokenizer="t"), "give one of generations or data"),
        (lambda: SlotWasteArgs(tokenizer="t", data="d", batch_sizes="8,0"), "batch_sizes must"),
    ],
)
def test_a_bad_option_is_refused_by_name(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_compare_shift_defaults_its_folder_to_the_family() -> None:
    assert CompareShiftArgs(family="postfix").output_dir == "bench_runs/shift_postfix"


def test_slot_waste_counts_the_slots_a_batch_leaves_idle() -> None:
    # Prompts longest first: batches (0, 1) and (2, 3) on one rank; rank-dealt with 2 ranks.
    prompts, answers = [9, 8, 7, 6], [10, 2, 4, 4]
    one = slots(prompts, answers, batch_size=2, ranks=1)
    assert one == {"used": 20, "idle": 8, "prompt": 30, "padding": 2, "steps": 14}
    two = slots(prompts, answers, batch_size=2, ranks=2)  # rank 0: prompts 0, 2; rank 1: 1, 3
    assert two == {"used": 20, "idle": 8, "prompt": 30, "padding": 4, "steps": 14}
    assert slots(prompts, answers, batch_size=1, ranks=1)["idle"] == 0


def test_slot_waste_names_a_bad_row_and_refuses_an_empty_file(tmp_path, tokenizer) -> None:
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    argv = ["--tokenizer", str(tmp_path / "tokenizer"), "--generations"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1 + 1?", "generation_ids": [3, 4]}\n{"prompt": "2 + 2?"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2.*generation_ids.*missing or not a list"):
        slot_waste([*argv, str(bad)])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no answers to count"):
        slot_waste([*argv, str(empty)])
