"""The comparison pipeline: SFT, self-generated tokens, BASH / RAC / SCS training, evaluation."""
