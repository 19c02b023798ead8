"""RAC (Reference-Answer-based Correction): samples in which the model corrects its own draft,
or keeps it when it is right.

A sample with a draft is

    prompt | draft | marker | target EOS

where the draft is the model's own (offline) generation for the prompt and the marker a fixed
text (`CORRECTION_MARKER`). The task's scorer, not token equality, judges the draft (math: its
final answer; postfix: its symbols; `is_right`): a wrong one makes a correction (the target is
the reference); a right one, by `right_drafts`, a keep (the target is the draft again) or a
confirmation (the target is the fixed `CONFIRMATION`, "No correction."). Token equality made
every draft of a small model a correction (right answers in other words too) and taught it to
always rewrite.

Keep or confirm: inference scores what follows the marker (`data_tools.scoring.
final_answer_text`), or, after a confirmation, the draft. A keep needs no new convention, but
the model must learn to copy its whole draft; the 1M-parameter model of bench/RESULTS.md did not
(issue 10's math study, seed 0: after a right draft it wrote a new, mostly wrong, answer, 1,257
right answers of 1,424 turned wrong). A confirmation is a few fixed tokens: leaving a right
draft alone costs the model nothing to learn, so self-correct can only lose what it rewrites.
The loss is on the marker, the target and the EOS only: never on the prompt, nor on the draft,
whose mistakes must not be learnt. Plain SFT samples (prompt | reference EOS) are mixed in so that
the model still answers directly (`build_rac_samples`). The "echo" variant, prompt | reference |
marker | reference EOS, is the control: the samples' shape without a draft.

    python -m methods.correction --data train.jsonl --drafts drafts.jsonl \\
        --tokenizer runs/demo/tokenizer --output rac.jsonl --variant first_divergence --mix 0.5

writes rows {"id", "prompt", "response", "draft_ids", "task", "meta"} ("response" the target,
draft_ids null for the plain samples): `load_examples` reads them as examples, `read_draft_ids`
their drafts, and `encode_correction` makes the training samples.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from data_tools.atomic import write_jsonl
from data_tools.collate import pad_left
from data_tools.config import parse_config
from data_tools.errors import run_tool
from data_tools.schema import TASKS, DataError, Example
from data_tools.scoring import CONFIRMATION, RIGHT_OR_WRONG, final_answer_text
from data_tools.scoring import is_right as scorer_says_right
from data_tools.sources import jsonl_objects, load_examples, token_ids, unique_id
from data_tools.tokenization import (
    IGNORE_INDEX,
    Encoded,
    TruncationReport,
    check_sample,
    prompt_frame,
    prompt_ids,
    response_ids,
)
from runtime.args import DataArgs
from runtime.generation import eos_ids, generate_batch

# RAC's marker between the model's draft and the target. It ends with a newline, like the plain
# template, so that the target after it starts a line exactly as a response does after a
# prompt. Any marker can be used, as long as training and inference use the same one.
CORRECTION_MARKER = "\nCorrection:\n"
CUT_VARIANTS = ("whole", "first_divergence", "random")
VARIANTS = (*CUT_VARIANTS, "echo")
# What a draft with the right answer makes: a keep sample, a correction, or nothing.
RIGHT_DRAFTS = ("keep", "confirm", "correct", "drop")


@dataclass
class CorrectionReport(TruncationReport):
    """What `encode_correction`'s truncation policy did: prompts cut from the left, then drafts
    from their end."""

    drafts_cut: int = 0
    draft_tokens_cut: int = 0

    def summary(self) -> str:
        return (
            f"{super().summary()}, {self.drafts_cut} drafts cut from the end "
            f"({self.draft_tokens_cut} tokens)"
        )


def _check_marker(marker: str) -> None:
    if not marker:
        raise ValueError("the correction marker must not be empty")


def _strip_eos(ids: Sequence[int], eos_id: int) -> list[int]:
    """A generation without the EOS it stopped on (generate keeps it)."""
    return list(ids[:-1]) if ids and ids[-1] == eos_id else list(ids)


def encode_correction(
    tokenizer: PreTrainedTokenizerBase,
    example: Example,
    draft_ids: Sequence[int] | None,
    max_length: int,
    marker: str = CORRECTION_MARKER,
    report: CorrectionReport | None = None,
) -> Encoded:
    """The training sample prompt | draft | marker | response EOS, with labels on marker,
    response and EOS only; the response is the target (the reference for a correction or an
    echo, the draft's text for a keep, see `build_rac_samples`).

    `draft_ids` are the model's tokens as generated (a trailing EOS is dropped); marker and
    response are tokenized on their own, so they are the same tokens whatever the draft ends
    with. Without a draft this is the plain SFT sample, exactly as `encode_examples` makes it; a
    draft equal to the response is a sample like any other (a keep or an echo); an empty draft
    gives prompt | marker | response EOS (`build_rac_samples` leaves such drafts out).
    Truncation to `max_length` keeps the marker, response and EOS whole; it first cuts the
    prompt's text from the left (keeping its template and at least one token of text, as
    `encode_examples` does), then the draft from its end (keeping its start, where the model went
    wrong first). A response that cannot fit even then is a `DataError` on 'response'. `report`,
    when given, counts what was cut.
    """
    _check_marker(marker)
    eos, frame = tokenizer.eos_token_id, prompt_frame(tokenizer)
    prompt = prompt_ids(tokenizer, [example.prompt])[0]
    response = response_ids(tokenizer, [example.response])[0]
    if draft_ids is None:
        draft, marker_ids = [], []
    else:
        draft = _strip_eos(draft_ids, eos)
        marker_ids = tokenizer(marker, add_special_tokens=False, split_special_tokens=True)[
            "input_ids"
        ]
    tail = marker_ids + response + [eos]
    room = max_length - len(tail)
    if room < frame.min_length:
        raise DataError(
            example.origin or f"example {example.id}",
            "response",
            f"{len(marker_ids)} marker + {len(response) + 1} response tokens leave no room for "
            f"the prompt in max_length={max_length}",
        )
    excess = len(prompt) + len(draft) - room
    prompt_cut = min(max(excess, 0), max(len(prompt) - frame.min_length, 0))
    draft_cut = max(excess, 0) - prompt_cut
    if prompt_cut:
        prompt = frame.cut(prompt, len(prompt) - prompt_cut)
    if draft_cut:
        draft = draft[: len(draft) - draft_cut]
    if report is not None:
        report.examples += 1
        report.prompts_cut += prompt_cut > 0
        report.prompt_tokens_cut += prompt_cut
        report.drafts_cut += draft_cut > 0
        report.draft_tokens_cut += draft_cut
    context = prompt + draft
    encoded = Encoded(example.id, context + tail, [IGNORE_INDEX] * len(context) + tail)
    check_sample(example, encoded, eos, len(response))
    return encoded


@torch.no_grad()
def confirmation_probabilities(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, contexts: Sequence[list[int]]
) -> list[float]:
    """Per context (prompt | draft | marker), the model's probability that the `CONFIRMATION`
    comes next: how sure it is that the draft stands. One forward pass, left-padded as
    generation pads, with the logits of the confirmation's positions only."""
    confirm = response_ids(tokenizer, [CONFIRMATION])[0]
    inputs = pad_left([list(c) + confirm for c in contexts], tokenizer.pad_token_id)
    mask = inputs["attention_mask"]
    logits = (
        model(
            input_ids=inputs["input_ids"].to(model.device),
            attention_mask=mask.to(model.device),
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(model.device),
            logits_to_keep=len(confirm) + 1,
            use_cache=False,
        )
        .logits[:, :-1]
        .float()
    )
    targets = torch.tensor(confirm, device=logits.device).expand(len(contexts), -1)
    logps = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logps.double().sum(-1).exp().tolist()


