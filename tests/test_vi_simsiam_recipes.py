"""The ready-made recipes (scripts/*.sh, torchrun) run one or two steps on tiny data in the real on-disk formats.

CIFAR-10: pickle batch files as torchvision's cifar-10-batches-py/ holds them (written here, Python 2
style bytes keys). ImageNet: a train/ and val/ tree of PNGs per class. The recipe's model is the real
one (ResNet-18 CIFAR stem / ResNet-50, 2048-d projector); only epochs, batch, workers and, for
ResNet-50, the image size are overridden so that a step takes seconds on a CPU.

The paper's data sets (ImageNette, ImageWoof, ImageNet-100: presets imagenette, imagewoof, imagenet100):
fake folders of tiny JPEGs named by WordNet id, as the fast.ai archives and ImageNet hold them, read
in-process (which classes, in which order, what is missing, where the extracted archive is, the
offline --download path); every recipe script's command line is captured through a stand-in PYTHON
and must resolve to its preset's configuration exactly, so the scripts and presets cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vi_simsiam import cli, config, data
from vi_simsiam.errors import ConfigError

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


# ---------------------------------------------------------------------------- ImageNette, ImageWoof, ImageNet-100
IMAGENETTE = data.read_class_list("imagenette")[0]
IMAGEWOOF = data.read_class_list("imagewoof")[0]
IMAGENET100 = data.read_class_list("imagenet100")[0]
NOT_IN_IMAGENET100 = ["n01440764", "n01443537", "n09999999"]  # tench, goldfish and a made-up id


def write_class_folders(root: Path, classes, per_split=(("train", 2), ("val", 1)), size: int = 20) -> None:
    """root/<split>/<class>/<class>_<i>.JPEG: tiny JPEGs, named as ImageNet and fast.ai's archives name them."""
    rng = np.random.default_rng(0)
    for split, count in per_split:
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = rng.integers(0, 256, (size, size + 5, 3), dtype=np.uint8)
                Image.fromarray(image).save(folder / f"{name}_{i}.JPEG", format="JPEG")


def folder_config(preset: str, data_dir: Path, **overrides) -> config.Config:
    return config.resolve(preset, data_dir=str(data_dir), image_size=16, **overrides)


def test_the_bundled_class_lists():
    assert data.bundled_class_lists() == ("imagenet100", "imagenette", "imagewoof")
    wordnet_id = re.compile(r"n\d{8}")
    for names, count in ((IMAGENET100, 100), (IMAGENETTE, 10), (IMAGEWOOF, 10)):
        assert len(names) == len(set(names)) == count
        assert all(wordnet_id.fullmatch(name) for name in names)
    # CMC's list in CMC's order (github.com/HobbitLong/CMC/imagenet100.txt): first, last and a few between
    assert IMAGENET100[:3] == ["n02869837", "n01749939", "n02488291"] and IMAGENET100[-1] == "n02090622"
    assert {"n02123045", "n03642806", "n04336792"} <= set(IMAGENET100)
    assert not set(IMAGENETTE) & set(IMAGEWOOF) and "n03888257" in IMAGENETTE  # parachute
    assert (data.CLASS_LISTS / "imagenet100.txt").is_file()


def test_imagenet100_reads_only_its_classes_in_sorted_order(tmp_path):
    """A fake ImageNet with 4 of the 100 classes and 3 others; the list (a file, in an unsorted order with
    comments) picks the 4, labelled by their sorted ids whatever the list's order."""
    chosen = [IMAGENET100[50], IMAGENET100[3], IMAGENET100[97], IMAGENET100[20]]
    write_class_folders(tmp_path / "imagenet", chosen + NOT_IN_IMAGENET100)
    listed = tmp_path / "four.txt"
    lines = [f"{name}  # class {i}" for i, name in enumerate(chosen)]
    listed.write_text("# four of CMC's classes\n" + "\n".join(lines) + "\n\n")
    cfg = folder_config("imagenet100", tmp_path / "imagenet", class_list=str(listed))
    pretrain_set, eval_train, eval_test = data.build_datasets(cfg)
    assert pretrain_set.classes == eval_test.classes == sorted(chosen)
    assert len(pretrain_set) == len(eval_train) == 8 and len(eval_test) == 4
    for dataset in (pretrain_set, eval_test):
        for path, label in dataset.samples:
            assert Path(path).parent.name == sorted(chosen)[label]
    assert eval_test[0][0].shape == (3, 16, 16)


