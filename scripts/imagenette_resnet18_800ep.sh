#!/usr/bin/env bash
# VI-SimSiam on Imagenette (fast.ai's 10 easy ImageNet classes, 9469 training / 3925 validation images)
# in the setting of lightly's Imagenette benchmark, where SimSiam reaches kNN top-1 0.872 (k = 20):
# ResNet-18 with the ImageNet stem at 128 px (the 160 px archive holds enough pixels for that),
# 2-layer projector (2048), predictor 2048-512-2048, batch 256, SGD momentum 0.9, lr 0.06 x batch/256
# (SimSiam's CIFAR step size: 0.03 per 256 at batch 512), weight decay 5e-4, cosine schedule
# (10 warmup epochs), 800 epochs, bf16 autocast on GPUs with the loss in float32.
# Why 128 px and ResNet-18: lightly's benchmark reports SimSiam and a dozen other SSL methods in exactly
# this setting, so a run can be set beside them; and an epoch is 37 steps, so 800 epochs (30k steps)
# take hours on one GPU, not days.
#
#   DATA_DIR=./data/imagenette2-160 scripts/imagenette_resnet18_800ep.sh  # the extracted archive
#   DATA_DIR=./data DOWNLOAD=1 scripts/imagenette_resnet18_800ep.sh       # fetch imagenette2-160.tgz into ./data
#   scripts/imagenette_resnet18_800ep.sh --distribution none              # SimSiam baseline
#   scripts/imagenette_resnet18_800ep.sh --resume auto --output-dir runs/X   # continue a stopped run
#
# Nothing is downloaded without DOWNLOAD=1 (--download). The global batch stays 256 whatever NPROC is.
# Arguments after the script name go to `vi-simsiam pretrain` and override the recipe. PYTHON picks
# the interpreter.
set -euo pipefail
PYTHON=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-./data/imagenette2-160}
NPROC=${NPROC:-$("$PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')}
download=()
if [ "${DOWNLOAD:-0}" = 1 ]; then download=(--download); fi

exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
    -m vi_simsiam pretrain --preset imagenette --data-dir "$DATA_DIR" "${download[@]}" \
    --image-size 128 --backbone resnet18 --proj-layers 2 --dim 2048 --pred-dim 512 \
    --epochs 800 --batch-size 256 --lr 0.06 --weight-decay 5e-4 --warmup-epochs 10 --knn-k 20 \
    "$@"
