#!/usr/bin/env bash
# One GPU's figures for bench/RESULTS.md in one process, ended by `timeout` within 8 minutes
# (the JSON keeps every phase finished by then): peak bf16 matmul, ZeRO-2 training tokens/s and
# MFU of a ~1B Llama (sdpa vs eager, gradient checkpointing off/on), generation tokens/s (static
# and continuous batching), BASH's teacher-forced pass, peak memory. See bench/gpu_check.py.
#
#   bench/gpu_check.sh [--output FILE.json] [--size tiny] [other bench.gpu_check options]
#
# Plain `python`: runtime.distributed.init() makes the one-process group itself.
# GPU_CHECK_TIMEOUT (seconds, default 465) shortens the limit; the kill follows 10 s later.
set -euo pipefail
cd "$(dirname "$0")/.."
export TOKENIZERS_PARALLELISM=false
output="runs/gpu_check/$(date +%Y%m%d-%H%M%S).json"
exec timeout --kill-after=10 "${GPU_CHECK_TIMEOUT:-465}" \
    python -m bench.gpu_check --size 1b --output "$output" "$@"