def self_correct(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    drafts: Sequence[list[int]],
    marker: str,
    max_new_tokens: int,
    seeds: Sequence[int] | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    continuous: bool = False,
    confirm_threshold: float | None = None,
) -> tuple[list[list[int]], list[float]]:
    """RAC at inference: each draft (less its EOS), the marker, then a second generation from
    prompt | draft | marker, as the model was trained to continue. Returns draft | marker |
    correction, and the model's probability of the confirmation after each marker
    (`confirmation_probabilities`). The answer is the text after the last marker
    (`final_answer_text`). `confirm_threshold` gates the second pass: a draft whose
    confirmation is at least that probable is confirmed without one, so the model rewrites only
    where it is sure enough that its draft is wrong (`gated` makes the same answers from
    ungated generations). `continuous`: the second generation with continuous batching
    (`generate_batch`)."""
    stop = eos_ids(model, tokenizer)
    marker_ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    drafts = [d[:-1] if d and d[-1] in stop else d for d in drafts]
    second = [p + d + marker_ids for p, d in zip(prompts, drafts, strict=True)]
    probabilities = confirmation_probabilities(model, tokenizer, second)
    confirmation = response_ids(tokenizer, [CONFIRMATION])[0] + [tokenizer.eos_token_id]
    fixes = [confirmation] * len(second)
    rewrite = [
        i for i, p in enumerate(probabilities) if confirm_threshold is None or p < confirm_threshold
    ]
    if rewrite:
        new = generate_batch(
            model,
            tokenizer,
            [second[i] for i in rewrite],
            max_new_tokens,
            [seeds[i] for i in rewrite] if seeds else None,
            temperature,
            top_p,
            continuous,
        )
        for i, ids in zip(rewrite, new, strict=True):
            fixes[i] = ids
    return [d + marker_ids + f for d, f in zip(drafts, fixes, strict=True)], probabilities


