"""Argument checks of the distribution classes: clear errors that name the argument.

Shapes, dtypes and devices are always checked (no data is read). Values (a finite concentration
>= 0, a non-zero finite loc, samples on the sphere) are read only under ``validate_args``, as in
torch.distributions; eagerly on CPU tensors they raise ValueError at once, otherwise (CUDA tensors,
or under torch.compile) they become an asynchronous device-side assert with the same message, so no
host synchronization enters the hot path and ``torch.compile(fullgraph=True)`` traces them.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch.distributions import constraints

from .._validation import check_dim

__all__ = [
    "check_concentration",
    "check_dim",
    "check_loc",
    "check_same_dim",
    "check_value",
    "unit_sphere",
]


def _floating_tensor(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype (float16, bfloat16, float32, float64); got {x.dtype}")
    return x


def _require(valid: torch.Tensor, message: str, bad: torch.Tensor | None = None) -> None:
    """Raise ValueError(message) unless ``valid`` is all true (asynchronously off CPU or under compile)."""
    if valid.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(valid.all()):
            if bad is not None:
                message = f"{message}; got {bad[~valid].flatten()[0].item()}"
            raise ValueError(message)
    else:
        torch._assert_async(valid.all(), message)


def check_loc(loc, validate: bool) -> torch.Tensor:
    """loc: a floating (..., D) tensor, D >= 2; under ``validate`` also finite and non-zero per row."""
    loc = _floating_tensor("loc", loc)
    if loc.dim() == 0:
        raise ValueError("loc must have shape (..., D), the mean direction(s) in R^D; got a 0-dim tensor")
    if loc.shape[-1] < 2:
        raise ValueError(
            f"the last dimension D of loc must be >= 2 (directions on the sphere S^(D-1)); got shape {tuple(loc.shape)}"
        )
    if validate and loc.numel():
        # The Euclidean norm is one vectorized pass (isfinite/!= 0 passes cost 20-30x more on a CPU):
        # it is finite and positive for every valid row. Only rows where it is not (a non-finite or zero
        # row, or a finite one whose squares overflow or underflow) get the exact check, max |loc_i|.
        # Off the CPU (and under compile) the exact check runs on every row: selecting rows would wait for
        # the device (or give the graph a data-dependent shape).
        rows = loc
        if loc.device.type == "cpu" and not torch.compiler.is_compiling():
            norm = torch.linalg.vector_norm(loc, dim=-1)
            rows = loc[~(torch.isfinite(norm) & (norm > 0))]
        largest = torch.linalg.vector_norm(rows, ord=math.inf, dim=-1)
        _require(torch.isfinite(largest), "loc must be finite")
        _require(largest > 0, "loc must be a non-zero vector in every row (it is normalized inside)")
    return loc


def check_concentration(concentration, batch_shape: torch.Size, loc: torch.Tensor, validate: bool) -> torch.Tensor:
    """One concentration per row of loc: shape batch_shape, batch_shape + (1,), or a scalar (a Python
    number or a 0-dim tensor) for every row. Returns a tensor of shape batch_shape, never (B, B)."""
    if isinstance(concentration, numbers.Real) and not isinstance(concentration, bool):
        concentration = torch.tensor(float(concentration), dtype=loc.dtype, device=loc.device)
    concentration = _floating_tensor("concentration", concentration)
    if concentration.device != loc.device:
        raise ValueError(
            f"concentration must be on the same device as loc ({loc.device}); got {concentration.device}"
        )
    batch_shape = torch.Size(batch_shape)
    if concentration.dim() == 0:
        concentration = concentration.expand(batch_shape)
    elif concentration.shape == batch_shape + (1,):
        concentration = concentration.squeeze(-1)
    elif concentration.shape != batch_shape:
        raise ValueError(
            f"concentration must hold one value per row of loc: shape {tuple(batch_shape)} or "
            f"{tuple(batch_shape + (1,))} (or a scalar) for loc of shape {tuple(batch_shape)} + (D,); "
            f"got {tuple(concentration.shape)}"
        )
    if validate and concentration.numel():
        valid = (concentration >= 0) & torch.isfinite(concentration)
        _require(valid, "concentration must be finite and >= 0", concentration)
    return concentration


def check_same_dim(p_name: str, p_dim: int, q_name: str, q_dim: int) -> None:
    if p_dim != q_dim:
        raise ValueError(f"{p_name} and {q_name} must live on one sphere; got dimensions D = {p_dim} and D = {q_dim}")


def _sphere_tolerance(dtype: torch.dtype) -> float:
    return math.sqrt(torch.finfo(dtype).eps)


def check_value(value, dim: int, device: torch.device, batch_shape: torch.Size, validate: bool) -> torch.Tensor:
    """A sample (..., D) for log_prob: floating, same device, last dim D, broadcastable against the
    batch; under ``validate`` on the unit sphere within sqrt(eps) of its dtype."""
    value = _floating_tensor("value", value)
    if value.device != device:
        raise ValueError(f"value must be on the distribution's device ({device}); got {value.device}")
    if value.dim() == 0 or value.shape[-1] != dim:
        raise ValueError(f"value must have shape (..., {dim}) (points on S^{dim - 1}); got {tuple(value.shape)}")
    try:
        torch.broadcast_shapes(value.shape[:-1], batch_shape)
    except RuntimeError:
        raise ValueError(
            f"value of shape {tuple(value.shape)} does not broadcast against the batch shape {tuple(batch_shape)} + ({dim},)"
        ) from None
    if validate and value.numel():
        norm = value.to(torch.float64).norm(dim=-1)
        _require((norm - 1).abs() <= _sphere_tolerance(value.dtype), "value must lie on the unit sphere (norm 1)", norm)
    return value


class _UnitSphere(constraints.Constraint):
    """Vectors of norm 1 (within sqrt(eps) of their dtype), the support of the spherical distributions."""

    is_discrete = False
    event_dim = 1

    def check(self, value: torch.Tensor) -> torch.Tensor:
        norm = value.to(torch.float64).norm(dim=-1)
        return (norm - 1).abs() <= _sphere_tolerance(value.dtype)

    def __repr__(self) -> str:
        return "unit_sphere()"


unit_sphere = _UnitSphere()
