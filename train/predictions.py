"""Self-generated tokens for BASH, read from `generate`'s output and checked against the run.

Tokens made by another tokenizer, or by weights other than those this run starts from, would
silently teach the wrong thing; they are refused, as is a training example without tokens.
"""

from __future__ import annotations

from data_tools.interleave import align_free_running, response_positions
from data_tools.schema import DataError
from data_tools.sources import jsonl_objects
from data_tools.tokenization import Encoded


def load_predictions(
    path: str, train_set: list[Encoded], tokenizer_fp: str, model_fp: str
) -> dict[str, list[int]]:
    """The model's token at every response position of every training example, by id.

    Rows with "predictions" come from `generate --mode teacher_forced` (the default variant);
    rows with "generation_ids" from a free-running generation, aligned by position.
    """
    by_id = {e.id: e for e in train_set}
    out: dict[str, list[int]] = {}
    for where, row in jsonl_objects(path):
        for field, expected, what in (
            ("tokenizer_fingerprint", tokenizer_fp, "another tokenizer than this run's"),
            ("model_fingerprint", model_fp, "other weights than those this run starts from"),
        ):
            if row.get(field) != expected:
                raise DataError(
                    where,
                    field,
                    f"made with {what} ({row.get(field)} != {expected}); regenerate them",
                )
        example = by_id.get(row["id"])
        if example is None:
            continue  # predictions for examples this run does not train on
        if "predictions" in row:
            tokens = row["predictions"]
        elif "generation_ids" in row:
            tokens = align_free_running(example, row["generation_ids"])
        else:
            raise DataError(
                where, "predictions", "missing (neither predictions nor generation_ids)"
            )
        if len(tokens) != len(response_positions(example)):
            raise DataError(
                where,
                "predictions",
                f"{len(tokens)} tokens for {len(response_positions(example))} response positions",
            )
        out[row["id"]] = tokens
    missing = [e.id for e in train_set if e.id not in out]
    if missing:
        raise DataError(
            path,
            "id",
            f"no predictions for {len(missing)} training examples (first: {missing[:3]})",
        )
    return out
