"""`loss_on`: which labels are trained (response only, or the whole sequence), and the modes that
refuse the whole sequence."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerBase

from data_tools.collate import pad_right
from data_tools.schema import Example
from data_tools.tokenization import IGNORE_INDEX, encode_examples
from train.args import TrainArgs

EXAMPLES = [
    Example("a", "Tom has 5 apples. He buys 3 more. How many now?", "5+3 = 8\n#### 8", "math"),
    Example("b", "Sam has 2 pens.", "#### 2", "math"),
]


def test_which_labels_are_trained(tokenizer: PreTrainedTokenizerBase) -> None:
    response, _ = encode_examples(tokenizer, EXAMPLES, 64)
    whole, _ = encode_examples(tokenizer, EXAMPLES, 64, loss_on="all")
    for r, w, example in zip(response, whole, EXAMPLES, strict=True):
        answer = tokenizer(example.response, add_special_tokens=False)["input_ids"]
        n_response = len(answer) + 1  # and EOS
        assert w.input_ids == r.input_ids
        assert r.labels == [IGNORE_INDEX] * (len(r.input_ids) - n_response) + answer + [
            tokenizer.eos_token_id
        ]
        # Every token but the first (BOS), which no position predicts.
        assert w.labels == [IGNORE_INDEX] + w.input_ids[1:]
        assert w.input_ids[0] == tokenizer.bos_token_id
        assert w.num_trained == len(w.input_ids) - 1
    # Padding is never trained.
    labels = pad_right(whole, tokenizer.pad_token_id)["labels"]
    assert (labels[1, len(whole[1].input_ids) :] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="loss_on"):
        encode_examples(tokenizer, EXAMPLES, 64, loss_on="prompt")


def test_truncation_keeps_the_same_rule(tokenizer: PreTrainedTokenizerBase) -> None:
    cut, report = encode_examples(tokenizer, EXAMPLES[:1], 16, loss_on="all")
    assert report.prompts_cut == 1 and len(cut[0].input_ids) == 16
    assert cut[0].labels == [IGNORE_INDEX] + cut[0].input_ids[1:]


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("rac", "never trains on the draft"),
        ("bash", "prompt is never changed"),
        ("scs", "BASH/SCS"),
    ],
)
def test_modes_that_refuse_the_whole_sequence(mode: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        TrainArgs(output_dir="x", mode=mode, predictions="p.jsonl", loss_on="all")
    assert TrainArgs(output_dir="x", loss_on="all").loss_on == "all"
