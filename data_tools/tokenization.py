"""Tokenization with the loss on the response only, and a truncation policy that keeps the response.

A training sequence is `prompt tokens + response tokens + EOS`; labels are -100 on the prompt
(and, after collation, on the padding), so only the response and its EOS are learnt
(`loss_on="all"` learns the prompt too, as some published recipes do). When the
sequence is too long, the prompt is cut from the left (after its BOS), since the end of a prompt
(the question, the generation cue) matters most. What was cut is counted and reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from data_tools.prompting import format_prompt, uses_chat_template
from data_tools.schema import DataError, Example

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

    def summary(self) -> str:
        return (
            f"{self.examples} examples: {self.prompts_cut} prompts cut from the left "
            f"({self.prompt_tokens_cut} tokens), {len(self.skipped_ids)} skipped as too long"
            + (f" (first: {self.skipped_ids[:5]})" if self.skipped_ids else "")
        )


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    texts = [format_prompt(tokenizer, p) for p in prompts]
    # A chat template writes its own special tokens; a plain prompt gets the tokenizer's BOS, and
    # text such as "</s>" in it stays text (it must not end the sequence).
    chat = uses_chat_template(tokenizer)
    return tokenizer(texts, add_special_tokens=not chat, split_special_tokens=not chat)["input_ids"]


def cut_left(ids: list[int], keep: int, bos_id: int | None) -> list[int]:
    """The last `keep` tokens of `ids`, with a leading BOS kept in front of them."""
    if len(ids) <= keep:
        return ids
    if bos_id is not None and ids and ids[0] == bos_id and keep >= 1:
        return [bos_id] + ids[len(ids) - keep + 1 :]
    return ids[len(ids) - keep :]


def _overlong(
    example: Example, policy: str, field_name: str, problem: str, report: TruncationReport
) -> None:
    if policy == "skip":
        report.skipped_ids.append(example.id)
        return
    raise DataError(
        example.origin or f"example {example.id}",
        field_name,
        problem + " (set overlong: skip to skip such examples)",
    )


def check_sample(example: Example, encoded: Encoded, eos_id: int, response_tokens: int) -> None:
    """Refuse a training sample that would teach nothing, or never to stop: one without any
    trained token, one whose response lost every token (to truncation or tokenization), and one
    whose final EOS is not trained (the classic bug when pad = EOS and padding is masked by id).
    Nothing is skipped silently: the error names the example and where it came from."""
    where = example.origin or f"example {example.id}"
    if all(label == IGNORE_INDEX for label in encoded.labels):
        raise DataError(where, "response", f"example {example.id!r} has no trained token")
    if response_tokens == 0:
        raise DataError(
            where, "response", f"example {example.id!r}: no response token is left to train on"
        )
    if encoded.input_ids[-1] != eos_id or encoded.labels[-1] != eos_id:
        raise DataError(
            where,
            "response",
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
    prompts = prompt_ids(tokenizer, [e.prompt for e in examples])
    responses = [e.response for e in examples]
    responses = tokenizer(responses, add_special_tokens=False, split_special_tokens=True)[
        "input_ids"
    ]
    encoded = []
    for example, prompt, response in zip(examples, prompts, responses, strict=True):
        response = response + [tokenizer.eos_token_id]
        room = max_length - len(response)
        min_prompt = 2 if prompt and prompt[0] == tokenizer.bos_token_id else 1
        if room < min_prompt:
            _overlong(
                example,
                "error" if overlong == "truncate" else overlong,
                "response",
                f"{len(response)} response tokens leave no room for the prompt in max_length={max_length}",
                report,
            )
            continue
        if len(prompt) > room:
            if overlong != "truncate":
                _overlong(
                    example,
                    overlong,
                    "prompt",
                    f"{len(prompt)} prompt + {len(response)} response tokens exceed max_length={max_length}",
                    report,
                )
                continue
            report.prompts_cut += 1
            report.prompt_tokens_cut += len(prompt) - room
            prompt = cut_left(prompt, room, tokenizer.bos_token_id)
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
    ids = prompt_ids(tokenizer, prompts)
    cut = sum(len(x) > max_prompt_length for x in ids)
    return [cut_left(x, max_prompt_length, tokenizer.bos_token_id) for x in ids], cut
