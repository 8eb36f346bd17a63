"""The optimizer's setup: parameter groups and their learning rates (SimSiam's lr x batch / 256, the
predictor's fixed lr, the kappa head's scale), the warmup + cosine schedule, and the AMP dtype."""

from __future__ import annotations

import math

import torch

from . import config as config_lib
from .builder import VISimSiam
from .errors import ConfigError


def param_groups(model: VISimSiam, cfg: config_lib.Config) -> list[dict]:
    """encoder + projector | predictor (fixed lr after warmup with fix_pred_lr, as SimSiam) | kappa head.

    The kappa head's lr is multiplied by its ``lr_scale`` (1 / (d - 1): see ``builder.KappaHead``).
    """
    lr = cfg.lr * cfg.batch_size / 256
    groups = [
        {"name": "encoder", "params": [*model.encoder.parameters(), *model.projector.parameters()], "lr": lr},
        {"name": "predictor", "params": list(model.predictor.parameters()), "lr": lr},
    ]
    if model.kappa_head is not None:
        groups.append(
            {"name": "kappa_head", "params": list(model.kappa_head.parameters()), "lr": lr * model.kappa_head.lr_scale}
        )
    return groups


def lr_lambdas(cfg: config_lib.Config, steps_per_epoch: int, groups: list[dict]):
    """Per-group multipliers of the step index: linear warmup, then cosine to 0 (or constant)."""
    # A run shorter than the warmup (a smoke test) warms up over the whole run.
    total, warmup = cfg.epochs * steps_per_epoch, min(cfg.warmup_epochs, cfg.epochs) * steps_per_epoch

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    def constant(step: int) -> float:
        return (step + 1) / warmup if step < warmup else 1.0

    return [constant if (g["name"] == "predictor" and cfg.fix_pred_lr) else cosine for g in groups]


def resolve_amp(cfg: config_lib.Config, device: torch.device) -> torch.dtype | None:
    if cfg.dtype != "float32":
        return None
    if cfg.amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if cfg.amp == "none":
        return None
    if device.type != "cuda":
        raise ConfigError(f"--amp {cfg.amp} needs a CUDA device (on CPU pass --amp none)")
    return torch.bfloat16 if cfg.amp == "bf16" else torch.float16
