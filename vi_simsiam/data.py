"""Data sets and the two-view loader.

Data sets (each gives a train split for pretraining and a held-out split for evaluation):

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, shipped inside the
  installed package, no network), split 75/25 stratified with a fixed seed independent of the
  training seed, so every run is evaluated on the same held-out images. Images (1, 8, 8) in [0, 1].
- ``cifar10`` / ``cifar100``: the torchvision on-disk layout under ``data_dir``
  (``cifar-10-batches-py/data_batch_*``, ``test_batch``; ``cifar-100-python/train``, ``test``),
  read directly from the pickle batches; ``download=True`` fetches them with torchvision first.
- ``imagefolder``: ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` (every class folder, or
  those of ``class_list``).
- ``imagenette`` / ``imagewoof``: fast.ai's 10-class ImageNet subsets, the same layout with WordNet-id
  class folders (the extracted ``imagenette2-160/`` etc., or the folder holding it); ``download=True``
  fetches the archive from fast.ai's S3 bucket first.
- ``imagenet100``: an ImageNet folder (train/ and val/ with 1000 WordNet-id class folders, val/ sorted
  into them) restricted to the 100 classes of CMC's list (``class_lists/imagenet100.txt``).

A class list (``class_lists/<name>.txt`` in the package, or a text file: one class folder name per
line, ``#`` comments) restricts a folder data set to its classes; every listed class must have a
folder in train/ and val/ (a missing one is an error naming it). Labels follow the sorted names, as
``ImageFolder`` numbers a folder holding only those classes, so ImageNet-100 copied out of ImageNet
and ImageNet read through the list are the same data set with the same labels.

Exact, world-size-independent data: ``GlobalBatchSampler`` cuts one seeded permutation per epoch
into global batches and gives each rank a contiguous slice, and ``TwoViewDataset`` seeds each
sample's augmentation from (seed, epoch, index). So the views of a global batch are the same for
1 or N processes and for a run resumed at any step.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import importlib.resources
import os
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .augmentations import build_transforms
from .errors import ConfigError
from .image_files import NAMED_IN_MESSAGES, apply_policy, load_or_substitute, scan


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
    only when decoded is replaced by the next readable image, with a warning naming it. ``classes``:
    only these class folders (each must exist), labelled in sorted order; ``self.classes`` the names."""

    def __init__(self, root: Path, transform=None, bad_images: str = "skip", classes: list[str] | None = None):
        folder = _image_folder(root, classes)
        self.classes = folder.classes
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

    def with_transform(self, transform) -> FolderImageDataset:
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


def _image_folder(root: Path, classes: list[str] | None):
    """torchvision's ImageFolder of ``root``: every class folder, or only ``classes`` (sorted, checked
    to exist by the caller), numbered in sorted order as ImageFolder numbers them."""
    from torchvision.datasets import ImageFolder

    if classes is None:
        return ImageFolder(str(root))
    listed = sorted(classes)

    class ListedClasses(ImageFolder):
        def find_classes(self, directory):
            return listed, {name: index for index, name in enumerate(listed)}

    return ListedClasses(str(root))


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


# ---------------------------------------------------------------------------- image-folder data sets
CLASS_LISTS = importlib.resources.files(__package__) / "class_lists"
FAST_AI_URL = "https://s3.amazonaws.com/fast-ai-imageclas/"


@dataclass(frozen=True)
class FolderDataSet:
    """An image-folder data set: its own class list (None: every class folder) and, for fast.ai's
    sets, the archive --download fetches (``imagenette2`` -> imagenette2-160.tgz, -320, or full size)."""

    class_list: str | None = None
    archive: str | None = None
    layout: str = "DATA_DIR/train/<class>/*, DATA_DIR/val/<class>/*"


_WNID_LAYOUT = "DATA_DIR/train/<wnid>/*, DATA_DIR/val/<wnid>/*"
FOLDER_DATASETS = {
    "imagefolder": FolderDataSet(),
    "imagenette": FolderDataSet("imagenette", "imagenette2", _WNID_LAYOUT),
    "imagewoof": FolderDataSet("imagewoof", "imagewoof2", _WNID_LAYOUT),
    "imagenet100": FolderDataSet("imagenet100", None, f"an ImageNet folder: {_WNID_LAYOUT}, val/ sorted into classes"),
}