def gated(generation: str, probability: float, threshold: float | None, marker: str) -> str:
    """A self-correcting generation as `self_correct`'s gate at `threshold` makes it: the draft
    confirmed where the confirmation was at least that probable, the second pass otherwise
    (and always without a threshold)."""
    if threshold is None or probability < threshold:
        return generation
    return generation.partition(marker)[0] + marker + CONFIRMATION


# The gate's thresholds tried on validation (`choose_threshold`): 0 confirms every draft (direct
# answering), None confirms none unless the second pass itself does (no gate).
GATE_THRESHOLDS = (0.0, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, None)


def choose_threshold(
    rows: Sequence[dict[str, Any]], task: str, marker: str
) -> tuple[float | None, list[dict[str, Any]]]:
    """The gate's threshold (of `GATE_THRESHOLDS`) with the most right answers on `rows`, a
    validation split's ungated self-correcting generations with their `confirm_probability`;
    a tie goes to the lower threshold, which rewrites less. Also each threshold's right answers
    and rewrites (second passes that are not the confirmation)."""
    table = []
    for threshold in GATE_THRESHOLDS:
        texts = [gated(r["generation"], r["confirm_probability"], threshold, marker) for r in rows]
        answers = [final_answer_text(t, marker) for t in texts]
        table.append(
            {
                "threshold": threshold,
                "correct": sum(
                    scorer_says_right(task, a, r["reference"])
                    for a, r in zip(answers, rows, strict=True)
                ),
                "rewrites": sum(t.rpartition(marker)[2].strip() != CONFIRMATION for t in texts),
            }
        )
    best = max(table, key=lambda row: row["correct"])  # the first of the best: the lowest
    return best["threshold"], table


