#!/usr/bin/env bash
# The embedded default, end to end on a machine without GPU or internet: a synthetic math task,
# a tokenizer trained on it, SFT of a small Llama from scratch with 2 processes under DeepSpeed
# ZeRO-2, greedy generation on held-out problems, and their exact-match accuracy.
# Rerun after a crash: training resumes from its latest checkpoint, generation from its parts.
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${NPROC:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false WANDB_MODE=${WANDB_MODE:-offline}

python -m data_tools.synthetic_math --output_dir runs/demo/data --train 20000 --validation 500 --test 500
python -m data_tools.tokenizer_training --data runs/demo/data/train.jsonl --output_dir runs/demo/tokenizer
deepspeed --num_gpus "$NPROC" --module train --config configs/sft_demo.yaml "$@"
deepspeed --num_gpus "$NPROC" --module generate --config configs/generate_demo.yaml
python -m generate.score --generations runs/demo/sft/test_generations.jsonl --task math
