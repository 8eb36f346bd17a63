#!/usr/bin/env bash
# VI-SimSiam on ImageNet with SimSiam's 100-epoch recipe (Chen & He 2021, Sec. 4): ResNet-50,
# 3-layer projector (2048), predictor 2048-512-2048, batch 512, SGD momentum 0.9,
# lr 0.05 x batch/256 (predictor lr fixed), weight decay 1e-4, cosine schedule (5 warmup epochs),
# bf16 autocast on GPUs with the loss in float32.
#
#   DATA_DIR=/data/imagenet scripts/imagenet_resnet50_100ep.sh            # DATA_DIR/train, DATA_DIR/val
#   NPROC=8 DATA_DIR=/data/imagenette2 scripts/imagenet_resnet50_100ep.sh --distribution none
#   scripts/imagenet_resnet50_100ep.sh --resume auto --output-dir runs/X  # continue a stopped run
#
# The global batch stays 512 whatever NPROC is. Arguments after the script name go to
# `vi-simsiam pretrain` and override the recipe. PYTHON picks the interpreter.
set -euo pipefail
PYTHON=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-./data/imagenet}
NPROC=${NPROC:-$("$PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')}

exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
    -m vi_simsiam pretrain --preset imagefolder --data-dir "$DATA_DIR" \
    --backbone resnet50 --proj-layers 3 --dim 2048 --pred-dim 512 \
    --epochs 100 --batch-size 512 --lr 0.05 --weight-decay 1e-4 --warmup-epochs 5 --fix-pred-lr \
    "$@"
