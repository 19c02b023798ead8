"""The `train` entrypoint (`python -m train`, `deepspeed --module train`) and its parts."""
