"""Prompt formatting: the tokenizer's chat template when it has one, else a plain template."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

# Used for tokenizers without a chat template (base models, the embedded default). The response
# follows on the next line; it is tokenized on its own, so the boundary is the same in training
# and in generation.
PLAIN_TEMPLATE = "Question: {prompt}\nAnswer:\n"


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The text the model sees before its response."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return PLAIN_TEMPLATE.format(prompt=prompt)


def uses_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(tokenizer.chat_template)
