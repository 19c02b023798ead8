"""Batched generation over ranks (`python -m generate`), and scoring (`python -m generate.score`)."""
