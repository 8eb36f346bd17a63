"""Argument checks shared by the public functions: clear errors that name the argument."""

from __future__ import annotations

import math
import numbers

import torch

REDUCTIONS = ("mean", "sum", "none")
DISTRIBUTIONS = ("vmf", "power_spherical")


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    return reduction


def check_distribution(distribution, allowed=DISTRIBUTIONS) -> str:
    if distribution not in allowed:
        raise ValueError(f"distribution must be one of {allowed}; got {distribution!r}")
    return distribution


def check_kl_weight(kl_weight: float, family: int) -> None:
    """kl_weight finite and >= 0, and 0 for the cosine family (code 0); the messages of op_checks.h."""
    if not (math.isfinite(kl_weight) and kl_weight >= 0.0):
        raise ValueError(f"kl_weight must be finite and >= 0; got {kl_weight}")
    if family == 0 and kl_weight != 0.0:
        raise ValueError("kl_weight needs a distribution; distribution='none' has no KL term")


def check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim must be an int (the ambient dimension d of the sphere S^(d-1)); got {dim!r}")
    if dim < 2:
        raise ValueError(f"dim must be >= 2 (the ambient dimension d of the sphere S^(d-1)); got {dim}")
    return int(dim)


def _check_floating_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype (float16, bfloat16, float32, float64); got {x.dtype}")


def check_vectors(mu_name: str, mu, target_name: str, target) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (..., D) tensors of one shape and device, D >= 2; returned in their common dtype."""
    _check_floating_tensor(mu_name, mu)
    _check_floating_tensor(target_name, target)
    if mu.dim() == 0:
        raise ValueError(f"{mu_name} must have shape (..., D); got a 0-dim tensor")
    if mu.shape != target.shape:
        raise ValueError(
            f"{mu_name} and {target_name} must have the same shape (..., D); "
            f"got {tuple(mu.shape)} and {tuple(target.shape)}"
        )
    if mu.device != target.device:
        raise ValueError(f"{mu_name} and {target_name} must be on the same device; got {mu.device} and {target.device}")
    if mu.shape[-1] < 2:
        raise ValueError(
            f"the last dimension D of {mu_name} must be >= 2 (vectors on the sphere S^(D-1)); got D = {mu.shape[-1]}"
        )
    if mu.dtype != target.dtype:
        common = torch.promote_types(mu.dtype, target.dtype)
        mu, target = mu.to(common), target.to(common)
    return mu, target


def check_kappa(name: str, kappa, rows_shape: torch.Size, device: torch.device) -> torch.Tensor:
    """One concentration per row: shape ``rows_shape`` or ``rows_shape + (1,)``; a scalar applies to every row.

    Returns a tensor of shape ``rows_shape``. Never broadcasts a (B, 1) kappa against (B,) rows into (B, B).
    """
    if isinstance(kappa, numbers.Real) and not isinstance(kappa, bool):
        kappa = torch.tensor(float(kappa), device=device)
    _check_floating_tensor(name, kappa)
    if kappa.device != device:
        raise ValueError(f"{name} must be on the same device as the vectors ({device}); got {kappa.device}")
    rows_shape = torch.Size(rows_shape)
    if kappa.dim() == 0:
        return kappa.expand(rows_shape)
    if kappa.shape == rows_shape:
        return kappa
    if kappa.shape == rows_shape + (1,):
        return kappa.squeeze(-1)
    raise ValueError(
        f"{name} must hold one concentration per row: shape {tuple(rows_shape)} or {tuple(rows_shape + (1,))} "
        f"(or a scalar); got {tuple(kappa.shape)}"
    )


def check_kappa_values(name: str, kappa: torch.Tensor) -> None:
    """kappa finite and >= 0, for paths whose kernel does not check it itself.

    CPU tensors in eager mode: a ValueError now. Otherwise an asynchronous assert
    (no host synchronization): a device-side error at the next synchronization.
    """
    valid = (kappa >= 0) & torch.isfinite(kappa)
    message = f"{name} must be finite and >= 0"
    if kappa.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(valid.all()):
            bad = kappa[~valid].flatten()[0].item()
            raise ValueError(f"{message}; got {bad}")
    else:
        torch._assert_async(valid.all(), message)
