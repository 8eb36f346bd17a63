"""The von Mises-Fisher distribution vMF(mu, kappa) on S^{D-1}.

    p(x) = C_vMF(kappa, D) exp(kappa mu . x),  C_vMF = kappa^nu / ((2 pi)^{nu+1} I_nu(kappa)),  nu = D/2 - 1

log_prob, entropy and the normalizer come from this package's fused ops (log I_nu by Olver's
expansion: finite at D = 2048 and beyond, where SciPy's ive underflows); sampling in ``_spherical``
(Wood's rejection sampler without cancellation, the inverse CDF at D = 3, implicit gradients).
"""

from __future__ import annotations

import torch

from .. import functional
from ._spherical import SphericalDistribution


def bessel_ratio(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """A_D(kappa) = I_{D/2}(kappa) / I_{D/2-1}(kappa) = -d log C_vMF / d kappa = E[mu . x]; same shape."""
    return -functional._normalizer_quantity(kappa, dim, "vmf", "dlog_normalizer")


class VonMisesFisher(SphericalDistribution):
    """vMF(loc, concentration): loc (..., D), normalized inside; concentration (...) or (..., 1), >= 0.

    batch_shape = loc.shape[:-1], event_shape = (D,). ``rsample(sample_shape)`` ->
    sample_shape + batch_shape + (D,), reparameterized in loc and concentration.
    """

    family = "vmf"

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(value) = log C_vMF + kappa loc . value: value (..., D) broadcast against
        batch_shape + (D,) -> the broadcast batch shape; float32 (float64 for float64 inputs)."""
        loc, value, kappa = self._broadcast_for_value(value)
        return -functional.vmf_nll(loc, value, kappa, reduction="none")

    def entropy(self) -> torch.Tensor:
        """H = -log C_vMF - kappa A_D(kappa): batch_shape."""
        return functional.vmf_entropy(self._concentration, self.dim)

    def mean_resultant_length(self) -> torch.Tensor:
        """E[loc . x] = A_D(kappa): batch_shape."""
        return bessel_ratio(self._concentration, self.dim)
