"""Run configuration: one flat dataclass, presets as overrides of it, saved as config.json in the run.

Presets (SimSiam's recipes, Chen & He 2021, Sec. 4 and App. D):

- ``digits``: the embedded default (scikit-learn's 8x8 digits, no network); sized so that
  ``vi-simsiam pretrain`` with no arguments trains and evaluates in a few minutes on 2 CPU cores.
- ``cifar10`` / ``cifar100``: ResNet-18 (CIFAR stem), 2-layer projector, batch 512, base lr 0.03,
  weight decay 5e-4, 800 epochs.
- ``imagefolder``: ResNet-50, 3-layer projector, batch 512, base lr 0.05, weight decay 1e-4,
  100 epochs (ImageNet; any train/ + val/ folder of class folders works the same).
- ``imagenette`` / ``imagewoof`` (fast.ai's 10-class ImageNet subsets, 9469 / 9025 training images; the
  VI-SimSiam paper's v2 compares with SimSiam on both): the setting of lightly's Imagenette benchmark
  (SimSiam there: kNN top-1 0.872 with k = 20 after 800 epochs), so a run can be set beside it:
  ResNet-18 with the ImageNet stem at 128 px (from the 160 px archives), batch 256, base lr 0.06
  (SimSiam's CIFAR rate, 0.03 per 256 at batch 512, is the same 0.06 per step), weight decay 5e-4,
  800 epochs (10 warmup, as the CIFAR preset), kNN k = 20, and SimSiam's ResNet-18 heads (2-layer
  2048-d projector, 512-d predictor bottleneck). Batch 256 rather than 512: 37 steps an epoch, not 18.
- ``imagenet100`` (the 100 classes of CMC's list, ``vi_simsiam/class_lists/imagenet100.txt``, read out
  of an ImageNet folder): SimSiam's ImageNet recipe unchanged at 224 px (ResNet-50, 3-layer projector,
  batch 512, lr 0.05, wd 1e-4), for 200 epochs with 10 warmup: a tenth of ImageNet's images makes 100
  epochs only 25k steps, and ImageNet-100 is trained for 200 epochs and more in the literature (lightly's
  benchmark: 200); 10 warmup epochs keep the imagefolder preset's 5% of the schedule.

The learning rate is ``lr * batch_size / 256``; cosine decay after a linear warmup. The warmup
matters more here than in SimSiam: the NLL's gradient to the mean direction is kappa / (1 + c)
times SimSiam's, so full-lr steps on a random network throw its features away (measured on
digits, no warmup: kNN 0.95 at init -> 0.78 after 10 epochs; 10 warmup epochs: 0.92 -> 0.98).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .constraints import Choice, Constraint, Flag, Integer, Real, Text
from .data import FOLDER_DATASETS, ConfigError
from .image_files import BAD_IMAGE_POLICIES


@dataclass
class Config:
    # data
    preset: str = "digits"
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    augmentation: str = "digits"
    image_size: int = 8
    in_channels: int = 1
    bad_images: str = "skip"  # unreadable image files (image folders): skip (with a warning) | fail
    class_list: str | None = None  # image folders: only these classes (a bundled list's name or a text file)
    # model
    backbone: str = "digits_cnn"
    dim: int = 256
    pred_dim: int = 64
    proj_hidden_dim: int = 256
    proj_layers: int = 2
    distribution: str = "power_spherical"
    kl_weight: float = 0.0
    kappa_input: str = "projector"
    kappa_hidden_dim: int = 32  # every preset: the head predicts one number; width sets its cost (builder.KappaHead)
    kappa_min: float = 1e-2
    kappa_param: str = "scaled_softplus"  # kappa from the head's output u (builder.KAPPA_PARAMETRIZATIONS)
    kappa_lr_scale: float = 1.0  # multiplies the head's own lr scale (1 / (d - 1) for the scaled parametrizations)
    # optimization
    epochs: int = 100
    batch_size: int = 256  # global, over all processes
    lr: float = 0.05  # per 256 images
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: int = 10
    fix_pred_lr: bool = True
    # system
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (bf16 on CUDA, none on CPU) | none | bf16 | fp16
    dtype: str = "float32"  # parameter dtype; float64 for numerics checks (e.g. DDP against one process)
    workers: int = 0
    threads: int | None = None
    seed: int = 0
    deterministic: bool = False
    # run
    output_dir: str | None = None
    log_every: int = 10
    checkpoint_every: int = 0  # steps between checkpoints inside an epoch (0: at epoch ends and on signals only)
    keep_checkpoints: int = 2  # checkpoints kept: checkpoint.pt, checkpoint.1.pt, ...
    evaluate: bool = True
    knn_k: int = 20
    knn_temperature: float = 0.1
    eval_batch_size: int = 512

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    "digits": {},
    "cifar10": dict(
        dataset="cifar10",
        augmentation="cifar",
        image_size=32,
        in_channels=3,
        backbone="resnet18_cifar",
        dim=2048,
        pred_dim=512,
        proj_hidden_dim=2048,
        proj_layers=2,
        epochs=800,
        batch_size=512,
        lr=0.03,
        weight_decay=5e-4,
        warmup_epochs=10,
        workers=8,
        knn_k=200,
        log_every=50,
    ),
    "imagefolder": dict(
        dataset="imagefolder",
        augmentation="imagenet",
        image_size=224,
        in_channels=3,
        backbone="resnet50",
        dim=2048,
        pred_dim=512,
        proj_hidden_dim=2048,
        proj_layers=3,
        epochs=100,
        batch_size=512,
        lr=0.05,
        weight_decay=1e-4,
        warmup_epochs=5,
        workers=10,
        knn_k=200,
        log_every=50,
        eval_batch_size=256,
    ),
}
PRESETS["cifar100"] = dict(PRESETS["cifar10"], dataset="cifar100")
PRESETS["imagenette"] = dict(
    dataset="imagenette",
    augmentation="imagenet",
    image_size=128,
    in_channels=3,
    backbone="resnet18",
    dim=2048,
    pred_dim=512,
    proj_hidden_dim=2048,
    proj_layers=2,
    epochs=800,
    batch_size=256,
    lr=0.06,
    weight_decay=5e-4,
    warmup_epochs=10,
    workers=8,
    knn_k=20,
    log_every=10,
)
PRESETS["imagewoof"] = dict(PRESETS["imagenette"], dataset="imagewoof")
PRESETS["imagenet100"] = dict(PRESETS["imagefolder"], dataset="imagenet100", epochs=200, warmup_epochs=10)

# Settings a resumed run may change: they do not alter what is computed.
RESUMABLE_OVERRIDES = {
    "workers",
    "threads",
    "log_every",
    "evaluate",
    "eval_batch_size",
    "data_dir",
    "download",
    "device",
    "bad_images",
    "checkpoint_every",
    "keep_checkpoints",
}


def resolve(preset: str = "digits", **overrides) -> Config:
    """The preset's config with ``overrides`` (None values ignored) applied; validated."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS[preset], preset=preset)
    values.update({key: value for key, value in overrides.items() if value is not None})
    unknown = set(values) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    cfg = Config(**values)
    validate(cfg)
    return cfg


