"""Data for training and generation: loading, prompts, label masks, scoring, the synthetic task."""
