"""Data sets and the two-view loader.

Data sets (each gives a train split for pretraining and a held-out split for evaluation):

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, shipped inside the
  installed package, no network), split 75/25 stratified with a fixed seed independent of the
  training seed, so every run is evaluated on the same held-out images. Images (1, 8, 8) in [0, 1].
- ``cifar10`` / ``cifar100``: the torchvision on-disk layout under ``data_dir``
  (``cifar-10-batches-py/data_batch_*``, ``test_batch``; ``cifar-100-python/train``, ``test``),
  read directly from the pickle batches; ``download=True`` fetches them with torchvision first.
- ``imagefolder``: ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` (ImageNet, ImageNette).

Exact, world-size-independent data: ``GlobalBatchSampler`` cuts one seeded permutation per epoch
into global batches and gives each rank a contiguous slice, and ``TwoViewDataset`` seeds each
sample's augmentation from (seed, epoch, index). So the views of a global batch are the same for
1 or N processes and for a run resumed at any step.
"""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .augmentations import build_transforms
from .errors import ConfigError
from .image_files import apply_policy, load_or_substitute, scan


# ---------------------------------------------------------------------------- base data sets
class ArrayImageDataset(Dataset):
    """Images held in memory: uint8 (N, H, W, C) arrays as PIL images, or float (N, C, H, W) tensors."""

    def __init__(self, images, labels, transform=None):
        self.images, self.labels, self.transform = images, torch.as_tensor(labels, dtype=torch.long), transform

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int):
        image = self.images[index]
        return Image.fromarray(image) if isinstance(image, np.ndarray) else image

    def __getitem__(self, index: int):
        image = self.image(index)
        return (self.transform(image) if self.transform else image), self.labels[index]


class FolderImageDataset(Dataset):
    """``torchvision.datasets.ImageFolder`` with the same ``image(index)`` access as the in-memory sets.

    Unreadable files are found by a scan when the set is made (vi_simsiam/image_files.py) and left
    out (``bad_images="skip"``, listed in ``self.skipped``) or refused (``"fail"``); one that fails
    only when decoded is replaced by the next readable image, with a warning naming it."""

    def __init__(self, root: Path, transform=None, bad_images: str = "skip"):
        from torchvision.datasets import ImageFolder

        folder = ImageFolder(str(root))
        self.skipped = scan([path for path, _ in folder.samples])
        apply_policy(root, self.skipped, bad_images)
        bad = {path for path, _ in self.skipped}
        self.samples = [(path, target) for path, target in folder.samples if path not in bad]
        if not self.samples:
            raise ConfigError(f"{root}: no readable images left ({len(self.skipped)} unreadable)")
        self.paths = [path for path, _ in self.samples]
        self.loader = folder.loader
        self.labels = torch.tensor([target for _, target in self.samples], dtype=torch.long)
        self.transform = transform

    def with_transform(self, transform) -> "FolderImageDataset":
        """The same files (scanned once) with another transform."""
        other = copy.copy(self)
        other.transform = transform
        return other

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int):
        return load_or_substitute(self.loader, self.paths, index)[0]

    def __getitem__(self, index: int):
        image, used = load_or_substitute(self.loader, self.paths, index)  # a substitute keeps its own label
        return (self.transform(image) if self.transform else image), self.labels[used]


def load_digits_split(test_fraction: float = 0.25, split_seed: int = 0):
    """((train images (N, 1, 8, 8) float32 in [0, 1], labels (N,)), (test images, labels))."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = np.asarray(digits.target)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=split_seed, stratify=labels
    )
    return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])


CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", "data_batch_*", "test_batch", "labels"),
    "cifar100": ("cifar-100-python", "train", "test", "fine_labels"),
}


def _read_cifar_batches(files, label_key):
    images, labels = [], []
    for file in files:
        with open(file, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        # The published batches are Python 2 pickles (bytes keys); accept str keys from Python 3 writers too.
        batch = {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(batch[label_key])
    return np.ascontiguousarray(np.concatenate(images)), np.asarray(labels)


def load_cifar(name: str, data_dir: Path, download: bool = False):
    """((train uint8 (N, 32, 32, 3), labels), (test ..., labels)) from torchvision's pickle layout."""
    folder, train_pattern, test_name, label_key = CIFAR_LAYOUT[name]
    root = Path(data_dir) / folder
    if download:
        from torchvision import datasets

        getattr(datasets, name.upper())(str(data_dir), train=True, download=True)
        getattr(datasets, name.upper())(str(data_dir), train=False, download=True)
    train_files = sorted(root.glob(train_pattern))
    test_file = root / test_name
    if not train_files or not test_file.is_file():
        raise ConfigError(
            f"{name}: no batch files under {root} (expected {train_pattern} and {test_name}, torchvision's layout); "
            f"pass --download to fetch them, or point --data-dir at the folder that holds {folder}/"
        )
    return _read_cifar_batches(train_files, label_key), _read_cifar_batches([test_file], label_key)


