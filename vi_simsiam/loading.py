"""A trained run from Python: ``vi_simsiam.load`` and ``vi_simsiam.export``.

    import vi_simsiam
    from PIL import Image
    model = vi_simsiam.load("runs/digits-power_spherical-20261202-101500")   # or a file written by export
    kappa = model.kappa([Image.open(p) for p in paths])                        # (N,): low = uncertain
    features = model.embed([Image.open(p) for p in paths])                     # (N, feature_dim)
    vi_simsiam.export("runs/digits-power_spherical-20261202-101500", "digits.pt")

``load`` takes a run directory (its newest checkpoint that verifies: ``checkpoint.newest_valid``) or a
file written by ``export``: the weights and the config, without optimizer state, RNG states or
anything pickled beyond tensors and plain values (it loads with ``torch.load(weights_only=True)``).

Images are a list of PIL images, which go through ``model.transform``, or a tensor (N, C, H, W) that
has been through it already (``torch.stack([model.transform(im) for im in images])``). The transform
is the run's evaluation transform, made to accept any PIL image: converted to the run's channels
(greyscale "L" for ``in_channels`` 1, "RGB" for 3), resized so the shorter side is the run's size and
centre-cropped (the ``imagenet`` set: its own resize to 256/224 of the size, then the crop), scaled
to [0, 1] and normalized as in training. Digits runs saw white strokes on black (scikit-learn's
digits store ink as the high value), so dark-on-light scans should be inverted first.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from . import checkpoint as ckpt
from . import config as config_lib
from .augmentations import eval_parts
from .builder import VISimSiam, build_model
from .errors import UNREADABLE_FILE_ERRORS, ConfigError

EXPORT_FORMAT = "vi_simsiam.export"
EXPORT_VERSION = 1


# ---------------------------------------------------------------------------- the transform
def convert_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in PIL mode ``mode`` ("L" or "RGB"). PIL's own ``convert`` clips 16-bit and 32-bit
    greyscale at 255 (a 16-bit scan turns white); those are scaled from the 16-bit range instead
    (``I`` and ``F`` images whose values stay within 0-255 are read as 8-bit)."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (values.size and values.max() > 255):
            values = values / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    return image if image.mode == mode else image.convert(mode)


class ConvertMode:
    """PIL image -> the same image in ``mode`` (``convert_mode``); a class, so the transform pickles."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, image: Image.Image) -> Image.Image:
        return convert_mode(image, self.mode)

    def __repr__(self) -> str:
        return f"ConvertMode({self.mode!r})"


