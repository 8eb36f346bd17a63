#!/usr/bin/env bash
# VI-SimSiam on Imagewoof (fast.ai's 10 ImageNet dog breeds, 9025 training / 3929 validation images):
# the Imagenette recipe unchanged (scripts/imagenette_resnet18_800ep.sh says why), so the two sets
# differ only in how hard their classes are to tell apart: ResNet-18 (ImageNet stem) at 128 px from
# the 160 px archive, 2-layer projector (2048), predictor 2048-512-2048, batch 256, SGD momentum 0.9,
# lr 0.06 x batch/256, weight decay 5e-4, cosine schedule (10 warmup epochs), 800 epochs, kNN k = 20.
#
#   DATA_DIR=./data/imagewoof2-160 scripts/imagewoof_resnet18_800ep.sh    # the extracted archive
#   DATA_DIR=./data DOWNLOAD=1 scripts/imagewoof_resnet18_800ep.sh        # fetch imagewoof2-160.tgz into ./data
#   scripts/imagewoof_resnet18_800ep.sh --distribution none               # SimSiam baseline
#   scripts/imagewoof_resnet18_800ep.sh --resume auto --output-dir runs/X # continue a stopped run
#
# Nothing is downloaded without DOWNLOAD=1 (--download). The global batch stays 256 whatever NPROC is.
# Arguments after the script name go to `vi-simsiam pretrain` and override the recipe. PYTHON picks
# the interpreter.
set -euo pipefail
PYTHON=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-./data/imagewoof2-160}
NPROC=${NPROC:-$("$PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')}
download=()
if [ "${DOWNLOAD:-0}" = 1 ]; then download=(--download); fi

exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
    -m vi_simsiam pretrain --preset imagewoof --data-dir "$DATA_DIR" "${download[@]}" \
    --image-size 128 --backbone resnet18 --proj-layers 2 --dim 2048 --pred-dim 512 \
    --epochs 800 --batch-size 256 --lr 0.06 --weight-decay 5e-4 --warmup-epochs 10 --knn-k 20 \
    "$@"
