"""Generation: batching (static or continuous), per-example sampling, ranks and resumption leave
the outputs unchanged."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data_tools.scoring import CONFIRMATION, final_answer_text
from data_tools.sources import load_examples
from data_tools.tokenization import encode_prompts, response_ids
from generate.__main__ import main
from methods.correction import CORRECTION_MARKER, gated
from runtime.ds_config import ConfigError
from runtime.generation import SeededSampler, example_seed, generate_batch, longest_first
from runtime.modeling import load_model
from tests.launch import env, run
from tests.models import problems_and_model

REPO = Path(__file__).resolve().parents[1]
MAX_NEW = 16
# The subprocess runs sample, the harder case for "same output whatever the ranks and batches".
SAMPLING = ["--do_sample", "true", "--temperature", "0.8", "--top_p", "0.95", "--seed", "3"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """40 synthetic problems and a tiny random model, saved as a model folder."""
    return problems_and_model(tmp_path_factory.mktemp("generate"), tokenizer, 40, seed=1)


@pytest.fixture(scope="module")
def model(files: Path, tokenizer):
    return load_model(tokenizer, str(files / "model")).eval()


@pytest.fixture(scope="module")
def examples(files: Path):
    return load_examples(str(files / "data.jsonl"), task="math")[0][:12]


@pytest.fixture(scope="module")
def prompts(examples, tokenizer) -> list[list[int]]:
    ids, _ = encode_prompts(tokenizer, [e.prompt for e in examples], 256)
    assert len({len(p) for p in ids}) > 4  # varied lengths, so batches are really padded
    return ids


def in_batches(
    model, tokenizer, prompts, batch_size: int, seeds=None, temperature=1.0, top_p=1.0
) -> list[list[int]]:
    """Generate as the entrypoint does: longest first, in slices of `batch_size`."""
    order, out = longest_first([len(p) for p in prompts]), {}
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        new = generate_batch(
            model,
            tokenizer,
            [prompts[i] for i in batch],
            MAX_NEW,
            None if seeds is None else [seeds[i] for i in batch],
            temperature,
            top_p,
        )
        out.update(zip(batch, new, strict=True))
    return [out[i] for i in range(len(prompts))]


# --- in process: batching and sampling ------------------------------------------------------


def test_batched_greedy_equals_one_at_a_time(model, tokenizer, prompts) -> None:
    batched = in_batches(model, tokenizer, prompts, 12)
    assert in_batches(model, tokenizer, prompts, 5) == batched
    assert in_batches(model, tokenizer, prompts, 1) == batched
    for p, ours in zip(prompts, batched, strict=True):
        direct = model.generate(torch.tensor([p]), max_new_tokens=MAX_NEW, do_sample=False)
        assert direct[0, len(p) :].tolist() == ours
    eos = tokenizer.eos_token_id
    ended = [g for g in batched if g[-1] == eos]
    assert ended and len(ended) < len(batched)  # both ways of ending are covered
    assert all(eos not in g[:-1] for g in batched)  # nothing kept after the first EOS
    assert all(len(g) == MAX_NEW for g in batched if g[-1] != eos)


def test_continuous_batching_equals_one_at_a_time(
    files: Path, model, tokenizer, prompts, monkeypatch
) -> None:
    calls = []  # prompts handed to transformers' continuous batching
    original = type(model).generate_batch

    def spy(self, inputs, *args, **kwargs):
        calls.append(len(inputs))
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(type(model), "generate_batch", spy)
    # Compared with static batches, which the test above holds to one prompt at a time.
    continuous = generate_batch(model, tokenizer, prompts, MAX_NEW, continuous=True)
    assert calls == [len(prompts)]
    assert continuous == in_batches(model, tokenizer, prompts, 12)
    with pytest.raises(ValueError, match="continuous batching decodes greedily"):
        generate_batch(model, tokenizer, prompts, MAX_NEW, [1] * len(prompts), continuous=True)
    # The entrypoint's option, through RAC's second generation too.
    argv = ["--model_name_or_path", str(files / "model"), "--data", str(files / "data.jsonl")]
    argv += ["--limit", "6", "--max_new_tokens", str(MAX_NEW), "--self_correct", "true"]
    outputs = {}
    for option in ("false", "true"):
        outputs[option] = files / f"continuous_{option}.jsonl"
        main([*argv, "--output", str(outputs[option]), "--continuous_batching", option])
    static, ours = lines(outputs["false"]), lines(outputs["true"])
    assert len(ours) == 6 and sum(calls[1:]) == 12  # drafts and second generations
    assert [r["generation_ids"] for r in ours] == [r["generation_ids"] for r in static]


def test_sampling_depends_on_the_example_only(model, tokenizer, prompts, examples) -> None:
    seeds = [example_seed(0, e.id) for e in examples]
    one = in_batches(model, tokenizer, prompts, 1, seeds, 0.8, 0.95)
    assert in_batches(model, tokenizer, prompts, 4, seeds, 0.8, 0.95) == one
    assert in_batches(model, tokenizer, prompts, 12, seeds, 0.8, 0.95) == one
    other_seeds = [example_seed(1, e.id) for e in examples]
    other = in_batches(model, tokenizer, prompts, 4, other_seeds, 0.8, 0.95)
    assert sum(a != b for a, b in zip(one, other, strict=True)) >= len(one) - 1
    greedy = in_batches(model, tokenizer, prompts, 4)
    assert one != greedy
    # With a nucleus of one token, sampling is greedy.
    assert in_batches(model, tokenizer, prompts, 4, seeds, 0.8, 1e-6) == greedy


def test_sampler_draws_from_tempered_nucleus() -> None:
    """Frequencies over 20,000 seeded rows match softmax(logits / T) cut to the top-p set."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    n, temperature, top_p = 20_000, 0.7, 0.8
    sampler = SeededSampler(range(n), temperature, top_p)
    out = sampler(torch.zeros(n, 1, dtype=torch.long), logits.expand(n, -1).clone())
    picked = out.argmax(-1)
    assert torch.all(out.max(-1).values == 0) and torch.all(torch.isinf(out).sum(-1) == 4)
    probs = torch.softmax(logits / temperature, -1)
    keep = (probs.cumsum(-1) - probs) < top_p  # sorted already: the top tokens up to 0.8
    expected = torch.where(keep, probs, 0) / probs[keep].sum()
    observed = torch.bincount(picked, minlength=5) / n
    assert torch.allclose(observed, expected, atol=0.015), (observed, expected)


