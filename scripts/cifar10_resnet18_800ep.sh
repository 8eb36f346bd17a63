#!/usr/bin/env bash
# VI-SimSiam on CIFAR-10 with SimSiam's CIFAR recipe (Chen & He 2021, App. D): ResNet-18 with the
# CIFAR stem, 2-layer projector (2048), predictor 2048-512-2048, batch 512, SGD momentum 0.9,
# lr 0.03 x batch/256, weight decay 5e-4, cosine schedule (10 warmup epochs), 800 epochs.
#
#   DATA_DIR=./data scripts/cifar10_resnet18_800ep.sh                     # all local GPUs (or the CPU)
#   DATA_DIR=./data DOWNLOAD=1 scripts/cifar10_resnet18_800ep.sh          # fetch CIFAR-10 first
#   NPROC=4 scripts/cifar10_resnet18_800ep.sh --distribution none         # SimSiam baseline, 4 processes
#   scripts/cifar10_resnet18_800ep.sh --resume auto --output-dir runs/X   # continue a stopped run
#
# The global batch stays 512 whatever NPROC is. Arguments after the script name go to
# `vi-simsiam pretrain` and override the recipe. PYTHON picks the interpreter.
set -euo pipefail
PYTHON=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-./data}
NPROC=${NPROC:-$("$PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')}
download=()
if [ "${DOWNLOAD:-0}" = 1 ]; then download=(--download); fi

exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
    -m vi_simsiam pretrain --preset cifar10 --data-dir "$DATA_DIR" "${download[@]}" \
    --backbone resnet18_cifar --proj-layers 2 --dim 2048 --pred-dim 512 \
    --epochs 800 --batch-size 512 --lr 0.03 --weight-decay 5e-4 --warmup-epochs 10 \
    "$@"