def cut_draft(
    draft_ids: Sequence[int], reference_ids: Sequence[int], variant: str, rng: random.Random
) -> list[int]:
    """The part of a draft (without EOS) that a correction sample shows; `reference_ids` are
    the reference's tokens without EOS.

    - "whole": the draft as it is.
    - "first_divergence": the draft up to and including its first token that differs from the
      reference, so the correction follows the first mistake. Past the reference's end every
      draft token differs (the reference had its EOS there): a draft that continues the whole
      reference is cut one token after it. A draft that never differs (a prefix of the
      reference: it stopped early) is kept whole; its mistake is to have stopped.
    - "random": the first c tokens, c uniform in 1..len(draft), drawn from `rng` (which only
      `random()` is asked of, since its sequence per seed is stable across Python versions).

    An empty draft stays empty.
    """
    if variant not in CUT_VARIANTS:
        raise ValueError(f"cut variant must be one of {CUT_VARIANTS}, got {variant!r}")
    draft = list(draft_ids)
    if variant == "whole" or not draft:
        return draft
    if variant == "first_divergence":
        for i, token in enumerate(draft):
            if i >= len(reference_ids) or token != reference_ids[i]:
                return draft[: i + 1]
        return draft
    return draft[: 1 + int(rng.random() * len(draft))]


def _hash_int(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(map(str, parts)).encode()).digest(), "little")


def is_right(text: str, example: Example) -> bool:
    """Whether the model's `text` answers `example` right, by its task's scorer
    (`data_tools.scoring.is_right`; math: the final number, postfix: the symbols); a reference
    the scorer cannot read (no number, no symbol) is a `DataError`."""
    try:
        return scorer_says_right(example.task, text, example.response)
    except ValueError as e:
        raise DataError(example.origin or f"example {example.id}", "response", str(e)) from e


