#!/usr/bin/env bash
# Stop the single-node SLURM cluster of .ci/slurm_up.sh: cancel its jobs, then stop slurmd,
# slurmctld and munged, in that order, by their PID files, and wait until each has exited.
# Safe to run at any time (nothing running = nothing to do). Kills nothing by name.
#   bash .ci/slurm_down.sh [--quiet]
set -euo pipefail

quiet=0
[[ ${1:-} == --quiet ]] && quiet=1
say() { ((quiet)) || echo "slurm_down: $*"; }
[[ $(id -u) -eq 0 ]] || { echo "slurm_down: error: must run as root" >&2; exit 1; }

alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null && [[ $(ps -o stat= -p "$1" 2>/dev/null) != Z* ]]; }

# stop NAME PIDFILE: TERM, wait up to 20 s, then KILL; only if the pid is really NAME
stop() {
    local name=$1 pidfile=$2 pid comm
    [[ -f $pidfile ]] || return 0
    pid=$(tr -dc 0-9 <"$pidfile")
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    if alive "$pid" && [[ $comm == "$name" ]]; then
        say "stopping $name (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 200); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then
            say "$name (pid $pid) ignored SIGTERM for 20 s: SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
            for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
        fi
        alive "$pid" && { echo "slurm_down: error: $name (pid $pid) is still running" >&2; return 1; }
    fi
    rm -f "$pidfile"
}

# 1. cancel the jobs while slurmctld still runs, and give their steps time to end
ctld_pid=$(tr -dc 0-9 2>/dev/null </run/slurmctld.pid || true)
if alive "$ctld_pid" && command -v scancel >/dev/null; then
    jobs=$(timeout 10 squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
        say "cancelling jobs: $(echo $jobs)"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for _ in $(seq 40); do
            [[ -z $(timeout 10 squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING -o %i 2>/dev/null || true) ]] && break
            sleep 0.5
        done
    fi
fi

# 2. the daemons, in order (slurmctld's slurmscriptd child exits with it)
rc=0
stop slurmd /run/slurmd.pid || rc=1
stop slurmctld /run/slurmctld.pid || rc=1
stop munged /run/munge/munged.pid || rc=1

# 3. the fake GPUs of slurm_up.sh
rm -f /dev/fakegpu[0-9]* 2>/dev/null || true
rm -rf /var/lib/nsff-slurm-ci

# 4. report anything left (zombies excluded: a daemonised munged can leave one when PID 1 does
# not reap; it holds nothing)
left=$(ps -eo pid=,stat=,comm= | awk '$2 !~ /^Z/ && $3 ~ /^(slurmctld|slurmd|slurmstepd|slurmscriptd|munged)$/')
if [[ -n $left ]]; then
    echo "slurm_down: warning: still running (not started from these PID files?):" >&2
    echo "$left" >&2
    rc=1
fi
((rc == 0)) && say "down"
exit $rc
