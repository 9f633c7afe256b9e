#!/usr/bin/env bash
# Stops the one-node SLURM cluster of scripts/slurm-up.sh: slurmd, slurmctld, then munged.
# Jobs still queued or running are cancelled first. Stopping a cluster that is not up is a no-op.
set -uo pipefail

stop() {  # stop the daemon of a pid file and wait (up to 30 s) until it is gone
    local pidfile=$1 pid
    [[ -f "$pidfile" ]] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
    fi
    rm -f "$pidfile"
}

if [[ -f /run/slurmctld.pid ]] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; then
    scancel --quiet --user="$(id -un)" 2>/dev/null || true
fi
stop /run/slurmd.pid
stop /run/slurmctld.pid
stop /run/munge/munged.pid
echo "slurm-down: slurmd, slurmctld and munged stopped"