def test_bad_options_are_refused(files: Path) -> None:
    base = ["--model_name_or_path", str(files / "model"), "--data", str(files / "data.jsonl")]
    base += ["--output", str(files / "never.jsonl")]
    cases = {
        "temperature must be > 0": ["--do_sample", "true", "--temperature", "0"],
        r"top_p must be in \(0, 1\], got 1.5": ["--do_sample", "true", "--top_p", "1.5"],
        r"top_p must be in \(0, 1\], got 0.0": ["--do_sample", "true", "--top_p", "0"],
        "apply only when sampling": ["--temperature", "0.7"],
        "batch_size must be at least 1": ["--batch_size", "0"],
        "max_new_tokens must be at least 1": ["--max_new_tokens", "0"],
        "continuous_batching decodes greedily": [
            *("--continuous_batching", "true", "--do_sample", "true"),
        ],
    }
    for message, argv in cases.items():
        with pytest.raises(ValueError, match=message):
            main(base + argv)
    with pytest.raises(ConfigError, match="precision must be one of"):
        main(base + ["--precision", "fp8"])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SeededSampler([0], 0.0, 1.0)
    assert not (files / "never.jsonl").exists()


# --- real processes: ranks and resumption ---------------------------------------------------


def command(files: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        str(files / "model"),
        "--data",
        str(files / "data.jsonl"),
        "--output",
        str(output),
        "--max_new_tokens",
        str(MAX_NEW),
        *SAMPLING,
        *extra,
    ]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def reference(files: Path) -> list[dict]:
    """An uninterrupted one-rank run."""
    out = files / "reference.jsonl"
    run("generate", command(files, out, "--batch_size", "8"))
    rows = lines(out)
    ids = [e.id for e in load_examples(str(files / "data.jsonl"), task="math")[0]]
    assert [r["id"] for r in rows] == ids  # every id once, in input order
    assert set(rows[0]) == {
        "id",
        "prompt",
        "reference",
        "generation",
        "generation_ids",
        "task",
        "meta",
        "model_fingerprint",
        "tokenizer_fingerprint",
    }
    assert not Path(f"{out}.parts").exists()
    return rows