def image_transforms(cfg: config_lib.Config):
    """(prepare, normalize): ``prepare`` maps a PIL image of any size and mode to the float tensor
    (C, H, W) in [0, 1] the run's evaluation sees; ``normalize`` finishes it (the grid draws the former)."""
    mode = "L" if cfg.in_channels == 1 else "RGB"
    run_prepare, normalize = eval_parts(cfg.augmentation, cfg.image_size)
    steps = [ConvertMode(mode)]
    if cfg.augmentation == "imagenet":
        steps.append(run_prepare)  # resize to 256/224 of the size, centre crop, to [0, 1]
    else:
        # digits and CIFAR are stored at the run's size: other sizes are brought to it the same way
        steps += [
            v2.Resize(cfg.image_size, antialias=True),
            v2.CenterCrop(cfg.image_size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps), v2.Compose([normalize, v2.ToPureTensor()])


# ---------------------------------------------------------------------------- the loaded model
class LoadedModel:
    """A trained VI-SimSiam network in eval mode, with its config and evaluation transform.

    Attributes: ``cfg`` (``Config``), ``network`` (``VISimSiam``), ``device``, ``step`` (the checkpoint's
    training step), ``source`` (the checkpoint or exported file read), ``passed_over`` ((path, reason)
    of newer checkpoints that did not verify), ``feature_dim``, ``has_kappa`` (False for plain SimSiam),
    ``transform`` (PIL image -> (C, H, W) tensor), and its two halves ``prepare`` and ``normalize``.
    """

    def __init__(self, cfg, network: VISimSiam, device: torch.device, step: int, source: Path, passed_over=()):
        self.cfg, self.network, self.device, self.step, self.source = cfg, network.eval(), device, step, Path(source)
        self.passed_over = list(passed_over)
        self.dtype = next(network.parameters()).dtype
        self.feature_dim = network.encoder.feature_dim
        self.has_kappa = network.kappa_head is not None
        self.prepare, self.normalize = image_transforms(cfg)
        self.transform = v2.Compose([self.prepare, self.normalize])

    def __repr__(self) -> str:
        return (f"LoadedModel({self.source}, step {self.step}, {self.cfg.preset} {self.cfg.distribution}, "
                f"{self.cfg.in_channels}x{self.cfg.image_size}x{self.cfg.image_size}, on {self.device})")

    def as_batch(self, images) -> torch.Tensor:
        """A list of PIL images (transformed here) or a transformed tensor (N, C, H, W), checked."""
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != self.cfg.in_channels:
                raise ValueError(
                    f"images: expected a transformed batch (N, {self.cfg.in_channels}, H, W); got {tuple(images.shape)}"
                )
            return images
        if isinstance(images, Image.Image) or not isinstance(images, Sequence):
            raise TypeError(
                f"images: expected a list of PIL images or a tensor (N, C, H, W); got {type(images).__name__}"
            )
        if not images:
            return torch.empty(0, self.cfg.in_channels, self.cfg.image_size, self.cfg.image_size)
        return torch.stack([self.transform(image) for image in images])

    @torch.no_grad()
    def features_and_kappa(self, images, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(backbone features (N, feature_dim), kappa (N,) or None), float32 on the CPU; one pass for both.

        Eval mode (batch-norm running statistics): an image's values do not depend on its batch."""
        batch = self.as_batch(images)
        batch_size = batch_size or self.cfg.eval_batch_size
        features, kappas = [], []
        for start in range(0, len(batch), batch_size):
            f, kappa = self.network.embed(batch[start : start + batch_size].to(self.device, self.dtype))
            features.append(f.float().cpu())
            if kappa is not None:
                kappas.append(kappa.float().cpu())
        if not features:
            return torch.empty(0, self.feature_dim), (torch.empty(0) if self.has_kappa else None)
        return torch.cat(features), (torch.cat(kappas) if kappas else None)

    def kappa(self, images, batch_size: int | None = None) -> torch.Tensor:
        """(N,) float32: the predicted concentration of each image (low = uncertain)."""
        if not self.has_kappa:
            raise ConfigError(f"{self.source} was trained with distribution 'none' (plain SimSiam): it has no kappa")
        return self.features_and_kappa(images, batch_size)[1]

    def embed(self, images, batch_size: int | None = None) -> torch.Tensor:
        """(N, feature_dim) float32: the frozen backbone features kNN and the linear probe read."""
        return self.features_and_kappa(images, batch_size)[0]


def resolve_device(device: str) -> torch.device:
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: must be one of auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    return torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")


def config_from_dict(values: dict, where) -> config_lib.Config:
    known = {f.name for f in dataclasses.fields(config_lib.Config)}
    cfg = config_lib.Config(**{key: value for key, value in values.items() if key in known})
    try:
        config_lib.validate(cfg)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error
    return cfg


def read_run(run_dir: Path) -> tuple[config_lib.Config, dict, Path, list]:
    """(config, model state dict, checkpoint path, passed over) of the newest checkpoint that verifies."""
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"{run_dir} is not a pretraining run directory (no config.json)")
    cfg = config_lib.load(run_dir / "config.json")
    path, passed_over = ckpt.newest_valid(run_dir)
    state = ckpt.load(path)
    return cfg, {"model": state["model"], "step": state["step"]}, path, passed_over


def read_export(path: Path) -> tuple[config_lib.Config, dict]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_FILE_ERRORS as error:
        raise ConfigError(
            f"{path} is not a file written by vi_simsiam.export, or is damaged "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            "pass a run directory or an exported file"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise ConfigError(
            f"{path} is not a file written by vi_simsiam.export; pass a run directory or an exported file"
        )
    if payload.get("version", 0) > EXPORT_VERSION:
        raise ConfigError(f"{path} was exported by a newer vi_simsiam (format version {payload['version']})")
    return config_from_dict(payload["config"], path), payload


def _load(path, device: str = "auto") -> LoadedModel:
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"{path}: no such run directory or exported file")
    dev = resolve_device(device)
    if path.is_dir():
        cfg, state, source, passed_over = read_run(path)
    else:
        (cfg, state), source, passed_over = read_export(path), path, []
    return LoadedModel(cfg, trained_network(cfg, state, dev, source), dev, int(state["step"]), source, passed_over)


def trained_network(cfg: config_lib.Config, state: dict, device: torch.device, source: Path) -> VISimSiam:
    """The model of ``cfg`` with the weights ``state["model"]`` (read from ``source``), on ``device``, in
    eval mode; weights that do not fit the config beside them are a ConfigError."""
    network = build_model(cfg).to(device, getattr(torch, cfg.dtype))
    try:
        network.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ConfigError(f"{source}: the weights do not match its config ({str(error).splitlines()[0]})") from error
    return network.eval()


def load(path, device: str = "auto") -> LoadedModel:
    """The trained model of a run directory (its newest checkpoint that verifies; a warning names newer
    ones that did not) or of a file written by ``export``. ``device``: auto (CUDA if present) | cpu | cuda.
    A path that is neither is a ``ConfigError`` (a ``ValueError``)."""
    model = _load(path, device)
    for skipped, reason in model.passed_over:
        warnings.warn(f"{skipped} does not verify ({reason}); loaded {model.source} instead", stacklevel=2)
    return model


def export(run_dir, path) -> Path:
    """Writes the model of ``run_dir`` (its newest checkpoint that verifies) as one standalone file:
    config, weights, the training step and the checkpoint it came from; no optimizer or RNG state.
    ``load(path)`` reads it. Written to a temporary file and renamed, so a stop never leaves half a file."""
    run_dir, path = Path(run_dir).expanduser(), Path(path).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a pretraining run directory")
    cfg, state, source, passed_over = read_run(run_dir)
    for skipped, reason in passed_over:
        warnings.warn(f"{skipped} does not verify ({reason}); exporting {source} instead", stacklevel=2)
    payload = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "config": cfg.to_dict(),
        "model": {key: value.detach().cpu() for key, value in state["model"].items()},
        "step": int(state["step"]),
        "exported_from": str(source),
    }
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: the folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a file to share: the usual permissions, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
