"""Spherical distributions as ``torch.distributions``: exact fused log-likelihoods, reparameterized
samplers with exact concentration gradients at any dimension, closed-form KL divergences.

    from vissiam_kernels.distributions import PowerSpherical, VonMisesFisher, HypersphericalUniform
    q = PowerSpherical(loc, concentration)       # loc (..., D); concentration (...) or (..., 1)
    z = q.rsample()                              # (..., D), differentiable in loc and concentration
    kl = torch.distributions.kl_divergence(q, HypersphericalUniform(D, device=loc.device))

Registered KLs: (PowerSpherical, HypersphericalUniform), (VonMisesFisher, HypersphericalUniform),
(VonMisesFisher, VonMisesFisher), (PowerSpherical, VonMisesFisher), (HypersphericalUniform,
HypersphericalUniform).
"""

from . import kl as _kl  # noqa: F401  (registers the KL divergences)
from .power_spherical import PowerSpherical
from .uniform import HypersphericalUniform
from .von_mises_fisher import VonMisesFisher

__all__ = ["HypersphericalUniform", "PowerSpherical", "VonMisesFisher"]