def build_rac_samples(
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    drafts: dict[str, list[list[int]]],
    *,
    variant: str = "whole",
    mix: float = 0.25,
    right_drafts: str = "keep",
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """RAC training rows from the examples and the model's drafts (example id -> token id lists,
    several per example allowed), and a report of counts.

    Each non-empty draft (its EOS dropped) is judged by the task's scorer (`is_right`). A
    wrong one makes a correction sample: the draft cut by `variant`, then the reference. A right
    one, by `right_drafts`: "keep", a keep sample (the whole draft, then its own text again,
    whatever the cut variant: inference shows the whole draft and scores what follows the
    marker); "confirm", the whole draft, then `CONFIRMATION`; "correct", a correction like a
    wrong draft's; "drop", nothing. A draft equal to the reference is right: a keep or confirm
    sample under those, nothing otherwise (nothing to correct). Tasks
    without a right answer (qa, summarization) take "correct" only: every draft that differs from
    the reference is a correction. Variant "echo" turns every sample the drafts make into
    prompt | reference | marker | reference EOS, so that the rows match the draft arm's in
    number, examples and shape, with no draft in them. The report counts the drafts (empty,
    equal to the reference, right and wrong: None when the task has no scorer) and the rows by
    kind (keep, confirm, correct, echo, plain).

    `mix` is the fraction of the rows that have a draft: every such sample is used, and
    round(samples * (1 - mix) / mix) plain SFT samples (draft_ids null) are added, taken from all
    `examples` in a seeded order; an example repeats only once every example has been taken
    (several drafts per example can need more plain samples than there are examples). mix = 1
    adds none.

    Ids are "<id>#rac<k>" (the k-th draft of the example, counted before filtering; meta.sample
    says its kind) and "<id>#sft<r>" (its r-th plain copy); rows come in the order of `examples`,
    samples with a draft first. Everything random (the "random" cut, the plain samples' order)
    is a function of `seed` and the ids, so the same inputs give the same rows.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if right_drafts not in RIGHT_DRAFTS:
        raise ValueError(f"right_drafts must be one of {RIGHT_DRAFTS}, got {right_drafts!r}")
    if not examples:
        raise ValueError("no examples to build RAC samples from")
    if not 0 < mix <= 1:
        raise ValueError(f"mix (the fraction of samples with a draft) must be in (0, 1], got {mix}")
    tasks = sorted({e.task for e in examples})
    scored = set(tasks) <= set(RIGHT_OR_WRONG)
    if right_drafts != "correct" and not scored:
        raise ValueError(
            f"right_drafts={right_drafts!r} needs drafts judged right or wrong, which only tasks "
            f"{', '.join(RIGHT_OR_WRONG)} can be; the examples have task(s) {tasks}: use "
            "right_drafts='correct'"
        )
    unknown = sorted(set(drafts) - {e.id for e in examples})
    if unknown:
        raise ValueError(f"drafts for {len(unknown)} ids not in the examples: {unknown[:5]}")
    report: dict[str, Any] = {
        "examples": len(examples),
        "drafts": 0,
        "empty": 0,
        "equal_to_reference": 0,
        "right": 0 if scored else None,
        "wrong": 0 if scored else None,
        "keep": 0,
        "confirm": 0,
        "correct": 0,
        "echo": 0,
        "plain": 0,
        "rows": 0,
    }
    samples: dict[str, list[dict[str, Any]]] = {e.id: [] for e in examples}
    references = response_ids(tokenizer, [e.response for e in examples])
    for example, reference in zip(examples, references, strict=True):
        for k, draft_ids in enumerate(drafts.get(example.id, [])):
            report["drafts"] += 1
            draft = _strip_eos(draft_ids, tokenizer.eos_token_id)
            if not draft:
                report["empty"] += 1
                continue
            equal = draft == reference
            report["equal_to_reference"] += equal
            # Only a scored task reads the draft's text (to judge it, and to keep it).
            text = tokenizer.decode(draft, skip_special_tokens=True) if scored else ""
            right = scored and is_right(text, example)
            if scored:
                report["right" if right else "wrong"] += 1
            keep = right and right_drafts in ("keep", "confirm")
            if (right and right_drafts == "drop") or (equal and not keep):
                continue
            if variant == "echo":
                kind, shown, target = "echo", reference, example.response
            elif keep:
                kind, shown = right_drafts, draft
                target = text if right_drafts == "keep" else CONFIRMATION
            else:
                rng = random.Random(_hash_int(seed, example.id, k))
                kind, target = "correct", example.response
                shown = cut_draft(draft, reference, variant, rng)
            report[kind] += 1
            samples[example.id].append(
                _row(example, f"#rac{k}", target, shown, {"draft": k, "sample": kind})
            )
    n_samples = sum(map(len, samples.values()))
    n_plain = round(n_samples * (1 - mix) / mix)
    order = sorted(examples, key=lambda e: _hash_int(seed, "plain", e.id))
    copies = {e.id: 0 for e in examples}
    for i in range(n_plain):
        copies[order[i % len(order)].id] += 1
    rows = []
    for example in examples:
        rows += samples[example.id]
        rows += [
            _row(example, f"#sft{r}", example.response, None, {}) for r in range(copies[example.id])
        ]
    report.update(plain=n_plain, rows=len(rows))
    return rows, report


def _row(
    example: Example,
    suffix: str,
    response: str,
    draft_ids: list[int] | None,
    meta: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": example.id + suffix,
        "prompt": example.prompt,
        "response": response,
        "draft_ids": draft_ids,
        "task": example.task,
        "meta": {**example.meta, "source_id": example.id, **meta},
    }


def read_drafts(
    path: str | Path, known_ids: set[str], vocab_size: int
) -> dict[str, list[list[int]]]:
    """Drafts from a generation jsonl (rows with "id" and "generation_ids"), grouped by example:
    by meta.source_id when a row has one (several samples per prompt), else by its id. A draft
    for an id not in `known_ids`, a token id that is not an integer of the tokenizer's
    `vocab_size` (it would be written into the training file) and a file without drafts are
    refused with the file (and line)."""
    drafts: dict[str, list[list[int]]] = {}
    seen: dict[str, str] = {}
    for where, row in jsonl_objects(path):
        row_id = unique_id(row, where, seen)
        ids = token_ids(row.get("generation_ids"), where, "generation_ids", vocab_size)
        meta = row.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise DataError(where, "meta", f"expected an object, got {type(meta).__name__}")
        source = row_id
        if meta and "source_id" in meta:
            source = meta["source_id"]
            if not isinstance(source, str) or not source.strip():
                raise DataError(
                    where, "meta.source_id", f"expected a non-blank string, got {source!r}"
                )
        if source not in known_ids:
            raise DataError(where, "id", f"{source!r} is not an example of the data")
        drafts.setdefault(source, []).append(ids)
    if not drafts:
        raise DataError(str(path), None, "no drafts")
    return drafts


def read_draft_ids(path: str | Path, vocab_size: int) -> dict[str, list[int] | None]:
    """The "draft_ids" of every row written by the CLI, by row id (None for a plain sample),
    each token an integer id of the tokenizer's `vocab_size`. The rows themselves load as
    examples with `load_examples` (format "plain")."""
    drafts: dict[str, list[int] | None] = {}
    seen: dict[str, str] = {}
    for where, row in jsonl_objects(path):
        row_id = unique_id(row, where, seen)
        if "draft_ids" not in row:
            raise DataError(
                where,
                "draft_ids",
                "missing (null for a plain sample); RAC data is made by python -m methods.correction",
            )
        draft = row["draft_ids"]
        drafts[row_id] = None if draft is None else token_ids(draft, where, "draft_ids", vocab_size)
    if not drafts:
        raise DataError(str(path), None, "no RAC rows")
    return drafts


@dataclass
class CorrectionArgs:
    data: str = field(metadata={"help": "the training data (file or hub dataset)"})
    drafts: str = field(metadata={"help": "generation jsonl with the model's drafts"})
    tokenizer: str = field(metadata={"help": "the model's tokenizer (folder or hub name)"})
    output: str = field(metadata={"help": "the RAC jsonl to write"})
    task: str = field(default="math", metadata={"help": ", ".join(TASKS)})
    limit: int | None = field(
        default=None, metadata={"help": "use only the first N examples of the data"}
    )
    variant: str = field(
        default="whole",
        metadata={"help": ", ".join(VARIANTS) + " (echo: reference, marker, reference; a control)"},
    )
    mix: float = field(default=0.25, metadata={"help": "fraction of the samples with a draft"})
    right_drafts: str = field(
        default="keep",
        metadata={
            "help": "what a draft with the right answer (math, postfix) makes: keep (marker, the "
            "draft again), confirm (marker, 'No correction.'), correct (marker, the reference) "
            "or drop (nothing); other tasks: correct"
        },
    )
    seed: int = 0
    max_length: int = field(
        default=DataArgs.max_length,
        metadata={
            "help": "training's max_length: every sample is encoded once to check that it fits"
        },
    )
    marker: str = field(
        default=CORRECTION_MARKER, metadata={"help": "training's correction marker"}
    )

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.right_drafts not in RIGHT_DRAFTS:
            raise ValueError(
                f"right_drafts must be one of {', '.join(RIGHT_DRAFTS)}, got {self.right_drafts!r}"
            )


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_config((CorrectionArgs,), argv)

    examples, _ = load_examples(args.data, task=args.task, limit=args.limit)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)  # its vocabulary checks the drafts
    drafts = read_drafts(args.drafts, {e.id for e in examples}, len(tokenizer))
    rows, report = build_rac_samples(
        tokenizer,
        examples,
        drafts,
        variant=args.variant,
        mix=args.mix,
        right_drafts=args.right_drafts,
        seed=args.seed,
    )
    if not rows:
        raise DataError(args.drafts, None, f"no samples with a draft: {json.dumps(report)}")
    truncation = CorrectionReport()
    by_id = {e.id: e for e in examples}
    for row in rows:
        # the row's target (a keep's is its draft), errors named by the data's line
        example = replace(by_id[row["meta"]["source_id"]], response=row["response"])
        encode_correction(
            tokenizer, example, row["draft_ids"], args.max_length, args.marker, truncation
        )
    write_jsonl(args.output, rows)
    print(json.dumps(report))
    print(truncation.summary())
    print(f"wrote {len(rows)} rows to {args.output}")


if __name__ == "__main__":
    run_tool(main)
