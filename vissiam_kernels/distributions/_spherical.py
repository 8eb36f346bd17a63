"""What the power spherical and von Mises-Fisher distributions share: parameters and their checks,
shapes, ``expand``, and the reparameterized sampler

    theta ~ law of the angle to the mean (``_angle_draws``),   t = cos theta,  s = sin theta,
    x = H [t, s v],  v = noise / |noise| uniform on S^{D-2},  H the Householder map e1 -> loc

(``vissiam_kernels._sampling_ops.sphere_sample_seeded``: the noise drawn inside the kernel from a seed
that ``_angle_draws`` takes from torch's generator). Gradients reach loc through the transform and
the concentration through ``_AngleCosSin``: d theta / d kappa of the implicit reparameterization
(``_angle_law.angle_kappa_derivative``), exact and unbiased for both families (never a gradient
through Wood's accept step). The per-row scalar work is float64 whatever the dtype of loc.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, constraints
from torch.distributions.utils import lazy_property

from .. import _sampling_ops
from ..reference import NORMALIZE_EPS
from . import _angle_draws, _angle_law, _checks


class _AngleCosSin(torch.autograd.Function):
    """(t, s) = (cos theta, sin theta) of a drawn angle, with d theta / d kappa in backward:
    dL/dkappa = (-dL/dt s + dL/ds t) d theta/d kappa.

    d theta / d kappa is the implicit reparameterization of the angle's law at fixed CDF
    (``_angle_law.angle_kappa_derivative``: exact to ~1e-14 of its quadrature, fused on the CPU), for
    both families. For power spherical this is the Beta draw's own implicit gradient ((1 + t)/2 ~
    Beta(a, b)); torch's Gamma reparameterization gradient through X ~ Gamma(a) was used before and
    is off by up to 2.6e-4 relative for a < 1e3 (tests/test_distributions_gradients.py measures it).
    theta, kappa: (N,) float64; kappa gets the gradient.
    """

    @staticmethod
    def forward(ctx, theta, kappa, dim: int, family: str):
        ctx.save_for_backward(theta, kappa)
        ctx.dim, ctx.family = dim, family
        return torch.cos(theta), torch.sin(theta)

    @staticmethod
    def backward(ctx, grad_t, grad_s):
        theta, kappa = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None, None, None
        dtheta = _angle_law.angle_kappa_derivative(theta, kappa.detach(), ctx.dim, ctx.family)
        grad_theta = grad_s * torch.cos(theta) - grad_t * torch.sin(theta)
        return None, grad_theta * dtheta, None, None


class SphericalDistribution(Distribution):
    """A distribution on the unit sphere S^{D-1} in R^D with a mean direction and a concentration.

    loc: (..., D), normalized inside (``F.normalize`` semantics); concentration: (...) or (..., 1)
    or a scalar, one value per row. batch_shape = loc.shape[:-1], event_shape = (D,).
    Subclasses set ``family`` and the closed forms (log_prob, entropy, mean resultant length).
    """

    family: str = ""
    arg_constraints: ClassVar[dict] = {"loc": constraints.real_vector, "concentration": constraints.nonnegative}
    support = _checks.unit_sphere
    has_rsample = True

    def __init__(self, loc, concentration, validate_args=None):
        validate = Distribution._validate_args if validate_args is None else bool(validate_args)
        loc = _checks.check_loc(loc, validate)
        batch_shape = loc.shape[:-1]
        self._concentration = _checks.check_concentration(concentration, batch_shape, loc, validate)
        self._raw_loc = loc  # the sampler and the NLL ops normalize it themselves, in one pass
        super().__init__(batch_shape, loc.shape[-1:], validate_args=False)
        self._validate_args = validate

    # ------------------------------------------------------------------ parameters
    @property
    def dim(self) -> int:
        """D, the ambient dimension (the sphere is S^{D-1})."""
        return self._event_shape[0]

    @lazy_property
    def loc(self) -> torch.Tensor:
        """The mean direction, normalized: (*batch_shape, D)."""
        return F.normalize(self._raw_loc, dim=-1, eps=NORMALIZE_EPS)

    @property
    def concentration(self) -> torch.Tensor:
        """kappa >= 0, one per row: batch_shape."""
        return self._concentration

    @property
    def mode(self) -> torch.Tensor:
        """loc (the density is largest there for kappa > 0; at kappa = 0 every point is a mode)."""
        return self.loc

    @property
    def mean(self) -> torch.Tensor:
        """E[x] = E[loc . x] loc: (*batch_shape, D)."""
        return self.mean_resultant_length()[..., None].to(self.loc.dtype) * self.loc

    def mean_resultant_length(self) -> torch.Tensor:
        """E[loc . x], batch_shape."""
        raise NotImplementedError

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        new._raw_loc = self._raw_loc.expand(batch_shape + self._event_shape)
        new._concentration = self._concentration.expand(batch_shape)
        if "loc" in self.__dict__:
            new.loc = self.loc.expand(batch_shape + self._event_shape)
        super(SphericalDistribution, new).__init__(batch_shape, self._event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    # ------------------------------------------------------------------ sampling
    def rsample(self, sample_shape=()) -> torch.Tensor:
        """A reparameterized draw: sample_shape + batch_shape + (D,) in loc's dtype, differentiable
        in loc and concentration."""
        shape = self._extended_shape(torch.Size(sample_shape))
        dim = self.dim
        rows = math.prod(shape[:-1])
        loc = self._raw_loc.expand(shape).reshape(rows, dim)
        kappa = self._concentration.to(torch.float64).expand(shape[:-1]).reshape(rows)
        theta, seed = _angle_draws.draw_angles(kappa.detach(), dim, self.family)
        t, s = _AngleCosSin.apply(theta, kappa, dim, self.family)
        return _sampling_ops.sphere_sample_seeded(loc, t, s, seed).reshape(shape)

    # ------------------------------------------------------------------ likelihood
    def _broadcast_for_value(self, value: torch.Tensor):
        """loc, value (..., D) and concentration (...) broadcast to one row shape (the concentration as
        a per-row value, never against the vector dimension)."""
        value = _checks.check_value(value, self.dim, self._raw_loc.device, self._batch_shape, self._validate_args)
        shape = torch.broadcast_shapes(value.shape, self._raw_loc.shape)
        return self._raw_loc.expand(shape), value.expand(shape), self._concentration.expand(shape[:-1])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(loc: {tuple(self._raw_loc.shape)}, concentration: {tuple(self._concentration.shape)})"
