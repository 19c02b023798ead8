"""The label-mask inspector: exact marks on a hand-made sample, and BASH's batch from the CLI."""

from __future__ import annotations

import json

from data_tools.atomic import write_jsonl
from data_tools.schema import Example
from data_tools.tokenization import Encoded, encode_examples
from runtime.fingerprint import tokenizer_fingerprint
from tests.launch import run
from tests.models import MODELS
from train.inspect import mark_tokens, render


def test_marks_of_a_known_sample(tokenizer):
    e = Example("k1", "How many apples?", "#### 12", "math", "x.jsonl:1")
    built = encode_examples(tokenizer, [e], 64)[0][0]
    response = tokenizer("#### 12", add_special_tokens=False)["input_ids"]
    n_prompt = len(built.input_ids) - len(response) - 1
    kinds = [m.kind for m in mark_tokens(built)]
    assert kinds == ["masked"] * n_prompt + ["trained"] * (len(response) + 1)
    assert mark_tokens(built)[-1].input_id == tokenizer.eos_token_id  # EOS trained

    # BASH: the model's token at the second response position; the target stays the reference.
    model_token = next(t for t in range(5, 50) if t != built.input_ids[n_prompt + 1])
    mixed = list(built.input_ids)
    mixed[n_prompt + 1] = model_token
    marks = mark_tokens(built, Encoded(e.id, mixed, built.labels))
    assert [m.kind for m in marks][n_prompt : n_prompt + 3] == ["trained", "replaced", "trained"]
    replaced = marks[n_prompt + 1]
    assert (replaced.input_id, replaced.label) == (model_token, built.input_ids[n_prompt + 1])
    line = render(tokenizer, marks).splitlines()[n_prompt + 1]
    assert line.split()[:3] == [str(n_prompt + 1), "replaced", str(model_token)]
    assert f"reference {built.input_ids[n_prompt + 1]} " in line


def test_cli_shows_the_bash_batch(tmp_path, tokenizer):
    """p = 1 with every prediction token 5: each trained position whose reference is not 5 is
    replaced by 5, with the reference kept as the target."""
    rows = [
        {"id": f"e{i}", "question": f"Tom has {i} apples. How many?", "answer": f"#### {i}"}
        for i in range(4)
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "tiny.json").write_text(json.dumps(MODELS["llama-64"]))
    examples = [Example(r["id"], r["question"], r["answer"], "math") for r in rows]
    encoded = encode_examples(tokenizer, examples, 64)[0]
    fingerprint = tokenizer_fingerprint(tokenizer)
    predictions = [
        {
            "id": e.id,
            "predictions": [5] * e.num_trained,
            "tokenizer_fingerprint": fingerprint,
            "model_fingerprint": "new",
        }
        for e in encoded
    ]
    write_jsonl(tmp_path / "pred.jsonl", predictions)
    args = [
        *("--model_config", str(tmp_path / "tiny.json"), "--tokenizer", str(tmp_path / "tok")),
        *("--data", str(tmp_path / "train.jsonl"), "--output_dir", str(tmp_path / "never")),
        *("--mode", "bash", "--predictions", str(tmp_path / "pred.jsonl"), "--ss_p_max", "1"),
        *("--micro_batch_size", "2", "--n", "1", "--step", "3"),
    ]
    text = run("train.inspect", args).stdout
    header = next(line for line in text.splitlines() if line.startswith("== "))
    sample = next(e for e in encoded if header.startswith(f"== {e.id}:"))
    lines = [line.split() for line in text.splitlines() if line[:5].strip().isdigit()]
    assert len(lines) == len(sample.input_ids)
    for (position, kind, token, *rest), label in zip(lines, sample.labels, strict=True):
        if label == -100:
            assert kind == "masked" and int(token) == sample.input_ids[int(position)]
        elif label == 5:
            assert kind == "trained"
        else:
            assert kind == "replaced" and int(token) == 5 and f"{label}" in rest
    assert "p = 1" in text and not (tmp_path / "never").exists()
