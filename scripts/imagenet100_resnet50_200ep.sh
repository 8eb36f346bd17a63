#!/usr/bin/env bash
# VI-SimSiam on ImageNet-100: the 100 classes of CMC's list (Tian et al. 2019;
# vi_simsiam/class_lists/imagenet100.txt) read out of an ImageNet folder, ~126k training and 5000
# validation images. SimSiam's ImageNet recipe (Chen & He 2021, Sec. 4) at its resolution: ResNet-50
# at 224 px, 3-layer projector (2048), predictor 2048-512-2048, batch 512, SGD momentum 0.9,
# lr 0.05 x batch/256 (predictor lr fixed), weight decay 1e-4, cosine schedule, bf16 autocast on GPUs
# with the loss in float32. 200 epochs, not ImageNet's 100: with a tenth of the images, 100 epochs
# would be only 25k steps, and ImageNet-100 results are reported after 200 epochs or more; 10 warmup
# epochs are the same 5% of the schedule as ImageNet's 5 of 100.
#
#   DATA_DIR=/data/imagenet scripts/imagenet100_resnet50_200ep.sh       # ImageNet: train/<wnid>/, val/<wnid>/
#   NPROC=8 scripts/imagenet100_resnet50_200ep.sh --distribution none    # SimSiam baseline, 8 GPUs
#   scripts/imagenet100_resnet50_200ep.sh --resume auto --output-dir runs/X  # continue a stopped run
#
# DATA_DIR holds all 1000 ImageNet classes (or only these 100): only the listed classes are read, and
# a listed class missing from train/ or val/ stops the run with its name. val/ must be sorted into
# class folders like train/. ImageNet is never downloaded (image-net.org gives it to registered
# users). The global batch stays 512 whatever NPROC is. Arguments after the script name go to
# `vi-simsiam pretrain` and override the recipe. PYTHON picks the interpreter.
set -euo pipefail
PYTHON=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-./data/imagenet}
NPROC=${NPROC:-$("$PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')}

exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
    -m vi_simsiam pretrain --preset imagenet100 --data-dir "$DATA_DIR" \
    --image-size 224 --backbone resnet50 --proj-layers 3 --dim 2048 --pred-dim 512 \
    --epochs 200 --batch-size 512 --lr 0.05 --weight-decay 1e-4 --warmup-epochs 10 --fix-pred-lr \
    "$@"
