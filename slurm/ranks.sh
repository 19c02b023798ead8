#!/usr/bin/env bash
# Inside a SLURM job: start `python -m MODULE ARGS...` once per task of the allocation (one task
# per GPU; on CPUs, per process), through srun, each task with the variables torch.distributed
# reads, derived from SLURM's:
#   RANK=$SLURM_PROCID  LOCAL_RANK=$SLURM_LOCALID  WORLD_SIZE=$SLURM_NTASKS
#   MASTER_ADDR=the job's first node  MASTER_PORT=20000 + job id % 10000 (one per job)
# Rank r writes to $JOB_LOGS/<job name>-<job id>.rank<r>.log (appended to by a requeued run).
# Exits with srun's status: the highest of the ranks'. With STAGE_TIMES set (by
# slurm/submit_pipeline.py), a successful run appends "<job name> <seconds>" to that file.
#
#   slurm/ranks.sh train --config my.yaml      (what slurm/train.sbatch runs)
set -euo pipefail
# JOB_SETUP: a file of environment setup (module load, venv activation), which may read unset
# variables.
if [[ -n ${JOB_SETUP:-} ]]; then set +u; source "$JOB_SETUP"; set -u; fi
logs=${JOB_LOGS:-logs/slurm}
mkdir -p "$logs"
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR MASTER_PORT=$((20000 + SLURM_JOB_ID % 10000))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $SLURM_NTASKS ranks on" \
    "$SLURM_JOB_NODELIST, master $MASTER_ADDR:$MASTER_PORT, rank logs $logs/"
# srun does not pass --cpus-per-task on by itself (SLURM 22.05). A crashed rank leaves the
# others waiting in a collective: they are ended 5 minutes after the first rank ends, which
# leaves rank 0 time to finish (export, wandb) after the others.
# SIGTERM or SIGUSR1 sent to this script goes on to every rank, through scancel (every step of
# this job, not the batch script): srun passes SIGUSR1 on, but on SIGTERM it ends its job step
# (SIGKILL, KillWait seconds later), which would leave the ranks no time to save their work.
source slurm/signals.sh
relay() { scancel --signal="$1" "$SLURM_JOB_ID"; }
forward srun --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --kill-on-bad-exit=0 --wait=300 \
    --open-mode=append --output="$logs/%x-%j.rank%t.log" \
    bash -c 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS
             exec python -m "$@"' rank "$@"
if [[ -n ${STAGE_TIMES:-} ]]; then echo "$SLURM_JOB_NAME $SECONDS" >>"$STAGE_TIMES"; fi