def test_imagenet100_names_its_missing_classes(tmp_path):
    present = IMAGENET100[10:14]
    write_class_folders(tmp_path / "imagenet", present + NOT_IN_IMAGENET100)
    with pytest.raises(ConfigError) as error:
        data.build_datasets(folder_config("imagenet100", tmp_path / "imagenet"))
    message, train = str(error.value), tmp_path / "imagenet" / "train"
    assert message.startswith(f"imagenet100: 96 of the 100 listed classes have no folder in {train}: ")
    assert IMAGENET100[0] in message and "and 86 more" in message and "class_lists/imagenet100.txt" in message
    assert "\n" not in message and present[0] not in message

    # every class in train/, one missing from val/
    write_class_folders(tmp_path / "full", IMAGENET100, per_split=(("train", 1), ("val", 1)), size=8)
    shutil.rmtree(tmp_path / "full" / "val" / IMAGENET100[42])
    missing_in_val = f"1 of the 100 listed classes have no folder in .*val: {IMAGENET100[42]} \\("
    with pytest.raises(ConfigError, match=missing_in_val):
        data.build_datasets(folder_config("imagenet100", tmp_path / "full"))
    # an ImageNet whose val/ is still flat (not sorted into classes) says so too
    shutil.rmtree(tmp_path / "full" / "val")
    with pytest.raises(ConfigError, match="val is not a directory .*val/ sorted into classes.*image-net.org"):
        data.build_datasets(folder_config("imagenet100", tmp_path / "full"))


@pytest.mark.parametrize(
    "preset, classes, other", [("imagenette", IMAGENETTE, IMAGEWOOF), ("imagewoof", IMAGEWOOF, IMAGENETTE)]
)
def test_fast_ai_folders_are_found_and_checked(tmp_path, preset, classes, other):
    extracted = tmp_path / "data" / f"{preset}2-160"
    write_class_folders(extracted, classes)
    for data_dir in (extracted, tmp_path / "data"):  # the extracted archive, or the folder holding it
        pretrain_set, _, eval_test = data.build_datasets(folder_config(preset, data_dir))
        assert pretrain_set.classes == sorted(classes) and len(pretrain_set) == 20 and len(eval_test) == 10
        assert Path(pretrain_set.paths[0]).is_relative_to(extracted)
    wrong = tmp_path / "wrong"
    write_class_folders(wrong, other)
    with pytest.raises(ConfigError, match=f"{preset}: 10 of the 10 listed classes have no folder in {wrong / 'train'}"):
        data.build_datasets(folder_config(preset, wrong))


