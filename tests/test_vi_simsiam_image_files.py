"""Unreadable image files in an image folder (vi_simsiam/image_files.py, data.FolderImageDataset): found
by the scan and skipped with their names (or refused with --bad-images fail); one that fails only when
decoded is replaced by the next readable image with its own label; a pretraining run lists them."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vi_simsiam import cli
from vi_simsiam.data import ConfigError, FolderImageDataset


def make_folder(root: Path, per_class: int = 4, size: int = 16) -> dict[str, Path]:
    """Two classes of good PNGs, plus: a text file named .jpg, a PNG cut in half (caught by the scan),
    and a JPEG whose data is cut after the header (caught only when decoded)."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    bad = {"text": root / "a" / "page.jpg", "half_png": root / "b" / "half.png", "cut_jpeg": root / "b" / "cut.jpg"}
    bad["text"].write_text("<html>404 not found</html>")
    png = (root / "b" / "0.png").read_bytes()
    bad["half_png"].write_bytes(png[: len(png) // 2])
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    bad["cut_jpeg"].write_bytes(jpeg[: len(jpeg) * 3 // 4])
    return bad


def test_the_scan_skips_unreadable_files_by_name(tmp_path):
    bad = make_folder(tmp_path)
    with pytest.warns(UserWarning, match="skipping 2 unreadable image file") as record:
        data = FolderImageDataset(tmp_path)
    message = str(record[0].message)
    assert str(bad["text"]) in message and str(bad["half_png"]) in message
    assert sorted(path for path, _ in data.skipped) == sorted([str(bad["text"]), str(bad["half_png"])])
    assert len(data) == 9  # 8 good + the cut JPEG, which the scan cannot see


def test_a_file_that_fails_when_decoded_is_replaced_with_its_neighbour(tmp_path):
    bad = make_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = FolderImageDataset(tmp_path, transform=lambda image: torch.as_tensor(np.asarray(image)))
    index = data.paths.index(str(bad["cut_jpeg"]))
    with pytest.warns(UserWarning, match=f"unreadable image {bad['cut_jpeg']}"):
        image, label = data[index]
    neighbour = (index + 1) % len(data)
    expected, expected_label = data[neighbour]
    assert torch.equal(image, expected) and label == expected_label


def test_fail_policy_and_an_empty_folder_are_clear_errors(tmp_path):
    make_folder(tmp_path / "mixed")
    with pytest.raises(ConfigError, match="2 unreadable image file"):
        FolderImageDataset(tmp_path / "mixed", bad_images="fail")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "x.png").write_text("not a png")
    with pytest.raises(ConfigError, match="no readable images left"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            FolderImageDataset(tmp_path / "empty")


def test_a_run_lists_the_skipped_files(tmp_path, capsys, restore_torch_globals):
    for split in ("train", "val"):
        make_folder(tmp_path / "data" / split)
    args = ["pretrain", "--preset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--backbone", "resnet18_cifar",
            "--image-size", "16", "--dim", "32", "--pred-dim", "16", "--proj-hidden-dim", "32", "--proj-layers", "2",
            "--kappa-hidden-dim", "8", "--batch-size", "4", "--epochs", "1", "--workers", "0", "--threads", "1",
            "--no-evaluate"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main([*args, "--output-dir", str(tmp_path / "run")]) == 0
    assert "skipped 4 unreadable image file(s)" in capsys.readouterr().out
    listed = (tmp_path / "run" / "skipped_images.txt").read_text().splitlines()
    assert len(listed) == 4 and all("\t" in line for line in listed)
    assert cli.main([*args, "--bad-images", "fail", "--output-dir", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vi-simsiam: error: ") and "unreadable image file" in err and err.count("\n") == 1
