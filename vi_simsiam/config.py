"""Run configuration: one flat dataclass, presets as overrides of it, saved as config.json in the run.

Presets (SimSiam's recipes, Chen & He 2021, Sec. 4 and App. D):

- ``digits``: the embedded default (scikit-learn's 8x8 digits, no network); sized so that
  ``vi-simsiam pretrain`` with no arguments trains and evaluates in a few minutes on 2 CPU cores.
- ``cifar10`` / ``cifar100``: ResNet-18 (CIFAR stem), 2-layer projector, batch 512, base lr 0.03,
  weight decay 5e-4, 800 epochs.
- ``imagefolder``: ResNet-50, 3-layer projector, batch 512, base lr 0.05, weight decay 1e-4,
  100 epochs (ImageNet; ImageNette-style folders work the same).

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

from .data import ConfigError


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


def validate(cfg: Config) -> None:
    from .builder import DISTRIBUTIONS, KAPPA_INPUTS

    checks = [
        (cfg.distribution in DISTRIBUTIONS, f"--distribution must be one of {', '.join(DISTRIBUTIONS)}"),
        (cfg.kappa_input in KAPPA_INPUTS, f"--kappa-input must be one of {', '.join(KAPPA_INPUTS)}"),
        (cfg.amp in ("auto", "none", "bf16", "fp16"), "--amp must be auto, none, bf16 or fp16"),
        (cfg.dtype in ("float32", "float64"), "--dtype must be float32 or float64"),
        (cfg.dtype == "float32" or cfg.amp in ("auto", "none"), "--amp needs --dtype float32"),
        (cfg.device in ("auto", "cpu", "cuda"), "--device must be auto, cpu or cuda"),
        (cfg.epochs >= 1, "--epochs must be at least 1"),
        (cfg.batch_size >= 2, "--batch-size must be at least 2 (batch norm needs two images)"),
        (cfg.lr > 0, "--lr must be positive"),
        (cfg.warmup_epochs >= 0, "--warmup-epochs must be non-negative"),
        (cfg.kappa_min > 0, "--kappa-min must be positive"),
        (cfg.kl_weight >= 0, "--kl-weight must be non-negative"),
        (not (cfg.distribution == "none" and cfg.kl_weight), "--kl-weight needs a distribution (not 'none')"),
        (cfg.workers >= 0, "--workers must be non-negative"),
        (cfg.knn_k >= 1, "--knn-k must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def save(cfg: Config, path: Path) -> None:
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")


def load(path: Path) -> Config:
    values = json.loads(Path(path).read_text())
    known = {f.name for f in dataclasses.fields(Config)}
    return Config(**{key: value for key, value in values.items() if key in known})


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
    return Config(**values)
