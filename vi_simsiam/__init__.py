"""vi_simsiam: the VI-SimSiam model (SimSiam + a per-image concentration kappa) and its scripts.

    from vi_simsiam import VISimSiam, build_model, resolve
    cfg = resolve("digits")            # a preset, with overrides as keyword arguments
    model = build_model(cfg)
    out = model(x1, x2)                # p1, p2, z1, z2 (N, dim); kappa1, kappa2 (N,)
    loss = model.loss(out)             # one call into vissiam_kernels.vi_simsiam_loss

Command line: ``vi-simsiam pretrain`` (see ``vi_simsiam.cli``).
"""

from .builder import KappaHead, VISimSiam, build_model
from .config import PRESETS, Config, resolve
from .data import ConfigError
from .loading import export, load

__all__ = ["PRESETS", "Config", "ConfigError", "KappaHead", "VISimSiam", "build_model", "export", "load", "resolve"]
