"""The uniform distribution on the sphere S^{D-1}, the prior of hyperspherical VAEs."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.distributions import Distribution

from ..reference import NORMALIZE_EPS, log_sphere_area
from . import _checks


class HypersphericalUniform(Distribution):
    """Uniform on S^{dim-1} in R^dim: event_shape = (dim,), batch_shape = () (or as expanded).

    dim: the ambient dimension D >= 2; device, dtype: of samples and log-densities (torch's defaults
    when None). log p = -log |S^{D-1}|, |S^{D-1}| = 2 pi^{D/2} / Gamma(D/2).
    """

    arg_constraints: ClassVar[dict] = {}
    support = _checks.unit_sphere
    has_rsample = True

    def __init__(self, dim, device=None, dtype=None, validate_args=None, batch_shape=()):
        dim = _checks.check_dim(dim)
        self._device = torch.device(device) if device is not None else torch.empty(0).device
        self._dtype = dtype if dtype is not None else torch.get_default_dtype()
        if not self._dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype (float16, bfloat16, float32, float64); got {self._dtype}")
        super().__init__(torch.Size(batch_shape), torch.Size([dim]), validate_args=validate_args)

    @property
    def dim(self) -> int:
        return self._event_shape[0]

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(HypersphericalUniform, _instance)
        new._device, new._dtype = self._device, self._dtype
        Distribution.__init__(new, torch.Size(batch_shape), self._event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=()) -> torch.Tensor:
        """sample_shape + batch_shape + (D,): standard normal vectors, normalized."""
        shape = self._extended_shape(torch.Size(sample_shape))
        return F.normalize(torch.randn(shape, device=self._device, dtype=self._dtype), dim=-1, eps=NORMALIZE_EPS)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """-log |S^{D-1}| for each point: value (..., D) -> broadcast batch shape, in value's dtype."""
        value = _checks.check_value(value, self.dim, self._device, self._batch_shape, self._validate_args)
        shape = torch.broadcast_shapes(value.shape[:-1], self._batch_shape)
        return torch.full(shape, -log_sphere_area(self.dim), dtype=value.dtype, device=value.device)

    def entropy(self) -> torch.Tensor:
        """log |S^{D-1}|: batch_shape."""
        return torch.full(self._batch_shape, log_sphere_area(self.dim), dtype=self._dtype, device=self._device)

    @property
    def mean(self) -> torch.Tensor:
        return torch.zeros(self._batch_shape + self._event_shape, dtype=self._dtype, device=self._device)

    def __repr__(self) -> str:
        return f"HypersphericalUniform(dim: {self.dim})"
