#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for `hydra/launcher=slurm` and its tests.
#
# Installs Debian's slurm-wlm and munge if they are missing, writes /etc/slurm/slurm.conf
# for this one node from `slurmd -C` (its CPUs and memory), with no cgroups and no
# accounting (fit for a container; ganlab.sweeps.slurm reads job states from squeue), starts
# munged, slurmctld and slurmd, and waits until `sinfo` shows the node idle. Run as root.
# Running it again while the cluster is up changes nothing. scripts/slurm-down.sh stops it.
#
#   scripts/slurm-up.sh                     # SLURM_UP_TIMEOUT=60 seconds to wait for the node
#   scripts/slurm-up.sh --missing           # only prints the packages it would install (none: nothing)
set -euo pipefail

missing_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null ||
        echo "slurm-wlm munge"
}

if [[ "${1:-}" == "--missing" ]]; then
    missing_packages
    exit 0
fi

TIMEOUT=${SLURM_UP_TIMEOUT:-60}
CONF=/etc/slurm/slurm.conf
LOGS=/var/log/slurm

node_state() { sinfo -h -N -o %T 2>/dev/null | head -1 || true; }

show_node() { sinfo -N -l; }

if command -v sinfo >/dev/null && [[ "$(node_state)" =~ ^(idle|mixed|allocated) ]]; then
    echo "slurm-up: the cluster is already up"
    show_node
    exit 0
fi

if [[ $EUID -ne 0 ]]; then
    echo "slurm-up: run as root: it installs packages and starts munged, slurmctld and slurmd" >&2
    exit 1
fi

MISSING=$(missing_packages)
if [[ -n "$MISSING" ]]; then
    echo "slurm-up: installing $MISSING (apt-get)"
    apt-get update -qq
    # shellcheck disable=SC2086 # one word a package
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        $MISSING >/dev/null
fi

MARK="# One-node cluster written by scripts/slurm-up.sh"
if [[ -f "$CONF" ]] && ! grep -qF "$MARK" "$CONF"; then
    echo "slurm-up: $CONF exists and was not written by this script: leaving that cluster's config alone" >&2
    exit 1
fi

# The node as slurmd itself sees it, e.g. "NodeName=vm CPUs=2 ... RealMemory=24105".
NODE_LINE=$(slurmd -C | head -1)
NODE=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS"
cat >"$CONF.new" <<EOF
$MARK: no cgroups, no accounting.
ClusterName=ganlab
SlurmctldHost=$NODE
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
MpiDefault=none
# Processes tracked through /proc and no task binding: works inside a container.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
SchedulerType=sched/backfill
# Jobs share the node by CPUs and memory.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# Finished jobs stay visible to squeue for 5 minutes; a stopped job gets 30 s between SIGTERM and SIGKILL.
MinJobAge=300
KillWait=30
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
$NODE_LINE State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
sed -i "s/^NodeName=[^ ]*/NodeName=$NODE/" "$CONF.new"
if ! cmp -s "$CONF.new" "$CONF"; then
    mv "$CONF.new" "$CONF"
    echo "slurm-up: wrote $CONF for: $NODE_LINE"
else
    rm "$CONF.new"
fi

running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

if ! running /run/munge/munged.pid; then
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged
fi
munge -n | unmunge >/dev/null  # credentials work
running /run/slurmctld.pid || slurmctld
running /run/slurmd.pid || slurmd

for ((waited = 0; ; waited++)); do
    state=$(node_state)
    if [[ "$state" =~ ^(idle|mixed|allocated) ]]; then
        break
    fi
    if [[ "$state" =~ ^(down|drain) ]]; then  # left down or drained by an earlier run
        scontrol update nodename="$NODE" state=resume 2>/dev/null || true
    fi
    if ((waited >= TIMEOUT)); then
        echo "slurm-up: the node did not become idle within ${TIMEOUT}s (state: ${state:-no answer from slurmctld})." >&2
        echo "slurm-up: last lines of $LOGS/slurmctld.log and $LOGS/slurmd.log:" >&2
        tail -n 15 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
        exit 1
    fi
    sleep 1
done
show_node
