"""Tokenization with the loss on the response only, and a truncation policy that keeps the response.

A training sequence is `prompt tokens + response tokens + EOS`; labels are -100 on the prompt
(and, after collation, on the padding), so only the response and its EOS are learnt
(`loss_on="all"` learns the prompt too, as some published recipes do). When the sequence is
too long, the prompt's text is cut from the left, the template around it (or the plain
template's BOS) kept whole (`PromptFrame`), since the end of a question matters most. What was
cut is counted and reported.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from data_tools.prompting import format_prompt, uses_chat_template
from data_tools.schema import DataError, Example, Preference

IGNORE_INDEX = -100
OVERLONG_POLICIES = ("truncate", "error", "skip")
LOSS_ON = ("response", "all")


@dataclass
class Encoded:
    id: str
    input_ids: list[int]
    labels: list[int]

    @property
    def num_trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class TruncationReport:
    """What the truncation policy did to a dataset; printed so that nothing is cut silently."""

    examples: int = 0
    prompts_cut: int = 0
    prompt_tokens_cut: int = 0
    skipped_ids: list[str] = field(default_factory=list)
    unit: str = "examples"  # what `examples` counts (preference pairs, for DPO)

    def summary(self) -> str:
        return (
            f"{self.examples} {self.unit}: {self.prompts_cut} prompts cut from the left "
            f"({self.prompt_tokens_cut} tokens), {len(self.skipped_ids)} skipped as too long"
            + (f" (first: {self.skipped_ids[:5]})" if self.skipped_ids else "")
        )


# Stands for the user's text when the chat template is rendered, to find where the text goes.
_TEXT = "\x00user text\x00"


@functools.lru_cache(maxsize=8)
def _chat_frame_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The chat template's tokens before the user's text (system turn, user header) and after it
    (end of turn, generation prompt), the template's special tokens parsed as such. Kept per
    tokenizer: every prompt of a dataset (RAC encodes one at a time) has the same frame."""
    rendered = format_prompt(tokenizer, _TEXT)
    before, found, after = rendered.partition(_TEXT)
    if not found:
        raise ValueError(
            "the tokenizer's chat template does not show the user's message as given; "
            "prompts cannot be tokenized safely with it"
        )
    ids = tokenizer([before, after], add_special_tokens=False)["input_ids"]
    return ids[0], ids[1]


@dataclass(frozen=True)
class PromptFrame:
    """The tokens a prompt format puts around the user's text: a chat template's system turn
    and user header before it and its end of turn and generation prompt after it, or the plain
    template's BOS. A prompt is cut inside the user's text only, so a cut prompt keeps its
    template whole."""

    before: int
    after: int

    @property
    def min_length(self) -> int:
        """The shortest prompt: the frame and one token of text."""
        return self.before + self.after + 1

    def cut(self, ids: list[int], keep: int) -> list[int]:
        """`ids` cut to `keep` tokens by dropping the start of the user's text."""
        if len(ids) <= keep:
            return ids
        if keep < self.min_length:
            raise ValueError(
                f"{keep} prompt tokens leave no room for the text: the prompt format takes "
                f"{self.before + self.after}"
            )
        return ids[: self.before] + ids[len(ids) - (keep - self.before) :]


def prompt_frame(tokenizer: PreTrainedTokenizerBase) -> PromptFrame:
    if uses_chat_template(tokenizer):
        before, after = _chat_frame_ids(tokenizer)
        return PromptFrame(len(before), len(after))
    adds_bos = tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    return PromptFrame(int(adds_bos), 0)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """The tokens the model sees before its response. Text in a prompt stays text: "</s>" or
    "<|im_end|>" written in a question is not a special token (it must neither end the sequence
    nor open a turn). A chat template's own special tokens are real ones: the template's parts
    and the user's text are tokenized apart and joined."""
    if not uses_chat_template(tokenizer):
        texts = [format_prompt(tokenizer, p) for p in prompts]
        return tokenizer(texts, split_special_tokens=True)["input_ids"]
    before, after = _chat_frame_ids(tokenizer)
    texts = tokenizer(list(prompts), add_special_tokens=False, split_special_tokens=True)
    return [before + ids + after for ids in texts["input_ids"]]


def _overlong(
    item: Example | Preference,
    policy: str,
    field_name: str,
    problem: str,
    report: TruncationReport,
) -> None:
    if policy == "skip":
        report.skipped_ids.append(item.id)
        return
    raise DataError(
        item.origin or f"example {item.id}",
        field_name,
        problem + " (set overlong: skip to skip such examples)",
    )


