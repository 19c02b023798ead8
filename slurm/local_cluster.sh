#!/usr/bin/env bash
# A real two-node SLURM cluster on this one machine, for the tests and CI (as root):
# munged, slurmctld, and two slurmd daemons emulating the nodes node1 and node2 (2 CPUs each),
# with every file (config, key, state, logs, pid files) in a scratch folder.
#
#   slurm/local_cluster.sh start SCRATCH    # then: export SLURM_CONF=SCRATCH/slurm.conf
#   slurm/local_cluster.sh stop SCRATCH     # cancels the jobs left, stops the daemons
#
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge). The node names are
# added to /etc/hosts (loopback) when they do not resolve: jobs use them as MASTER_ADDR.
set -euo pipefail

usage="usage: $0 start|stop SCRATCH"
action=${1:?$usage}
scratch=$(realpath -m "${2:?$usage}")
export SLURM_CONF=$scratch/slurm.conf
nodes=(node1 node2)

stop_daemon() {  # stop_daemon PIDFILE: TERM, then KILL if it is still there after 10 s
    local pid
    [[ -f $1 ]] || return 0
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    if [[ -f $scratch/ctld.pid ]] && squeue -h -o %i >/dev/null 2>&1; then
        # Jobs' processes outlive slurmd: end them first.
        squeue -h -o %i | xargs -r scancel
        for _ in $(seq 60); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.5; done
    fi
    for node in "${nodes[@]}"; do stop_daemon "$scratch/slurmd.$node.pid"; done
    stop_daemon "$scratch/ctld.pid"
    stop_daemon "$scratch/munge/munged.pid"
}

fail() {  # fail MESSAGE: say why, with the end of the daemons' logs, stop what started
    echo "local_cluster: $1" >&2
    tail -n 20 "$scratch"/log/*.log "$scratch"/munge/munged.log >&2 2>/dev/null || true
    stop
    exit 1
}

start() {
    for tool in munged slurmctld slurmd sinfo; do
        command -v "$tool" >/dev/null || fail "$tool not found: apt-get install slurm-wlm munge"
    done
    [[ $(id -u) == 0 ]] || fail "run as root (slurmd starts the jobs' processes)"
    mkdir -p "$scratch"/{state,log,munge,spool/node1,spool/node2}
    chmod 700 "$scratch/munge"
    for node in "${nodes[@]}"; do
        getent hosts "$node" >/dev/null || echo "127.0.0.1 $node" >>/etc/hosts
    done

    dd if=/dev/urandom of="$scratch/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$scratch/munge/munge.key"
    munged --force --key-file="$scratch/munge/munge.key" \
        --socket="$scratch/munge/munge.socket" --pid-file="$scratch/munge/munged.pid" \
        --log-file="$scratch/munge/munged.log" --seed-file="$scratch/munge/munged.seed" \
        || fail "munged did not start"

    local host
    host=$(hostname -s)
    cat >"$SLURM_CONF" <<EOF
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
# A requeued job may start again after cred_expire seconds (default 120).
AuthInfo=socket=$scratch/munge/munge.socket,cred_expire=5
SlurmUser=root
StateSaveLocation=$scratch/state
SlurmdSpoolDir=$scratch/spool/%n
SlurmctldPidFile=$scratch/ctld.pid
SlurmdPidFile=$scratch/slurmd.%n.pid
SlurmctldLogFile=$scratch/log/ctld.log
SlurmdLogFile=$scratch/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
# Finished jobs stay visible to scontrol (there is no accounting database for sacct).
MinJobAge=3600
# A small cluster: look at pending jobs (dependencies, begin times) every second.
SchedulerParameters=sched_interval=1,bf_interval=1
KillWait=10
NodeName=node[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=17001-17002 CPUs=2 RealMemory=4000 State=UNKNOWN
# No oversubscription: at most 4 one-CPU tasks at once, which bounds the memory they take.
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    slurmctld || fail "slurmctld did not start"
    for node in "${nodes[@]}"; do slurmd -N "$node" || fail "slurmd -N $node did not start"; done
    for _ in $(seq 120); do
        [[ $(sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l) == 2 ]] && return 0
        sleep 0.5
    done
    fail "the nodes are not idle after 60 s: $(sinfo -N 2>&1)"
}

case $action in
    start) start ;;
    stop) stop ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
