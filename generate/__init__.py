"""Batched generation over ranks (`python -m generate`), scoring and judging
(`python -m generate.score`), and the exposure-bias measure (`python -m generate.exposure_bias`)."""