def _backbones() -> tuple:
    from .backbones import BACKBONES

    return tuple(BACKBONES)


def _distributions() -> tuple:
    from .builder import DISTRIBUTIONS

    return DISTRIBUTIONS


def _kappa_inputs() -> tuple:
    from .builder import KAPPA_INPUTS

    return KAPPA_INPUTS


def _kappa_parametrizations() -> tuple:
    from .builder import KAPPA_PARAMETRIZATIONS

    return KAPPA_PARAMETRIZATIONS


# What every field may be: one entry per field of Config (checked below, so that no field is added
# without its rule), checked by validate() whenever a config is resolved, loaded or resumed.
FIELD_RULES: dict[str, Constraint] = {
    # data
    "preset": Choice(tuple(PRESETS)),
    "dataset": Choice(("digits", "cifar10", "cifar100", *FOLDER_DATASETS)),
    "data_dir": Text(),
    "download": Flag(),
    "augmentation": Choice(("digits", "cifar", "imagenet")),
    "image_size": Integer(low=8),
    "in_channels": Choice((1, 3)),
    "bad_images": Choice(BAD_IMAGE_POLICIES),
    "class_list": Text(),
    # model
    "backbone": Choice(_backbones),
    "dim": Integer(low=2),  # the sphere S^{dim-1} needs dim >= 2
    "pred_dim": Integer(low=1),
    "proj_hidden_dim": Integer(low=1),
    "proj_layers": Integer(low=1),
    "distribution": Choice(_distributions),
    "kl_weight": Real(low=0.0),
    "kappa_input": Choice(_kappa_inputs),
    "kappa_hidden_dim": Integer(low=1),
    "kappa_min": Real(low=0.0, low_open=True),
    "kappa_param": Choice(_kappa_parametrizations),
    "kappa_lr_scale": Real(low=0.0, low_open=True),
    # optimization
    "epochs": Integer(low=1),
    "batch_size": Integer(low=2),  # batch norm needs two images
    "lr": Real(low=0.0, low_open=True),
    "weight_decay": Real(low=0.0),
    "momentum": Real(low=0.0, high=1.0, high_open=True),
    "warmup_epochs": Integer(low=0),
    "fix_pred_lr": Flag(),
    # system
    "device": Choice(("auto", "cpu", "cuda")),
    "amp": Choice(("auto", "none", "bf16", "fp16")),
    "dtype": Choice(("float32", "float64")),
    "workers": Integer(low=0),
    "threads": Integer(low=1, optional=True),
    "seed": Integer(low=0, high=2**63 - 1),
    "deterministic": Flag(),
    # run
    "output_dir": Text(),
    "log_every": Integer(low=1),
    "checkpoint_every": Integer(low=0),
    "keep_checkpoints": Integer(low=1),
    "evaluate": Flag(),
    "knn_k": Integer(low=1),
    "knn_temperature": Real(low=0.0, low_open=True),
    "eval_batch_size": Integer(low=1),
}
_missing = {f.name for f in dataclasses.fields(Config)} ^ set(FIELD_RULES)
if _missing:
    raise RuntimeError(f"vi_simsiam.config: FIELD_RULES and Config differ in {sorted(_missing)}")


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def validate(cfg: Config) -> None:
    """Every field against FIELD_RULES, then the rules that tie fields together; a ConfigError names
    the option, the value and what is allowed."""
    for name, rule in FIELD_RULES.items():
        value = getattr(cfg, name)
        if not rule.allows(value):
            raise ConfigError(f"{option_name(name)} {value!r}: must be {rule.describe()}")
    checks = [
        (cfg.dtype == "float32" or cfg.amp in ("auto", "none"), "--amp needs --dtype float32"),
        (not (cfg.distribution == "none" and cfg.kl_weight), "--kl-weight needs a distribution (not 'none')"),
        (
            cfg.class_list is None or cfg.dataset in FOLDER_DATASETS,
            f"--class-list needs an image-folder data set ({', '.join(FOLDER_DATASETS)}), not {cfg.dataset}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def save(cfg: Config, path: Path) -> None:
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")


def load(path: Path) -> Config:
    """A run's saved config.json, checked against FIELD_RULES; a damaged file is a ConfigError."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} is damaged and cannot be read ({type(error).__name__}: {error})") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path} is damaged: expected a JSON object of config fields")
    known = {f.name for f in dataclasses.fields(Config)}
    cfg = Config(**{key: value for key, value in values.items() if key in known})
    try:
        validate(cfg)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
    return cfg


def merge_for_resume(saved: Config, overrides: dict) -> Config:
    """The saved config with the overrides that a resumed run may change; others must match."""
    values = saved.to_dict()
    for key, value in overrides.items():
        if value is None or key == "preset" or value == values.get(key):
            continue
        if key not in RESUMABLE_OVERRIDES:
            raise ConfigError(
                f"--{key.replace('_', '-')} {value!r} differs from the run being resumed ({values.get(key)!r}); "
                "a resumed run keeps its configuration (start a new run to change it)"
            )
        values[key] = value
    cfg = Config(**values)
    validate(cfg)
    return cfg
