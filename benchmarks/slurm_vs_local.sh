#!/usr/bin/env bash
# Wall time of the tiny demo (one synthetic:tiny scene, train preset tiny, split test) run
# locally with `--cores all` and through SLURM on the CI-style single-node cluster
# (.ci/slurm_up.sh GPUS CPUS; 3 fake GPUs and 12 declared CPUs unless given), as a table.
# Needs root (it brings the cluster up and always down again) and the project's venv active.
#   bash benchmarks/slurm_vs_local.sh [GPUS CPUS]
set -euo pipefail
cd "$(dirname "$0")/.."
gpus=${1:-3} cpus=${2:-12}
out=$(mktemp -d)
trap 'bash .ci/slurm_down.sh >/dev/null 2>&1 || true; rm -rf "$out"' EXIT

wall() { sed -n 's/^slurm_demo: .* wall time \([0-9.]*\) s.*/\1/p' "$1"; }

echo "local run (--cores all, $(nproc) CPUs) ..."
python .ci/slurm_demo.py --local >"$out/local.txt" 2>&1 || { cat "$out/local.txt"; exit 1; }

echo "SLURM run ($gpus fake GPUs, $cpus declared CPUs) ..."
t0=$(date +%s%N)
bash .ci/slurm_up.sh "$gpus" "$cpus" >"$out/up.txt" 2>&1 || { cat "$out/up.txt"; exit 1; }
up_s=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { print (b - a) / 1e9 }')
python .ci/slurm_demo.py >"$out/slurm.txt" 2>&1 || { cat "$out/slurm.txt"; exit 1; }
bash .ci/slurm_down.sh >/dev/null

grep -v '^slurm_demo: timeout' "$out/slurm.txt" | sed -n '/^ *job /,/SLURM jobs;/p'
jobs=$(sed -n 's/^slurm_demo: \([0-9]*\) SLURM jobs;.*/\1/p' "$out/slurm.txt")
local_s=$(wall "$out/local.txt") slurm_s=$(wall "$out/slurm.txt")
echo
echo "| run | jobs | wall time (s) |"
echo "| --- | --- | --- |"
printf "| local, --cores all | 12 local | %.1f |\n" "$local_s"
printf "| SLURM, --workflow-profile profiles/slurm, first status check after 5 s | %s SLURM + 2 local | %.1f |\n" \
    "$jobs" "$slurm_s"
printf "| (cluster start, slurm_up.sh %s %s) | | %.1f |\n" "$gpus" "$cpus" "$up_s"
awk -v s="$slurm_s" -v l="$local_s" 'BEGIN { printf "SLURM / local: %.2fx\n", s / l }'
