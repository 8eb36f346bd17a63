"""The ready-made recipes (scripts/*.sh, torchrun) run one or two steps on tiny data in the real on-disk formats.

CIFAR-10: pickle batch files as torchvision's cifar-10-batches-py/ holds them (written here, Python 2
style bytes keys). ImageNet: a train/ and val/ tree of PNGs per class. The recipe's model is the real
one (ResNet-18 CIFAR stem / ResNet-50, 2048-d projector); only epochs, batch, workers and, for
ResNet-50, the image size are overridden so that a step takes seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def script_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(PYTHON=sys.executable, NPROC="1", OMP_NUM_THREADS="2", **extra)
    return env


def write_fake_cifar10(root: Path, train: int = 32, test: int = 16) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in (("data_batch_1", train), ("test_batch", test)):
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, count).tolist(),
            b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * count,
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)


def write_fake_imagefolder(root: Path, per_class: dict, size: int = 80) -> None:
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for label in ("n01440764", "n02102040"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def run_script(name: str, args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / name), *args],
        cwd=cwd,
        env=script_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cifar10_resnet18_recipe_two_steps(tmp_path):
    write_fake_cifar10(tmp_path / "data")
    run_dir = tmp_path / "run"
    done = run_script(
        "cifar10_resnet18_800ep.sh",
        ["--epochs", "1", "--batch-size", "16", "--workers", "2", "--output-dir", str(run_dir)],
        cwd=tmp_path,
        DATA_DIR=str(tmp_path / "data"),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["backbone"], config["dim"], config["pred_dim"], config["proj_layers"]) == (
        "resnet18_cifar",
        2048,
        512,
        2,
    )
    assert (config["lr"], config["weight_decay"]) == (0.03, 5e-4)
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 2 and state["epoch"] == 1
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["num_test"] == 16 and result["num_train"] == 32 and 0 <= result["knn_top1"] <= 1
    assert "kNN top-1" in done.stdout


@pytest.mark.slow
def test_imagenet_resnet50_recipe_one_step(tmp_path):
    write_fake_imagefolder(tmp_path / "imagenet", {"train": 4, "val": 2})
    run_dir = tmp_path / "run"
    done = run_script(
        "imagenet_resnet50_100ep.sh",
        ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--image-size", "64", "--output-dir", str(run_dir)],
        cwd=tmp_path,
        DATA_DIR=str(tmp_path / "imagenet"),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["backbone"], config["proj_layers"], config["lr"], config["weight_decay"]) == (
        "resnet50",
        3,
        0.05,
        1e-4,
    )
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 1
    assert state["model"]["encoder.conv1.weight"].shape == (64, 3, 7, 7)  # the ImageNet stem
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["num_test"] == 4 and result["num_train"] == 8


def test_cifar_without_download_is_a_clear_error(tmp_path):
    done = run_script("cifar10_resnet18_800ep.sh", ["--epochs", "1"], cwd=tmp_path, DATA_DIR=str(tmp_path))
    assert done.returncode != 0
    assert "no batch files" in done.stderr and "--download" in done.stderr
