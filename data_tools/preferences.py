"""Preference pairs for DPO: a prompt, a chosen and a rejected response, read from the usual
layouts (a local file or a hub dataset, as `sources` reads them) and encoded as two training
sequences that share their prompt tokens.

Layouts, per row (every row is checked; a bad one is a `DataError` naming file:line:field):

- strings: `prompt`, `chosen`, `rejected` (TRL's standard format, and what
  `python -m methods.preference_pairs` writes);
- an explicit prompt (TRL's conversational format): `prompt` a message list, `chosen` and
  `rejected` the assistant turn(s) that follow it;
- whole conversations (UltraFeedback-binarized, TRL's implicit prompt): `chosen` and `rejected`
  message lists that share every turn but their last, the assistant's response. A `prompt`
  string beside them (UltraFeedback's copy of the first user turn) is not read.

The turns before the response are the prompt as for the `messages` layout (a single user turn
verbatim, a longer history flattened: `sources.history_prompt`); it is formatted, tokenized and
cut exactly as for the other modes. Ids are the row's `id` (or `prompt_id`), else a hash of the
three texts.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from data_tools.schema import DataError, Preference
from data_tools.sources import (
    Row,
    content_id,
    history_prompt,
    load_records,
    message_turns,
    row_id,
    text_field,
)
from data_tools.token_store import TokenStore
from data_tools.tokenization import (
    IGNORE_INDEX,
    OVERLONG_POLICIES,
    Encoded,
    TruncationReport,
    check_sample,
    fit_prompt,
    prompt_frame,
    prompt_ids,
    response_ids,
)

SIDES = ("chosen", "rejected")
Turn = tuple[str, str]  # role, content


def _turns(value: object, where: str, field: str) -> list[Turn]:
    """A message list's turns, every content a non-blank string."""
    return [
        (role, text_field(m, "content", where, field=f"{field}[{i}].content"))
        for i, (role, m) in enumerate(message_turns(value, where, field))
    ]


def _prompt_turns(row: Row, where: str) -> list[Turn]:
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        return _turns(prompt, where, "prompt")
    return [("user", text_field(row, "prompt", where))]


def _conversation(row: Row, side: str, where: str) -> tuple[list[Turn], str]:
    """The turns before `side`'s response, and the response."""
    value = row.get(side)
    if not isinstance(value, list):
        response = text_field(row, side, where)
        return _prompt_turns(row, where), response
    turns = _turns(value, where, side)
    if not turns:
        raise DataError(where, side, "an empty conversation")
    if turns[-1][0] != "assistant":
        raise DataError(
            where, side, f"does not end with an assistant turn (its last is {turns[-1][0]!r})"
        )
    if turns[0][0] == "assistant":  # the turns after the prompt
        return _prompt_turns(row, where) + turns[:-1], turns[-1][1]
    return turns[:-1], turns[-1][1]  # a whole conversation, its prompt turns included


def _preference(row: Row, where: str) -> tuple[str, Preference]:
    (history, chosen), (rejected_history, rejected) = (
        _conversation(row, side, where) for side in SIDES
    )
    if rejected_history != history:
        raise DataError(
            where, "rejected", "its prompt turns differ from chosen's: a pair answers one prompt"
        )
    if rejected.strip() == chosen.strip():
        raise DataError(where, "rejected", "the same text as chosen: the pair prefers nothing")
    prompt = history_prompt(history)
    id_ = row_id(row, where) or content_id(prompt, chosen, rejected)
    return id_, Preference(id_, prompt, chosen, rejected, where)


def load_preferences(
    source: str,
    *,
    name: str | None = None,
    split: str = "train",
    limit: int | None = None,
    skip_invalid: bool = False,
) -> tuple[list[Preference], int]:
    """The first `limit` valid pairs of `source` (a .jsonl/.json/.parquet file or a hub dataset,
    `name` its config) and how many invalid rows were skipped (`skip_invalid`)."""
    return load_records(
        source,
        lambda first, where: _preference,  # one layout, told apart per row
        what="preference pairs",
        name=name,
        split=split,
        limit=limit,
        skip_invalid=skip_invalid,
    )


@dataclass(frozen=True)
class EncodedPair:
    """A pair's two training sequences: the same prompt tokens, then each response and EOS,
    the labels on those only."""

    id: str
    chosen: Encoded
    rejected: Encoded

    @property
    def num_trained(self) -> int:
        return self.chosen.num_trained + self.rejected.num_trained

    @property
    def num_tokens(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)

    @property
    def digest(self) -> str:
        """A hash of both sequences as tokenized and masked: log-probabilities computed for a
        pair hold for these very inputs only (not another max_length or prompt format)."""
        h = hashlib.sha256()
        for e in (self.chosen, self.rejected):
            h.update(array("q", e.input_ids).tobytes() + b"\0" + array("q", e.labels).tobytes())
        return h.hexdigest()[:16]


def sequences(items: Sequence[Encoded | EncodedPair]) -> Sequence[Encoded]:
    """The training sequences of `items`: each pair's chosen and rejected in turn, an example's
    own; a store's are itself (not rebuilt all at once)."""
    if isinstance(items, TokenStore):
        return items
    out = []
    for item in items:
        out += [item.chosen, item.rejected] if isinstance(item, EncodedPair) else [item]
    return out


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[Preference],
    max_length: int,
    overlong: str = "truncate",
) -> tuple[list[EncodedPair], TruncationReport]:
    """Tokenize pairs for DPO. A pair's prompt is fitted (`fit_prompt`) before its longer
    response, so that chosen and rejected follow the very same prompt tokens; `overlong` as for
    `encode_examples`, a skipped pair counted once in the report."""
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {overlong!r}")
    report = TruncationReport(examples=len(pairs), unit="preference pairs")
    if not pairs:  # the tokenizer cannot take an empty batch (IndexError)
        return [], report
    prompts, frame = prompt_ids(tokenizer, [p.prompt for p in pairs]), prompt_frame(tokenizer)
    eos = tokenizer.eos_token_id
    chosen, rejected = (response_ids(tokenizer, [getattr(p, s) for p in pairs]) for s in SIDES)
    encoded = []
    for pair, prompt, *responses in zip(pairs, prompts, chosen, rejected, strict=True):
        responses = [r + [eos] for r in responses]
        longer = max(range(2), key=lambda k: len(responses[k]))
        prompt = fit_prompt(
            pair, prompt, len(responses[longer]), max_length, overlong, report, frame, SIDES[longer]
        )
        if prompt is None:
            continue
        sides = [Encoded(pair.id, prompt + r, [IGNORE_INDEX] * len(prompt) + r) for r in responses]
        for side, e, r in zip(SIDES, sides, responses, strict=True):
            check_sample(pair, e, eos, len(r) - 1, side)
        encoded.append(EncodedPair(pair.id, *sides))
    return encoded, report
