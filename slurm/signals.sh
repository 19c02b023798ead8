# Sourced by the batch scripts and slurm/ranks.sh.
#
# `forward CMD ARGS...` runs CMD and returns its status, passing on the SIGTERM and SIGUSR1 this
# shell gets (`scancel --batch` or `--full`, `--signal=B:...`) with `relay SIGNAL PID`: bash runs
# no trap while a command runs in the foreground, and a shell without a trap dies at once,
# leaving CMD running. So CMD runs in the background, and the shell waits again after each
# signal until CMD has ended.
relay() { kill -s "$1" "$2" 2>/dev/null; }

forward() {
    "$@" &
    local child=$! status
    trap "relay TERM $child" TERM
    trap "relay USR1 $child" USR1
    while true; do
        wait "$child" && status=0 || status=$?
        kill -0 "$child" 2>/dev/null || return "$status"
    done
}

# `requeue_if_stopped STATUS`: 75 is the status of a run that stopped on request (SIGTERM,
# SIGUSR1) after saving its work (runtime/stopping.py): put this job back in the queue, where it
# resumes. A job that is being cancelled or has reached its time limit is not requeued (scontrol
# says why).
requeue_if_stopped() {
    if (($1 == 75)); then
        echo "stopped on request with its work saved: requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID" || true
    fi
}
