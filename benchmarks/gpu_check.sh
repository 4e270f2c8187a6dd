#!/usr/bin/env bash
# The GPU check of training speed (README, "Training on a GPU"): one prepared run of about
# 8 minutes on one H100/H200 class GPU, every figure streamed to $OUT (default
# results/gpu_check): the card, the host synchronisations of a device-resident step, the
# throughput table (benchmarks/train_throughput.py) of preset gpu_fast and nsff_pl's model
# per batch source, batch size and precision, the PSNR after the same rays at batch 512 and
# 4096, preset gpu_fast for about two minutes with its PSNR per quarter, compiled rows, and a
# compiled training step against the eager one.
#
#     bash benchmarks/gpu_check.sh            # PYTHON=python3 by default
set -uo pipefail
OUT=${OUT:-results/gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__)"
$PY benchmarks/train_throughput.py --device cuda --size 512x288 --frames 30 \
    --models gpu_fast nsff_pl --sync-check --compile-check \
    --rows gpu_fast:host:512:bf16:none gpu_fast:device:512:bf16:none \
    gpu_fast:device:4096:bf16:none gpu_fast:device:8192:bf16:none \
    gpu_fast:device:4096:fp32:none nsff_pl:host:512:bf16:none nsff_pl:device:512:bf16:none \
    nsff_pl:device:4096:bf16:none nsff_pl:device:8192:bf16:none nsff_pl:device:4096:fp32:none \
    --psnr-rays 2000000 --preset-seconds 120 \
    --late-rows gpu_fast:device:4096:bf16:fields nsff_pl:device:4096:bf16:fields \
    gpu_fast:device:4096:bf16:render \
    --steps 10 --warmup 3 --budget-seconds 400 --out "$OUT/rows.jsonl" 2>&1 | tee "$OUT/log.txt"