def response_ids(tokenizer: PreTrainedTokenizerBase, responses: Sequence[str]) -> list[list[int]]:
    """The responses' tokens, without EOS; special-token text in them stays text."""
    return tokenizer(list(responses), add_special_tokens=False, split_special_tokens=True)[
        "input_ids"
    ]


def fit_prompt(
    item: Example | Preference,
    prompt: list[int],
    response_length: int,
    max_length: int,
    overlong: str,
    report: TruncationReport,
    frame: PromptFrame,
    response_field: str = "response",
) -> list[int] | None:
    """`prompt` fitted before `response_length` tokens (EOS included) in `max_length`, as
    `overlong` says: cut from the left inside its text ("truncate", counted in `report`),
    refused ("error"), or None ("skip", counted). A response that cannot fit even with an empty
    prompt is an error unless "skip" is chosen."""
    room = max_length - response_length
    if room < frame.min_length:
        _overlong(
            item,
            "error" if overlong == "truncate" else overlong,
            response_field,
            f"{response_length} response tokens leave no room for the prompt in max_length={max_length}",
            report,
        )
        return None
    if len(prompt) <= room:
        return prompt
    if overlong != "truncate":
        _overlong(
            item,
            overlong,
            "prompt",
            f"{len(prompt)} prompt + {response_length} response tokens exceed max_length={max_length}",
            report,
        )
        return None
    report.prompts_cut += 1
    report.prompt_tokens_cut += len(prompt) - room
    return frame.cut(prompt, room)


def check_sample(
    example: Example | Preference,
    encoded: Encoded,
    eos_id: int,
    response_tokens: int,
    field_name: str = "response",
) -> None:
    """Refuse a training sample that would teach nothing, or never to stop: one without any
    trained token, one whose response lost every token (to truncation or tokenization), and one
    whose final EOS is not trained (the classic bug when pad = EOS and padding is masked by id).
    Nothing is skipped silently: the error names the example, where it came from, and the
    response's field (`field_name`)."""
    where = example.origin or f"example {example.id}"
    if all(label == IGNORE_INDEX for label in encoded.labels):
        raise DataError(where, field_name, f"example {example.id!r} has no trained token")
    if response_tokens == 0:
        raise DataError(
            where, field_name, f"example {example.id!r}: no response token is left to train on"
        )
    if encoded.input_ids[-1] != eos_id or encoded.labels[-1] != eos_id:
        raise DataError(
            where,
            field_name,
            f"example {example.id!r}: the final EOS ({eos_id}) is not trained (labels end with "
            f"{encoded.labels[-3:]}): the model would never learn to stop",
        )


def encode_examples(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    max_length: int,
    overlong: str = "truncate",
    loss_on: str = "response",
) -> tuple[list[Encoded], TruncationReport]:
    """Tokenize for training. `overlong` says what to do when prompt + response exceed `max_length`:
    cut the prompt from the left ("truncate"), refuse ("error") or drop the example ("skip").
    A response that cannot fit even with an empty prompt is an error unless "skip" is chosen.
    `loss_on` "all" puts the labels on the prompt too, except on its first token, which no
    position predicts (the loss's shift drops it), so that `num_trained` counts the targets."""
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {overlong!r}")
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    report = TruncationReport(examples=len(examples))
    if not examples:  # the tokenizer cannot take an empty batch (IndexError)
        return [], report
    prompts, frame = prompt_ids(tokenizer, [e.prompt for e in examples]), prompt_frame(tokenizer)
    responses = response_ids(tokenizer, [e.response for e in examples])
    encoded = []
    for example, prompt, response in zip(examples, prompts, responses, strict=True):
        response = response + [tokenizer.eos_token_id]
        prompt = fit_prompt(example, prompt, len(response), max_length, overlong, report, frame)
        if prompt is None:
            continue
        context = prompt[:1] if loss_on == "all" else prompt
        labels = [IGNORE_INDEX] * len(context) + prompt[len(context) :] + response
        encoded.append(Encoded(example.id, prompt + response, labels))
        check_sample(example, encoded[-1], tokenizer.eos_token_id, len(response) - 1)
    return encoded, report


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_prompt_length: int
) -> tuple[list[list[int]], int]:
    """Tokenize prompts for generation, cutting each from the left to `max_prompt_length`.
    Returns the ids and how many prompts were cut."""
    if not prompts:  # the tokenizer cannot take an empty batch (IndexError)
        return [], 0
    ids, frame = prompt_ids(tokenizer, prompts), prompt_frame(tokenizer)
    cut = sum(len(x) > max_prompt_length for x in ids)
    return [frame.cut(x, max_prompt_length) for x in ids], cut
