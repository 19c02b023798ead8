"""A pairwise judge: a local causal LM says which of two responses to a request is better.

Every pair is shown twice, the generation first and then the reference first, to cancel the
judge's position bias. In each order the judge makes one forward pass over the filled prompt
template and reads the next-token logits of "1" and "2": `preference` = logit("1") - logit("2"),
for the response shown first when positive. No sampling, so the verdicts are reproducible.

An order's verdict, from the generation's side, is a win or a loss, or a tie when
|preference| <= margin. The pair is a win when both orders say win, a loss when both say loss,
and a tie otherwise (the orders disagree, or one of them is a tie). The win rate counts ties as
half a win: (wins + ties / 2) / n.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from data_tools.prompting import format_prompt, uses_chat_template
from data_tools.schema import DataError
from data_tools.tokenization import prompt_ids
from runtime import distributed
from runtime.ds_config import DTYPES, resolve_precision
from runtime.generation import longest_first
from runtime.modeling import load_model, load_tokenizer

# Small enough for a CPU; any local folder or hub name of a causal LM can replace it.
DEFAULT_JUDGE = "Qwen/Qwen2.5-0.5B-Instruct"
DEFAULT_PROMPT = Path(__file__).resolve().parents[1] / "prompts" / "judge_pairwise.txt"
TEMPLATE_FIELDS = {"prompt", "first", "second"}
CHOICES = ("1", "2")
SCORES = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def read_template(path: str | Path) -> str:
    """The judge's prompt: a text with the fields {prompt}, {first} and {second} (literal braces
    doubled, as in Python's str.format)."""
    text = Path(path).read_text(encoding="utf-8").strip()
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as e:
        raise DataError(str(path), None, f"not a valid template: {e}") from e
    if names != TEMPLATE_FIELDS:
        raise DataError(
            str(path),
            None,
            f"the template must use exactly the fields {sorted(TEMPLATE_FIELDS)}, "
            f"it uses {sorted(names)} (write literal braces as {{{{ and }}}})",
        )
    return text


def order_verdict(preference: float, generation_first: bool, margin: float) -> str:
    """The generation's verdict in one order, from the judge's preference for the first shown."""
    if abs(preference) <= margin:
        return "tie"
    return "win" if (preference > 0) == generation_first else "loss"


def pair_outcome(verdicts: Sequence[str]) -> str:
    """A pair's outcome from the verdicts of its two orders: agreement stands, the rest ties."""
    first, second = verdicts
    return first if first == second else "tie"


def choice_token(tokenizer: PreTrainedTokenizerBase, choice: str) -> int:
    """The token that `choice` adds after a formatted prompt, whose logit the judge reads."""
    chat = uses_chat_template(tokenizer)
    text = format_prompt(tokenizer, "Which response is better?")
    before = prompt_ids(tokenizer, ["Which response is better?"])[0]
    after = tokenizer(text + choice, add_special_tokens=not chat, split_special_tokens=not chat)
    after = after["input_ids"]
    if after[:-1] != before:
        raise ValueError(
            f"{choice!r} is not a single token after the prompt with this judge's tokenizer; "
            "the judge reads one token per answer"
        )
    return after[-1]


class PairwiseJudge:
    """Judges generations against references with a local causal LM (see the module doc)."""

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_JUDGE,
        prompt_file: str | Path = DEFAULT_PROMPT,
        margin: float = 0.0,
        batch_size: int = 8,
        precision: str = "auto",
    ):
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.template = read_template(prompt_file)
        self.margin, self.batch_size = margin, batch_size
        self.tokenizer = load_tokenizer(model_name_or_path)
        dtype = DTYPES[resolve_precision(precision)]
        self.model = load_model(self.tokenizer, model_name_or_path, dtype=dtype)
        self.model.to(distributed.device()).eval()
        self.choices = [choice_token(self.tokenizer, c) for c in CHOICES]
        self.info = {"model": model_name_or_path, "prompt": str(prompt_file), "margin": margin}

    @torch.no_grad()
    def preferences(self, texts: Sequence[str]) -> list[float]:
        """logit("1") - logit("2") after each text, formatted as a prompt for the judge."""
        ids = prompt_ids(self.tokenizer, texts)
        positions = getattr(self.model.config, "max_position_embeddings", None)
        for i, x in enumerate(ids):
            if positions and len(x) > positions:
                raise ValueError(
                    f"judge prompt {i} has {len(x)} tokens, more than the judge's {positions} "
                    "positions; use a judge with a longer context or a shorter template"
                )
        out: dict[int, float] = {}
        order = longest_first([len(x) for x in ids])
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            # Right padding: each row's last token sees its own tokens only, at their positions.
            inputs = self.tokenizer.pad(
                {"input_ids": [ids[i] for i in batch]}, padding_side="right", return_tensors="pt"
            ).to(self.model.device)
            logits = self.model(**inputs).logits
            last = logits[torch.arange(len(batch)), inputs["attention_mask"].sum(-1) - 1]
            picked = last[:, self.choices].float()
            out.update(zip(batch, (picked[:, 0] - picked[:, 1]).tolist(), strict=True))
        return [out[i] for i in range(len(ids))]

    def compare(
        self, prompts: Sequence[str], generations: Sequence[str], references: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Per pair: {"judged": both orders (who came first, preference, verdict), "outcome",
        "win": 1, 0.5 or 0}."""
        texts = []
        for prompt, generation, reference in zip(prompts, generations, references, strict=True):
            texts.append(self.template.format(prompt=prompt, first=generation, second=reference))
            texts.append(self.template.format(prompt=prompt, first=reference, second=generation))
        preferences = self.preferences(texts)
        records = []
        for i in range(len(prompts)):
            judged = [
                {"first": first, "preference": preferences[2 * i + k]}
                for k, first in enumerate(("generation", "reference"))
            ]
            for order in judged:
                order["verdict"] = order_verdict(
                    order["preference"], order["first"] == "generation", self.margin
                )
            outcome = pair_outcome([order["verdict"] for order in judged])
            records.append({"judged": judged, "outcome": outcome, "win": SCORES[outcome]})
        return records