def test_without_download_a_missing_folder_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    url = "https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-160.tgz"
    cases = ((tmp_path / "nowhere", f"does not exist (or pass --download to fetch {url} into it)"),
             (tmp_path / "empty", url))
    for data_dir, expected in cases:
        code = cli.main(["pretrain", "--preset", "imagewoof", "--data-dir", str(data_dir), "--output-dir", "run"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and expected in err and "--download" in err, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]  # nothing started, nothing fetched
    # the archive follows the image size: 320 px archives above 160 px
    assert data.archive_names("imagenette2", 224) == ["imagenette2-320", "imagenette2-160", "imagenette2"]


def _fake_archive(tmp_path: Path, name: str, classes) -> Path:
    write_class_folders(tmp_path / "archive" / name, classes, per_split=(("train", 1), ("val", 1)), size=8)
    tgz = tmp_path / f"{name}.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(tmp_path / "archive" / name, arcname=name)
    return tgz


def test_download_fetches_and_extracts_once_offline(tmp_path, monkeypatch):
    """--download with fast.ai's URL answered from a local archive: extracted into DATA_DIR/imagenette2-160,
    fetched once; a damaged archive is a clear error and is removed."""
    tgz = _fake_archive(tmp_path, "imagenette2-160", IMAGENETTE)
    fetched = []

    def fetch(url, path):
        fetched.append(url)
        shutil.copy(tgz, path)

    monkeypatch.setattr(data, "fetch_url", fetch)
    cfg = folder_config("imagenette", tmp_path / "data", download=True)
    pretrain_set, _, eval_test = data.build_datasets(cfg)
    assert fetched == ["https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz"]
    assert pretrain_set.classes == sorted(IMAGENETTE) and len(pretrain_set) == len(eval_test) == 10
    assert (tmp_path / "data" / "imagenette2-160" / "val" / IMAGENETTE[0]).is_dir()
    assert sorted(p.name for p in (tmp_path / "data").iterdir() if not p.name.startswith(".")) == [
        "imagenette2-160", "imagenette2-160.tgz"]
    data.build_datasets(cfg)
    assert len(fetched) == 1  # there already

    monkeypatch.setattr(data, "fetch_url", lambda url, path: path.write_bytes(b"<html>503</html>"))
    with pytest.raises(ConfigError, match="imagewoof2-160.tgz is damaged .* it was removed: run again") as error:
        data.build_datasets(folder_config("imagewoof", tmp_path / "data", download=True))
    assert "\n" not in str(error.value)
    assert not any((tmp_path / "data" / name).exists() for name in ("imagewoof2-160.tgz", "imagewoof2-160"))

    def offline(url, path):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(data, "fetch_url", offline)
    with pytest.raises(ConfigError, match="--download: cannot fetch https://s3.amazonaws.com/.*/imagewoof2-160.tgz"):
        data.build_datasets(folder_config("imagewoof", tmp_path / "data", download=True))
    assert not (tmp_path / "data" / "imagewoof2-160.tgz.part").exists()


@pytest.mark.parametrize(
    "text, expected",
    [("", "no class names"), ("n01\nn02\nn01\n", "classes listed twice: n01"), ("n01 n02\n", "line 1: expected one"),
     ("# ok\n../n01\n", "line 2: expected one")],
)
def test_a_bad_class_list_is_one_clear_line(tmp_path, text, expected):
    write_class_folders(tmp_path / "folder", ["n01", "n02"], size=8)
    listed = tmp_path / "list.txt"
    listed.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(expected)) as error:
        data.build_datasets(folder_config("imagefolder", tmp_path / "folder", class_list=str(listed)))
    assert "\n" not in str(error.value)


def test_class_list_option_is_validated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative list paths are read from the working directory
    with pytest.raises(ConfigError, match="--class-list needs an image-folder data set"):
        config.resolve("cifar10", class_list="imagenet100")
    with pytest.raises(ConfigError, match="--class-list '': must be a non-empty string"):
        config.resolve("imagefolder", class_list="")
    write_class_folders(tmp_path / "folder", ["n01"], size=8)
    with pytest.raises(ConfigError, match="--class-list nope.txt: neither a bundled list .*imagenet100.* nor a"):
        data.build_datasets(folder_config("imagefolder", tmp_path / "folder", class_list="nope.txt"))
    # a plain image folder with a class list: a subset of its classes
    write_class_folders(tmp_path / "folder", ["n02", "n03"], size=8)
    (tmp_path / "two.txt").write_text("n03\nn01\n")
    train, _, _ = data.build_datasets(folder_config("imagefolder", tmp_path / "folder", class_list="two.txt"))
    assert train.classes == ["n01", "n03"] and len(train) == 4