@pytest.mark.slow
def test_two_ranks_equal_one_rank(files: Path, reference: list[dict]) -> None:
    out = files / "two_ranks.jsonl"
    run("generate", command(files, out, "--batch_size", "3"), nproc=2)
    assert lines(out) == reference
    assert not Path(f"{out}.parts").exists()


def test_resume_from_parts_with_a_cut_line(files: Path, reference: list[dict]) -> None:
    """Parts left by a crashed two-rank run: finished lines are kept, a cut line is redone."""
    out = files / "resumed.jsonl"
    parts = Path(f"{out}.parts")
    parts.mkdir()
    planted = {r["id"]: {**r, "generation": f"planted {i}"} for i, r in enumerate(reference[:10])}
    rows = list(planted.values())
    cut = json.dumps(reference[10])[:40]  # the crash came in the middle of this line
    (parts / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]) + cut)
    (parts / "part-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[6:]))
    proc = run("generate", command(files, out, "--batch_size", "4"))
    assert "10 done before, 30 to generate" in proc.stdout + proc.stderr
    assert lines(out) == [planted.get(r["id"], r) for r in reference]
    assert not parts.exists()
    # A complete output is left alone.
    before = out.stat().st_mtime_ns
    proc = run("generate", command(files, out))
    assert "already holds all 40 examples" in proc.stdout + proc.stderr
    assert out.stat().st_mtime_ns == before


def test_resume_after_sigkill(files: Path, reference: list[dict]) -> None:
    out = files / "killed.jsonl"
    part = Path(f"{out}.parts") / "part-0.jsonl"
    argv = [sys.executable, "-m", "generate", *command(files, out, "--batch_size", "1")]
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not (part.exists() and part.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "never wrote a line"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    done = part.read_text().count("\n")
    assert 2 <= done < len(reference)
    # A rerun that would decode otherwise refuses, naming the difference, and keeps the parts.
    other = run("generate", command(files, out, "--max_new_tokens", str(MAX_NEW + 1)), check=False)
    assert other.returncode == 2, other.stderr[-2000:]
    assert f"max_new_tokens {MAX_NEW} -> {MAX_NEW + 1}" in other.stderr
    assert "Traceback" not in other.stderr and part.read_text().count("\n") == done
    proc = run("generate", command(files, out, "--batch_size", "16"))
    assert f"{done} done before" in proc.stdout + proc.stderr
    assert lines(out) == reference


def test_prompt_and_new_tokens_must_fit_the_model(files: Path) -> None:
    argv = command(files, files / "too_long.jsonl", "--max_prompt_length", "500")
    proc = run("generate", argv, check=False)
    assert proc.returncode != 0
    assert "exceed the model's 512 positions" in proc.stderr


def test_self_correct_is_draft_marker_then_a_second_generation(
    files: Path, model, tokenizer, prompts, examples
) -> None:
    out = files / "self_correct.jsonl"
    main(
        ["--model_name_or_path", str(files / "model"), "--data", str(files / "data.jsonl")]
        + ["--output", str(out), "--limit", "6", "--max_new_tokens", str(MAX_NEW)]
        + ["--self_correct", "true", "--batch_size", "4"]
    )
    marker = tokenizer(CORRECTION_MARKER, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    for row, prompt in zip(lines(out), prompts[:6], strict=True):
        ids = row["generation_ids"]
        # The draft is the greedy answer without its EOS; the rest follows prompt, draft, marker.
        draft = generate_batch(model, tokenizer, [prompt], MAX_NEW)[0]
        draft = draft[:-1] if draft and draft[-1] == eos else draft
        second = generate_batch(model, tokenizer, [prompt + draft + marker], MAX_NEW)[0]
        assert ids == draft + marker + second
        assert CORRECTION_MARKER.strip() in row["generation"]
        # The confirmation's probability, from the unpadded sequence token by token.
        confirm = response_ids(tokenizer, [CONFIRMATION])[0]
        sequence = prompt + draft + marker + confirm
        with torch.no_grad():
            logits = model(torch.tensor([sequence])).logits[0].double()
        start = len(sequence) - len(confirm)
        expected = math.prod(
            logits[start - 1 + k].softmax(-1)[t].item() for k, t in enumerate(confirm)
        )
        assert row["confirm_probability"] == pytest.approx(expected, rel=1e-4)


def test_the_gate_confirms_the_drafts_it_is_sure_of(files: Path, tokenizer) -> None:
    """--confirm_threshold: a draft whose confirmation is at least that probable is confirmed
    without a second pass, the rest are as without the gate; `gated` makes the same answers from
    the ungated generations."""
    argv = ["--model_name_or_path", str(files / "model"), "--data", str(files / "data.jsonl")]
    argv += ["--limit", "8", "--max_new_tokens", str(MAX_NEW), "--self_correct", "true"]
    ungated, gate = files / "ungated.jsonl", files / "gated.jsonl"
    main([*argv, "--output", str(ungated)])
    free = lines(ungated)
    threshold = sorted(r["confirm_probability"] for r in free)[4]  # the upper half confirmed
    main([*argv, "--output", str(gate), "--confirm_threshold", str(threshold)])
    marker = tokenizer(CORRECTION_MARKER, add_special_tokens=False)["input_ids"]
    confirmation = response_ids(tokenizer, [CONFIRMATION])[0] + [tokenizer.eos_token_id]
    confirmed = 0
    for before, after in zip(free, lines(gate), strict=True):
        assert after["confirm_probability"] == before["confirm_probability"]
        draft = before["generation_ids"][: before["generation_ids"].index(marker[0])]
        if before["confirm_probability"] >= threshold:
            confirmed += 1
            assert after["generation_ids"] == draft + marker + confirmation
        else:
            assert after["generation_ids"] == before["generation_ids"]
        offline = gated(
            before["generation"], before["confirm_probability"], threshold, CORRECTION_MARKER
        )
        assert final_answer_text(offline, CORRECTION_MARKER) == final_answer_text(
            after["generation"], CORRECTION_MARKER
        )
    assert confirmed == 4
    with pytest.raises(ValueError, match="confirm_threshold gates self_correct"):
        main([*argv[:-2], "--output", str(gate), "--confirm_threshold", "0.5"])


def test_num_samples_gives_distinct_ids_and_samples(files: Path) -> None:
    out = files / "samples.jsonl"
    main(
        ["--model_name_or_path", str(files / "model"), "--data", str(files / "data.jsonl")]
        + ["--output", str(out), "--limit", "2", "--max_new_tokens", str(MAX_NEW)]
        + ["--do_sample", "true", "--num_samples", "3", "--seed", "1"]
    )
    rows = lines(out)
    source = [e.id for e in load_examples(str(files / "data.jsonl"), task="math")[0][:2]]
    assert [r["id"] for r in rows] == [f"{i}#s{k}" for i in source for k in range(3)]
    assert [(r["meta"]["source_id"], r["meta"]["sample"]) for r in rows] == [
        (i, k) for i in source for k in range(3)
    ]
    assert len({tuple(r["generation_ids"]) for r in rows}) > 3  # the samples differ