# ---------------------------------------------------------------------------- presets' data
def build_datasets(cfg):
    """(pretraining set with ``image(i)``, eval train set, eval test set) for a resolved config.

    The pretraining set returns raw images (``TwoViewDataset`` augments them); the eval sets apply
    the deterministic eval transform and give (image, label).
    """
    train_t = None
    eval_t = build_transforms(cfg.augmentation, train=False, image_size=cfg.image_size)
    if cfg.dataset == "digits":
        (xtr, ytr), (xte, yte) = load_digits_split()
        return (
            ArrayImageDataset(xtr, ytr, train_t),
            ArrayImageDataset(xtr, ytr, eval_t),
            ArrayImageDataset(xte, yte, eval_t),
        )
    data_dir = _require_data_dir(cfg)
    if cfg.dataset in CIFAR_LAYOUT:
        (xtr, ytr), (xte, yte) = load_cifar(cfg.dataset, data_dir, cfg.download)
        return (
            ArrayImageDataset(xtr, ytr, train_t),
            ArrayImageDataset(xtr, ytr, eval_t),
            ArrayImageDataset(xte, yte, eval_t),
        )
    if cfg.dataset == "imagefolder":
        for split in ("train", "val"):
            if not (data_dir / split).is_dir():
                raise ConfigError(
                    f"imagefolder: {data_dir / split} is not a directory "
                    "(expected DATA_DIR/train/<class>/*, DATA_DIR/val/<class>/*)"
                )
        try:
            train = FolderImageDataset(data_dir / "train", bad_images=cfg.bad_images)
            sets = [train, train.with_transform(eval_t), FolderImageDataset(data_dir / "val", eval_t, cfg.bad_images)]
        except (FileNotFoundError, RuntimeError) as error:  # ImageFolder: no class folders / no images
            raise ConfigError(f"imagefolder: {error}") from error
        return tuple(sets)
    raise ConfigError(f"unknown dataset {cfg.dataset!r}")


def _require_data_dir(cfg) -> Path:
    if not cfg.data_dir:
        raise ConfigError(f"preset {cfg.preset!r} needs --data-dir (the folder holding the {cfg.dataset} data)")
    data_dir = Path(cfg.data_dir).expanduser()
    if not data_dir.is_dir() and not cfg.download:
        raise ConfigError(
            f"--data-dir {data_dir} does not exist" + (" (or pass --download)" if cfg.dataset in CIFAR_LAYOUT else "")
        )
    return data_dir


# ---------------------------------------------------------------------------- two views, exact order
def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation, a fixed function of (run seed, epoch, index)."""
    mixed = seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xBF58476D1CE4E5B9 + (index + 1) * 0x94D049BB133111EB
    mixed ^= mixed >> 31
    return mixed % (2**63)


class TwoViewDataset(Dataset):
    """Indexed by (epoch, index) -> (view1, view2): two augmentations of image ``index``.

    The global CPU generator is reseeded from ``sample_seed`` for the two views and restored
    afterwards, so the views do not depend on which process or worker makes them, nor on the
    order, and the caller's random stream is untouched.
    """

    def __init__(self, base, transform, seed: int):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        epoch, index = key
        image = self.base.image(index)
        state = torch.get_rng_state()
        try:
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self.transform(image), self.transform(image)
        finally:
            torch.set_rng_state(state)


class GlobalBatchSampler:
    """Yields this rank's part of each global batch as a list of (epoch, index) keys.

    One permutation per epoch from ``seed + epoch`` (DistributedSampler's convention); the last
    incomplete global batch is dropped (SimSiam's drop_last); rank r takes the r-th contiguous
    slice of each global batch. ``start_batch`` skips the batches a resumed run has already done.
    """

    def __init__(self, num_samples, global_batch_size, world_size=1, rank=0, seed=0):
        if global_batch_size % world_size:
            raise ConfigError(f"batch size {global_batch_size} is not divisible by the {world_size} processes")
        if global_batch_size > num_samples:
            raise ConfigError(
                f"batch size {global_batch_size} is larger than the data set ({num_samples} training images); "
                "lower --batch-size"
            )
        self.num_samples, self.global_batch_size = num_samples, global_batch_size
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.local_batch_size = global_batch_size // world_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.num_samples // self.global_batch_size - self.start_batch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        batches = order[: (self.num_samples // self.global_batch_size) * self.global_batch_size]
        batches = batches.view(-1, self.global_batch_size)
        lo = self.rank * self.local_batch_size
        for batch in batches[self.start_batch :, lo : lo + self.local_batch_size].tolist():
            yield [(self.epoch, index) for index in batch]


def worker_init(_worker_id: int) -> None:
    # Each loader worker works with one thread: the main process already uses the cores.
    torch.set_num_threads(1)


def num_cpu_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
