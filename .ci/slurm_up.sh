#!/usr/bin/env bash
# A throw-away single-node SLURM cluster for CI and for trying profiles/slurm on one machine
# (Debian 12, run as root, no systemd needed).
#
#   bash .ci/slurm_up.sh GPUS CPUS [MEM_MB]     e.g. bash .ci/slurm_up.sh 3 12
#   bash .ci/slurm_down.sh                      stops everything this script started
#
# GPUS    fake GPUs (gres gpu) the node declares; 0 = a GPU-less cluster
# CPUS    CPUs the node declares (may exceed the real count: SlurmdParameters=config_overrides)
# MEM_MB  memory the node declares (default 65536; it is bookkeeping only, nothing is enforced)
#
# Partitions: `cpu` (default) and `gpu`, both on this one node, as profiles/slurm expects.
# Installs munge and slurm-wlm with apt-get when they are missing. Safe to rerun: a running
# cluster started by this script is stopped first. On any failure it stops what it started.
# Environment: FAKE_GPU_PLAIN_FILES=1 uses plain files instead of character devices for the
# fake GPUs (what it falls back to by itself where mknod is not allowed).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
die() { echo "slurm_up: error: $*" >&2; exit 1; }
say() { echo "slurm_up: $*"; }

[[ $# -ge 2 && $# -le 3 ]] || die "usage: $0 GPUS CPUS [MEM_MB]"
gpus=$1 cpus=$2 mem=${3:-65536}
for v in "$gpus" "$cpus" "$mem"; do
    [[ $v =~ ^[0-9]+$ ]] || die "GPUS, CPUS and MEM_MB must be non-negative integers, got '$v'"
done
((cpus >= 1)) || die "CPUS must be at least 1"
((mem >= 100)) || die "MEM_MB must be at least 100"
[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts munged/slurmd)"

host=$(hostname -s)
conf_dir=/etc/slurm
marker="# written by .ci/slurm_up.sh (nsff-workflow): a throw-away single-node cluster"
fake_dir=/var/lib/nsff-slurm-ci # plain-file fake GPUs (fallback)
log_dir=/var/log/slurm

# --- failure path: never leave daemons behind ------------------------------------------------
ok=0
on_exit() {
    local rc=$?
    if [[ $ok -ne 1 ]]; then
        echo "slurm_up: FAILED (exit $rc); logs:" >&2
        for f in "$log_dir/slurmctld.log" "$log_dir/slurmd.log"; do
            [[ -f $f ]] && { echo "--- tail $f" >&2; tail -n 20 "$f" >&2; }
        done
        echo "slurm_up: stopping what was started" >&2
        bash "$here/slurm_down.sh" >&2 || true
    fi
}
trap on_exit EXIT

# --- 1. packages ------------------------------------------------------------------------------
need=()
for cmd in munged munge unmunge slurmctld slurmd sinfo srun sbatch squeue scontrol scancel; do
    command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if ((${#need[@]})); then
    say "installing munge and slurm-wlm (missing: ${need[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends munge slurm-wlm slurmctld slurmd slurm-client \
        >/dev/null || die "apt-get install munge slurm-wlm failed"
fi
id munge >/dev/null 2>&1 || die "user 'munge' does not exist (the munge package creates it)"

# --- 2. a clean start: stop a cluster this script started before ---------------------------
bash "$here/slurm_down.sh" --quiet || die "could not stop a cluster that is already running (see above)"

# --- 3. munge -------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
for _ in $(seq 50); do [[ -S /run/munge/munge.socket.2 ]] && break; sleep 0.1; done
munge -n | unmunge >/dev/null || die "munge does not work: 'munge -n | unmunge' failed"

# --- 4. fake GPUs -----------------------------------------------------------------------------
gpu_files=()
plain=${FAKE_GPU_PLAIN_FILES:-0}
for ((i = 0; i < gpus; i++)); do
    dev=/dev/fakegpu$i
    if [[ $plain != 1 ]]; then
        [[ -e $dev && ! -c $dev ]] && rm -f "$dev"
        if [[ -c $dev ]] || mknod -m 0666 "$dev" c 1 3 2>/dev/null; then
            gpu_files+=("$dev")
            continue
        fi
        say "mknod $dev is not allowed here: using plain files as fake GPUs"
        plain=1
    fi
    mkdir -p "$fake_dir"
    : >"$fake_dir/fakegpu$i"
    gpu_files+=("$fake_dir/fakegpu$i")
done

# --- 5. configuration ---------------------------------------------------------------------------
mkdir -p "$conf_dir" /var/spool/slurmctld /var/spool/slurmd "$log_dir"
if [[ -f $conf_dir/slurm.conf ]] && ! grep -qF "$marker" "$conf_dir/slurm.conf"; then
    backup=$conf_dir/slurm.conf.before-ci.$(date +%s)
    say "keeping the existing $conf_dir/slurm.conf as $backup"
    mv "$conf_dir/slurm.conf" "$backup"
    [[ -f $conf_dir/gres.conf ]] && mv "$conf_dir/gres.conf" "$conf_dir/gres.conf.before-ci.$(date +%s)"
fi
gres=""
((gpus > 0)) && gres="Gres=gpu:$gpus"
cat >"$conf_dir/slurm.conf" <<EOF
$marker
ClusterName=ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$log_dir/slurmctld.log
SlurmdLogFile=$log_dir/slurmd.log
# no cgroups, no accounting daemon
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# finished jobs stay visible to squeue for 10 minutes (the SLURM profile polls with squeue)
MinJobAge=600
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
GresTypes=gpu
# declare more CPUs/GPUs/memory than the machine has
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $gres State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host Default=NO MaxTime=INFINITE State=UP
EOF
{
    echo "$marker"
    for f in "${gpu_files[@]}"; do echo "NodeName=$host Name=gpu File=$f"; done
} >"$conf_dir/gres.conf"

# --- 6. daemons -------------------------------------------------------------------------------
/usr/sbin/slurmctld -c || die "slurmctld did not start"
/usr/sbin/slurmd || die "slurmd did not start"

state=""
for ((t = 0; t < 60; t++)); do
    state=$(sinfo -h -n "$host" -p cpu -o %T 2>/dev/null | head -n1 || true)
    case $state in
    idle | mixed | allocated) break ;;
    *drain* | *inval* | down* | *fail*)
        scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
[[ $state =~ ^(idle|mixed|allocated)$ ]] ||
    die "node $host did not become idle within 30 s (state '$state'; $(scontrol show node "$host" 2>/dev/null | grep -o 'Reason=.*' || true))"

# --- 7. smoke test ------------------------------------------------------------------------------
timeout 60 srun -N1 -n1 --mem=10 -t 1 true || die "smoke test 'srun -N1 -n1 --mem=10 true' failed"
if ((gpus > 0)); then
    # shellcheck disable=SC2016
    seen=$(timeout 60 srun -p gpu -n1 --mem=10 -t 1 --gpus=1 \
        sh -c 'echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset} SLURM_STEP_GPUS=${SLURM_STEP_GPUS-unset}"') ||
        die "smoke test 'srun -p gpu --gpus=1' failed"
    say "a --gpus=1 job step got $seen"
fi

ok=1
kind="char devices"
[[ $plain == 1 ]] && kind="plain files"
say "up: node $host, partitions cpu (default) and gpu, $cpus CPUs, $mem MB, $gpus fake GPUs ($kind)"
sinfo
