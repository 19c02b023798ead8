"""The methods against exposure bias, one module each; `train` has one loop for all of them,
and a method only changes how a batch is built:

- `scheduled_sampling`: BASH (the model's tokens made offline) and SCS (made online), the
  schedule of how many of them enter the context, and the interleaving;
- `correction`: RAC, samples of prompt, the model's own draft, a marker and the reference, and
  the self-correcting generation step that uses them at inference.
"""