def bundled_class_lists() -> tuple[str, ...]:
    return tuple(sorted(entry.name[: -len(".txt")] for entry in CLASS_LISTS.iterdir() if entry.name.endswith(".txt")))


def _reason(error: BaseException) -> str:
    """``Type: message`` on one line (tarfile's and urllib's messages span several)."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def read_class_list(spec: str) -> tuple[list[str], str]:
    """(class folder names in the file's order, where they came from) for a bundled list's name
    (``imagenet100``) or the path of a text file: one name per line, ``#`` starts a comment."""
    if spec in bundled_class_lists():
        text = (CLASS_LISTS / f"{spec}.txt").read_text()
        source = f"the bundled list vi_simsiam/class_lists/{spec}.txt"
    else:
        path = Path(spec).expanduser()
        try:
            text, source = path.read_text(), str(path)
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(
                f"--class-list {spec}: neither a bundled list ({', '.join(bundled_class_lists())}) "
                f"nor a readable text file ({_reason(error)})"
            ) from error
    names = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 1 or "/" in fields[0] or fields[0] in (".", ".."):
            raise ConfigError(f"{source}, line {number}: expected one class folder name, got {line.strip()!r}")
        names.append(fields[0])
    if not names:
        raise ConfigError(f"{source}: no class names in it")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"{source}: classes listed twice: {', '.join(repeated)}")
    return names, source


def _named(names: list[str]) -> str:
    more = f" and {len(names) - NAMED_IN_MESSAGES} more" if len(names) > NAMED_IN_MESSAGES else ""
    return ", ".join(names[:NAMED_IN_MESSAGES]) + more


def check_listed_classes(dataset: str, split_dir: Path, classes: list[str], source: str) -> None:
    """Every listed class has a folder in ``split_dir``; otherwise one line naming the missing ones."""
    missing = [name for name in classes if not (split_dir / name).is_dir()]
    if missing:
        raise ConfigError(
            f"{dataset}: {len(missing)} of the {len(classes)} listed classes have no folder in {split_dir}: "
            f"{_named(missing)} (classes from {source})"
        )


def archive_names(archive: str, image_size: int) -> list[str]:
    """fast.ai's variants of ``archive``, the one for ``image_size`` first: images with a shorter side
    of 160 px suffice up to 160 px, 320 px up to 320, then the full size."""
    variants = [f"{archive}-160", f"{archive}-320", archive]
    first = 0 if image_size <= 160 else 1 if image_size <= 320 else 2
    return [variants[first]] + variants[:first] + variants[first + 1 :]


def _has_splits(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "val").is_dir()


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """One process at a time (the processes of a torchrun job download once, the others wait)."""
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_url(url: str, path: Path) -> None:
    """Download ``url`` to ``path`` (torchvision's downloader: redirects, a progress bar)."""
    from torchvision.datasets.utils import download_url

    download_url(url, str(path.parent), filename=path.name)


