"""The sampling transform x = H [t, s v] (see sampling_reference.py), through the backend that
``_dispatch`` picks. Only the reference is wired in so far; the fused kernels replace it here."""

from __future__ import annotations

import torch

from . import _dispatch
from .sampling_reference import householder_transform


def sphere_transform(loc: torch.Tensor, t: torch.Tensor, s: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """loc (N, D); t, s (N,) float64 cosine and sine of the angle to the mean; noise (N, D-1) standard
    normal -> x (N, D) in loc's dtype, differentiable in loc, t, s."""
    return householder_transform(loc, t, s, noise)