def test_the_presets_of_the_paper_data_sets():
    nette, woof, in100 = (config.resolve(name) for name in ("imagenette", "imagewoof", "imagenet100"))
    assert (nette.backbone, nette.image_size, nette.batch_size, nette.lr, nette.weight_decay, nette.epochs) == (
        "resnet18", 128, 256, 0.06, 5e-4, 800)
    assert dataclasses.replace(woof, preset="imagenette", dataset="imagenette") == nette
    assert (in100.backbone, in100.image_size, in100.batch_size, in100.lr, in100.weight_decay, in100.epochs) == (
        "resnet50", 224, 512, 0.05, 1e-4, 200)
    assert (in100.dataset, in100.proj_layers, in100.warmup_epochs, in100.class_list) == ("imagenet100", 3, 10, None)


# ---------------------------------------------------------------------------- every script's command line
RECIPES = {
    "cifar10_resnet18_800ep.sh": "cifar10",
    "imagenet_resnet50_100ep.sh": "imagefolder",
    "imagenette_resnet18_800ep.sh": "imagenette",
    "imagewoof_resnet18_800ep.sh": "imagewoof",
    "imagenet100_resnet50_200ep.sh": "imagenet100",
}


def captured_command(tmp_path: Path, script: str, *args: str, **env) -> list[str]:
    """The arguments the script hands to PYTHON (a stand-in that writes them down instead of running)."""
    stand_in = tmp_path / "python"
    stand_in.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n')
    stand_in.chmod(0o755)
    args_file = tmp_path / "args.txt"
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / script), *args],
        env={**os.environ, "PYTHON": str(stand_in), "ARGS_FILE": str(args_file), "NPROC": "3", **env},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    return args_file.read_text().splitlines()


@pytest.mark.parametrize("script, preset", RECIPES.items())
def test_each_script_runs_its_preset_under_torchrun(tmp_path, script, preset):
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / script)], check=False).returncode == 0
    command = captured_command(tmp_path, script, "--seed", "3", DATA_DIR="/data/x")
    split = command.index("pretrain")
    assert command[:split] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3",
                               "-m", "vi_simsiam"]
    args = cli.build_parser().parse_args(command[split:])
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(config.Config) if f.name != "preset"}
    assert args.preset == preset and "--download" not in command
    # what the script passes is its preset, spelled out (and the arguments after the script name win)
    assert config.resolve(args.preset, **overrides) == config.resolve(preset, data_dir="/data/x", seed=3)


@pytest.mark.parametrize("script", ["imagenette_resnet18_800ep.sh", "imagewoof_resnet18_800ep.sh"])
def test_fast_ai_scripts_download_only_when_asked(tmp_path, script):
    assert "--download" in captured_command(tmp_path, script, DOWNLOAD="1")
    command = captured_command(tmp_path, script)
    assert "--download" not in command
    assert command[command.index("--data-dir") + 1] == f"./data/{script.split('_')[0]}2-160"


@pytest.mark.slow
def test_imagenette_recipe_two_steps(tmp_path, restore_torch_globals):
    """The script under torchrun on a fake imagenette2-160/ inside DATA_DIR (without the final evaluation, which
    the CIFAR and ImageNet runs above cover); then `vi-simsiam knn` reads the run's folders again from its config."""
    write_class_folders(tmp_path / "data" / "imagenette2-160", IMAGENETTE)
    run_dir = tmp_path / "run"
    done = run_script(
        "imagenette_resnet18_800ep.sh",
        ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--image-size", "32", "--no-evaluate",
         "--output-dir", str(run_dir)],
        cwd=tmp_path,
        DATA_DIR=str(tmp_path / "data"),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    cfg = json.loads((run_dir / "config.json").read_text())
    assert (cfg["dataset"], cfg["backbone"], cfg["lr"], cfg["knn_k"]) == ("imagenette", "resnet18", 0.06, 20)
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 2 and state["model"]["encoder.conv1.weight"].shape == (64, 3, 7, 7)  # ImageNet stem
    assert cli.main(["knn", str(run_dir), "--threads", "2"]) == 0
    result = json.loads((run_dir / "knn.json").read_text())
    assert result["num_train"] == 20 and result["num_test"] == 10 and 0 <= result["top1"] <= 1