def _extract_safely(tar: tarfile.TarFile, folder: Path) -> None:
    """Extract with no absolute paths, no paths out of ``folder``, no links or device files: tarfile's
    "data" filter, or (Pythons before 3.10.12 / 3.11.4, which lack it) the same refusals made here."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(folder, filter="data")
        return
    for member in tar.getmembers():
        path = Path(member.name)
        if path.is_absolute() or ".." in path.parts or not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"refusing archive member {member.name!r}")
    tar.extractall(folder)


def download_fast_ai(archive: str, data_dir: Path) -> Path:
    """``data_dir/<archive>/`` from ``FAST_AI_URL<archive>.tgz``, downloaded and extracted unless there.

    The archive is downloaded under a temporary name and renamed when complete, and extracted into a
    temporary folder that is renamed into place, so an interrupted download never passes for data."""
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / archive
    with _exclusive(data_dir / f".{archive}.lock"):
        if _has_splits(target):
            return target
        tgz = data_dir / f"{archive}.tgz"
        if not tgz.is_file():
            partial = data_dir / f"{archive}.tgz.part"
            try:
                fetch_url(f"{FAST_AI_URL}{archive}.tgz", partial)
            except Exception as error:  # urllib raises URLError, HTTPError, OSError, ...
                partial.unlink(missing_ok=True)
                raise ConfigError(
                    f"--download: cannot fetch {FAST_AI_URL}{archive}.tgz ({_reason(error)})"
                ) from error
            os.replace(partial, tgz)
        scratch = Path(tempfile.mkdtemp(prefix=f".{archive}-", dir=data_dir))
        try:
            with tarfile.open(tgz) as tar:
                _extract_safely(tar, scratch)
            if not _has_splits(scratch / archive):
                raise ConfigError(f"{tgz}: the archive holds no {archive}/train and {archive}/val folders")
            shutil.rmtree(target, ignore_errors=True)  # a partial folder of an interrupted earlier run
            os.replace(scratch / archive, target)
        except (tarfile.TarError, EOFError, OSError) as error:
            tgz.unlink(missing_ok=True)
            raise ConfigError(
                f"{tgz} is damaged ({_reason(error)}); it was removed: run again"
            ) from error
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def find_folder_root(cfg, data_dir: Path) -> Path:
    """The folder holding train/ and val/: ``data_dir`` itself, or (fast.ai's sets) the extracted
    archive inside it, downloaded first with ``cfg.download``; else one line saying how to get it."""
    spec = FOLDER_DATASETS[cfg.dataset]
    if _has_splits(data_dir):
        return data_dir
    names = archive_names(spec.archive, cfg.image_size) if spec.archive else []
    for name in names:
        if _has_splits(data_dir / name):
            return data_dir / name
    if spec.archive and cfg.download:
        return download_fast_ai(names[0], data_dir)
    if spec.archive:
        raise ConfigError(
            f"{cfg.dataset}: no train/ and val/ folders in {data_dir} (nor in {data_dir}/{names[0]}/); pass --download "
            f"to fetch {FAST_AI_URL}{names[0]}.tgz into it, or extract that archive yourself and point --data-dir at it"
        )
    absent = next(data_dir / split for split in ("train", "val") if not (data_dir / split).is_dir())
    hint = "; ImageNet is not downloaded here (image-net.org gives it to registered users)"
    raise ConfigError(
        f"{cfg.dataset}: {absent} is not a directory (expected {spec.layout})"
        + (hint if cfg.dataset == "imagenet100" else "")
    )


def build_folder_datasets(cfg, data_dir: Path, eval_t):
    """(pretraining set, eval train set, eval test set) of an image-folder data set."""
    root = find_folder_root(cfg, data_dir)
    list_name = cfg.class_list or FOLDER_DATASETS[cfg.dataset].class_list
    classes = None
    if list_name:
        classes, source = read_class_list(list_name)
        for split in ("train", "val"):
            check_listed_classes(cfg.dataset, root / split, classes, source)
    try:
        train = FolderImageDataset(root / "train", bad_images=cfg.bad_images, classes=classes)
        test = FolderImageDataset(root / "val", eval_t, cfg.bad_images, classes=classes)
    except (FileNotFoundError, RuntimeError) as error:  # ImageFolder: no class folders / no images
        raise ConfigError(f"{cfg.dataset}: {error}".replace("\n", " ")) from error
    if train.classes != test.classes:
        only = sorted(set(train.classes) ^ set(test.classes))
        raise ConfigError(f"{cfg.dataset}: train/ and val/ hold different classes ({_named(only)} in one only)")
    return train, train.with_transform(eval_t), test


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
    if cfg.dataset in FOLDER_DATASETS:
        return build_folder_datasets(cfg, data_dir, eval_t)
    raise ConfigError(f"unknown dataset {cfg.dataset!r}")


def _require_data_dir(cfg) -> Path:
    if not cfg.data_dir:
        raise ConfigError(f"preset {cfg.preset!r} needs --data-dir (the folder holding the {cfg.dataset} data)")
    data_dir = Path(cfg.data_dir).expanduser()
    archive = FOLDER_DATASETS.get(cfg.dataset, FolderDataSet()).archive
    if not data_dir.is_dir() and not (cfg.download and (archive or cfg.dataset in CIFAR_LAYOUT)):
        how = ""
        if archive:
            how = f" (or pass --download to fetch {FAST_AI_URL}{archive_names(archive, cfg.image_size)[0]}.tgz into it)"
        elif cfg.dataset in CIFAR_LAYOUT:
            how = " (or pass --download)"
        raise ConfigError(f"--data-dir {data_dir} does not exist{how}")
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
