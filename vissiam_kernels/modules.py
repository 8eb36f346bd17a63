"""nn.Module wrappers of the losses, mirroring the functional signatures."""

from __future__ import annotations

import torch
from torch import nn

from . import functional
from ._validation import DISTRIBUTIONS, check_distribution, check_reduction


class VMFLoss(nn.Module):
    """``VMFLoss(distribution="vmf", reduction="mean")(p, z, kappa=None)`` = ``vmf_loss(p, z, kappa, ...)``.

    p, z: (..., D); kappa: (...) or None (plain SimSiam cosine loss).
    """

    def __init__(self, distribution: str = "vmf", reduction: str = "mean"):
        super().__init__()
        check_distribution(distribution)
        check_reduction(reduction)
        self.distribution = distribution
        self.reduction = reduction

    def forward(self, p: torch.Tensor, z: torch.Tensor, kappa: torch.Tensor | None = None) -> torch.Tensor:
        return functional.vmf_loss(p, z, kappa, distribution=self.distribution, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"distribution={self.distribution!r}, reduction={self.reduction!r}"


class VISimSiamLoss(nn.Module):
    """``VISimSiamLoss(distribution="power_spherical", kl_weight=0.0)(p1, p2, z1, z2, kappa1, kappa2)``.

    See :func:`vissiam_kernels.vi_simsiam_loss`; p*, z*: (..., D), kappa*: (...).
    """

    def __init__(self, distribution: str = "power_spherical", kl_weight: float = 0.0, reduction: str = "mean"):
        super().__init__()
        check_distribution(distribution, DISTRIBUTIONS + ("none",))
        check_reduction(reduction)
        self.distribution = distribution
        self.kl_weight = float(kl_weight)
        self.reduction = reduction

    def forward(self, p1, p2, z1, z2, kappa1=None, kappa2=None) -> torch.Tensor:
        return functional.vi_simsiam_loss(
            p1, p2, z1, z2, kappa1, kappa2,
            distribution=self.distribution, kl_weight=self.kl_weight, reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return f"distribution={self.distribution!r}, kl_weight={self.kl_weight}, reduction={self.reduction!r}"
