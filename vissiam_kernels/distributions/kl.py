"""Closed-form KL divergences, registered with ``torch.distributions.kl_divergence``.

    KL(PS || U)      = log |S^{D-1}| - H_PS
    KL(vMF || U)     = log |S^{D-1}| - H_vMF
    KL(vMF1 || vMF2) = log C(k1) - log C(k2) + A(k1) (k1 - k2 mu1 . mu2),     A = -d log C / dk = E_1[mu1 . x]
    KL(PS || vMF)    = -H_PS - log C_vMF(k2) - k2 E_PS[t] mu1 . mu2,          E_PS[t] = k1 / (D - 1 + k1)
    KL(U || U)       = 0

(E_p[log p - log q] with E_p[x] = E_p[t] mu_p.) The normalizers, entropies and A come from the
package's ops; the batch shapes broadcast.
"""

from __future__ import annotations

import torch
from torch.distributions import register_kl

from .. import functional
from . import _checks
from .power_spherical import PowerSpherical
from .uniform import HypersphericalUniform
from .von_mises_fisher import VonMisesFisher, bessel_ratio


def _cosine_of_means(p, q) -> torch.Tensor:
    return (p.loc * q.loc).sum(-1)


def _with_batch(kl: torch.Tensor, p, q) -> torch.Tensor:
    return kl.expand(torch.broadcast_shapes(p.batch_shape, q.batch_shape))


@register_kl(PowerSpherical, HypersphericalUniform)
def _kl_power_spherical_uniform(p, q):
    _checks.check_same_dim("p", p.dim, "q", q.dim)
    return _with_batch(functional.power_spherical_kl_uniform(p.concentration, p.dim), p, q)


@register_kl(VonMisesFisher, HypersphericalUniform)
def _kl_vmf_uniform(p, q):
    _checks.check_same_dim("p", p.dim, "q", q.dim)
    return _with_batch(functional.vmf_kl_uniform(p.concentration, p.dim), p, q)


@register_kl(VonMisesFisher, VonMisesFisher)
def _kl_vmf_vmf(p, q):
    _checks.check_same_dim("p", p.dim, "q", q.dim)
    k1, k2 = p.concentration, q.concentration
    log_c1 = functional.vmf_log_normalizer(k1, p.dim)
    log_c2 = functional.vmf_log_normalizer(k2, p.dim)
    return log_c1 - log_c2 + bessel_ratio(k1, p.dim) * (k1 - k2 * _cosine_of_means(p, q))


@register_kl(PowerSpherical, VonMisesFisher)
def _kl_power_spherical_vmf(p, q):
    _checks.check_same_dim("p", p.dim, "q", q.dim)
    k2 = q.concentration
    mean_cosine = p.mean_resultant_length()
    entropy = functional.power_spherical_entropy(p.concentration, p.dim)
    return -entropy - functional.vmf_log_normalizer(k2, p.dim) - k2 * mean_cosine * _cosine_of_means(p, q)


@register_kl(HypersphericalUniform, HypersphericalUniform)
def _kl_uniform_uniform(p, q):
    _checks.check_same_dim("p", p.dim, "q", q.dim)
    return torch.zeros(torch.broadcast_shapes(p.batch_shape, q.batch_shape), dtype=p.dtype, device=p.device)
