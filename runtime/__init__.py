"""What `train` and `generate` share at run time: config parsing, processes, models, DeepSpeed."""
