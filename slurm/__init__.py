"""SLURM: batch scripts for train and generate, the pipeline as dependent jobs, and a two-node
cluster on one machine for the tests (see slurm/README.md)."""
