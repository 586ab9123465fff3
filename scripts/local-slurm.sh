#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for testing profiles/slurm for real (tests/test_slurm.py, .ci/run).
#
#   bash scripts/local-slurm.sh start     # installs Debian's munge/slurmctld/slurmd/slurm-client if missing
#   snakemake --profile profiles/slurm --slurm-no-account --slurm-status-command squeue ...
#   bash scripts/local-slurm.sh stop
#
# The node pretends to be a GPU node of a real cluster so that the profile's requests reach sbatch unchanged:
# partitions `cpu` and `gpu` (the profile's placeholders), 16 CPUs and 2 GPUs (GRES backed by /dev/null and
# /dev/zero: jobs get the allocation but no device, so our code falls back to the CPU), although the machine may have
# 2 cores (SlurmdParameters=config_overrides). Memory is not a consumable resource (CR_CPU), so --mem is
# checked against RealMemory but does not limit how many jobs run at once.
# No accounting database: job completions go to a text file (jobcomp/filetxt), job status comes from
# squeue (MinJobAge keeps finished jobs visible for an hour), so use `--slurm-status-command squeue`.
# No cgroups (containers rarely allow them): proctrack/linuxproc, task/none.
# Runs as root (CI and this dev machine). The configuration goes where every Slurm command and job step
# looks for it, /etc/slurm/ (jobs do not inherit SLURM_CONF: `srun` inside a job then fails), and is
# never written over one this script did not write; state and logs live in $SEGVOL_SLURM_DIR
# (default /tmp/segvol-slurm).
set -euo pipefail

STATE=${SEGVOL_SLURM_DIR:-/tmp/segvol-slurm}
CONF=/etc/slurm/slurm.conf
GRES=/etc/slurm/gres.conf
MARK="# Written by scripts/local-slurm.sh"
NODE=localhost

die() { echo "local-slurm: error: $*" >&2; exit 2; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return
    [ "$(id -u)" = 0 ] || die "Slurm is not installed and installing it needs root (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # policy-rc.d may refuse to start the packaged services; we start our own daemons below anyway.
    apt-get install -y -q --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null
}

write_config() {
    mkdir -p "$STATE"/{spool/ctld,spool/d,log,run} /etc/slurm
    for file in "$CONF" "$GRES"; do
        if [ -s "$file" ] && ! grep -qF "$MARK" "$file"; then
            die "$file exists and was not written by this script: is this a real Slurm host?"
        fi
    done
    cat >"$CONF" <<EOF
$MARK: a one-node test cluster on localhost.
ClusterName=segvol-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=${SEGVOL_SLURMCTLD_PORT:-16817}
SlurmdPort=${SEGVOL_SLURMD_PORT:-16818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
MinJobAge=3600
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=16 RealMemory=64000 Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
    # Slurm wants a character device per GPU; two harmless ones stand in (nothing opens them).
    { echo "$MARK"; printf 'NodeName=%s Name=gpu File=%s\n' "$NODE" /dev/null "$NODE" /dev/zero; } >"$GRES"
}

start_munge() {
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
}

wait_for_node() {
    for _ in $(seq 60); do
        if sinfo -h -N -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then return; fi
        sleep 1
    done
    tail -20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
    die "the node did not come up within 60 s (logs above, in $STATE/log)"
}

start() {
    install_packages
    write_config
    start_munge
    if ! scontrol ping 2>/dev/null | grep -q UP; then
        # -c: a test cluster starts without the jobs and node states of an earlier run
        /usr/sbin/slurmctld -f "$CONF" -c -i
    fi
    pgrep -F "$STATE/run/slurmd.pid" >/dev/null 2>&1 || /usr/sbin/slurmd -f "$CONF" -N "$NODE"
    wait_for_node
    echo "local Slurm is up (partitions cpu and gpu; configuration in $CONF)"
}

stop() {
    for daemon in slurmd slurmctld; do
        local pidfile=$STATE/run/$daemon.pid pid
        pid=$(cat "$pidfile" 2>/dev/null) || continue
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        fi
        rm -f "$pidfile"
    done
    # munged stays: other software on the machine may use it, and it holds no job state.
    echo "local Slurm stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) die "usage: $0 start|stop" ;;
esac
