"""The embedded tokenizer keeps the strings it is given as one token each: RAC's marker and
confirmation, which its training text does not hold."""

from __future__ import annotations

from data_tools.scoring import CONFIRMATION
from data_tools.synthetic_math import Difficulty, make_splits
from data_tools.tokenization import response_ids
from data_tools.tokenizer_training import train_tokenizer
from methods.correction import CORRECTION_MARKER


def test_symbols_are_one_token_each(tmp_path) -> None:
    rows = make_splits({"train": 300}, Difficulty(), seed=0)["train"]
    texts = [row[k] for row in rows for k in ("question", "answer")]
    plain = train_tokenizer(texts, tmp_path / "plain")
    kept = train_tokenizer(texts, tmp_path / "kept", symbols=["Correction:", CONFIRMATION])
    # The confirmation as RAC's samples tokenize it (a response of its own), and the marker.
    assert len(response_ids(plain, [CONFIRMATION])[0]) > 5  # one- and two-character pieces
    (confirmation,) = response_ids(kept, [CONFIRMATION])
    assert kept.convert_ids_to_tokens(confirmation) == [CONFIRMATION]
    marker = kept(CORRECTION_MARKER, add_special_tokens=False)["input_ids"]
    assert kept.convert_ids_to_tokens(marker)[-3:] == ["\n", "Correction:", "\n"]
    assert kept.decode(confirmation) == CONFIRMATION
