"""Pure-PyTorch reference of every op, computed in the inputs' dtype (float64-capable).

Tests compare the fused kernels with this module evaluated in float64, and the
benchmarks time it (eager and ``torch.compile``) in float32, where it is the
"plain PyTorch" implementation: ``torch.lgamma`` differences, ``torch.digamma``,
autograd for the gradients. Half-precision inputs are computed in float32.

The vMF normalizer needs log I_nu(kappa) for large orders, which PyTorch lacks;
it is written here with the same method as csrc/include/vissiam/special_functions.h
(Olver's uniform expansion for nu >= 30, downward ratio recurrence below), in
differentiable torch operations. Both are checked against the mpmath golden table.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NORMALIZE_EPS = 1e-12
"""``F.normalize``'s eps: x / max(|x|, eps)."""

POWER_SPHERICAL_ONE_PLUS_COS_FLOOR = 1e-12
"""1 + cos is floored here in the power spherical NLL, so an antipodal target has a finite NLL."""

OLVER_MIN_ORDER = 30.0

_LOG2 = math.log(2.0)
_LOGPI = math.log(math.pi)
_LOG2PI = math.log(2.0 * math.pi)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half inputs compute in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def log_sphere_area(dim: int) -> float:
    """log |S^{dim-1}| = log 2 + (dim/2) log pi - lgamma(dim/2)."""
    return _LOG2 + 0.5 * dim * _LOGPI - math.lgamma(0.5 * dim)


# ---------------------------------------------------------------- power spherical
def power_spherical_log_normalizer(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """log C_PS = -[(a+b) log 2 + b log pi + lgamma(a) - lgamma(a+b)], b = (d-1)/2, a = b + kappa."""
    kappa = kappa.to(compute_dtype(kappa))
    beta = 0.5 * (dim - 1)
    alpha = beta + kappa
    return -((alpha + beta) * _LOG2 + beta * _LOGPI + torch.lgamma(alpha) - torch.lgamma(alpha + beta))


def power_spherical_dlog_normalizer(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """d/dkappa log C_PS = -[log 2 + psi(a) - psi(a+b)]."""
    kappa = kappa.to(compute_dtype(kappa))
    beta = 0.5 * (dim - 1)
    return -(_LOG2 + torch.digamma(beta + kappa) - torch.digamma(kappa + 2 * beta))


def power_spherical_entropy(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """H = -log C_PS + kappa * dlogC/dkappa."""
    return -power_spherical_log_normalizer(kappa, dim) + kappa * power_spherical_dlog_normalizer(kappa, dim)


def power_spherical_kl_uniform(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    return log_sphere_area(dim) - power_spherical_entropy(kappa, dim)


# ---------------------------------------------------------------- Bessel functions
def _olver_correction(p: torch.Tensor, nu: float) -> torch.Tensor:
    """sum_{k=1..5} U_k(p) / nu^k (DLMF 10.41.10)."""
    p2 = p * p
    u1 = p * (3 - 5 * p2) / 24
    u2 = p2 * (81 + p2 * (-462 + p2 * 385)) / 1152
    u3 = p * p2 * (30375 + p2 * (-369603 + p2 * (765765 + p2 * -425425))) / 414720
    u4 = p2 * p2 * (4465125 + p2 * (-94121676 + p2 * (349922430 + p2 * (-446185740 + p2 * 185910725)))) / 39813120
    u5 = (
        p * p2 * p2
        * (1519035525 + p2 * (-49286948607 + p2 * (284499769554 + p2 * (-614135872350
           + p2 * (566098157625 + p2 * -188699385875)))))
        / 6688604160
    )
    r = 1.0 / nu
    return r * (u1 + r * (u2 + r * (u3 + r * (u4 + r * u5))))


def _olver_log_bessel_i_scaled(nu: float, x: torch.Tensor) -> torch.Tensor:
    s = torch.sqrt(nu * nu + x * x)
    return s - nu * torch.log(nu + s) - 0.5 * _LOG2PI - 0.5 * torch.log(s) + torch.log1p(_olver_correction(nu / s, nu))


def _olver_bessel_ratio(nu: float, x: torch.Tensor) -> torch.Tensor:
    s0 = torch.sqrt(nu * nu + x * x)
    s1 = torch.sqrt((nu + 1) ** 2 + x * x)
    ds = (2 * nu + 1) / (s1 + s0)
    log_rest = (
        ds
        - nu * torch.log1p((1 + ds) / (nu + s0))
        - 0.5 * torch.log1p(ds / s0)
        + torch.log1p(_olver_correction((nu + 1) / s1, nu + 1))
        - torch.log1p(_olver_correction(nu / s0, nu))
    )
    return x / (nu + 1 + s1) * torch.exp(log_rest)


def _olver_shift(nu: float) -> int:
    return 0 if nu >= OLVER_MIN_ORDER else math.ceil(OLVER_MIN_ORDER - nu)


def bessel_ratio(nu: float, x: torch.Tensor) -> torch.Tensor:
    """I_{nu+1}(x) / I_nu(x), nu >= 0, x >= 0."""
    n = _olver_shift(nu)
    ratio = _olver_bessel_ratio(nu + n, x)
    for j in range(n - 1, -1, -1):
        ratio = x / (2 * (nu + j + 1) + x * ratio)
    return ratio


def log_bessel_i_scaled(nu: float, x: torch.Tensor) -> torch.Tensor:
    """log I_nu(x) - nu log x, finite at x = 0."""
    n = _olver_shift(nu)
    result = _olver_log_bessel_i_scaled(nu + n, x)
    if n:
        ratio = _olver_bessel_ratio(nu + n, x)
        for j in range(n - 1, -1, -1):
            denominator = 2 * (nu + j + 1) + x * ratio
            result = result + torch.log(denominator)
            ratio = x / denominator
    return result


def log_bessel_i(nu: float, x: torch.Tensor) -> torch.Tensor:
    """log I_nu(x) (-inf at x = 0 for nu > 0)."""
    return log_bessel_i_scaled(nu, x) + (nu * torch.log(x) if nu else 0.0)


# ---------------------------------------------------------------- von Mises-Fisher
def vmf_log_normalizer(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """log C_vMF = nu log kappa - (nu+1) log 2 pi - log I_nu(kappa), nu = d/2 - 1."""
    kappa = kappa.to(compute_dtype(kappa))
    nu = 0.5 * dim - 1
    return -(nu + 1) * _LOG2PI - log_bessel_i_scaled(nu, kappa)


def vmf_dlog_normalizer(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """d/dkappa log C_vMF = -I_{d/2}(kappa) / I_{d/2-1}(kappa)."""
    kappa = kappa.to(compute_dtype(kappa))
    return -bessel_ratio(0.5 * dim - 1, kappa)


def vmf_entropy(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    return -vmf_log_normalizer(kappa, dim) + kappa * vmf_dlog_normalizer(kappa, dim)


def vmf_kl_uniform(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    return log_sphere_area(dim) - vmf_entropy(kappa, dim)


# ---------------------------------------------------------------- likelihoods
def cosine(mu: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """cos(mu, target) with F.normalize semantics, in the compute dtype. (..., D) -> (...)."""
    dtype = compute_dtype(mu, target)
    mu_n = F.normalize(mu.to(dtype), dim=-1, eps=NORMALIZE_EPS)
    target_n = F.normalize(target.to(dtype), dim=-1, eps=NORMALIZE_EPS)
    return (mu_n * target_n).sum(-1)


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def power_spherical_nll(mu, target, kappa, reduction: str = "mean") -> torch.Tensor:
    """-log C_PS(kappa) - kappa log1p(cos), with 1 + cos floored at POWER_SPHERICAL_ONE_PLUS_COS_FLOOR."""
    c = cosine(mu, target)
    kappa = kappa.to(c.dtype) if kappa.dtype != torch.float64 else kappa
    log1p_cos = torch.log(torch.clamp(1 + c, min=POWER_SPHERICAL_ONE_PLUS_COS_FLOOR))
    nll = -power_spherical_log_normalizer(kappa, mu.shape[-1]) - kappa * log1p_cos
    return reduce(nll, reduction)


def vmf_nll(mu, target, kappa, reduction: str = "mean") -> torch.Tensor:
    """-log C_vMF(kappa) - kappa cos."""
    c = cosine(mu, target)
    kappa = kappa.to(c.dtype) if kappa.dtype != torch.float64 else kappa
    nll = -vmf_log_normalizer(kappa, mu.shape[-1]) - kappa * c
    return reduce(nll, reduction)


def cosine_nll(mu, target, reduction: str = "mean") -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, z) per row."""
    return reduce(-cosine(mu, target), reduction)


def vi_simsiam_loss(p1, p2, z1, z2, kappa1=None, kappa2=None, *, distribution="power_spherical",
                    kl_weight=0.0, reduction="mean"):
    """1/2 [NLL(sg z2 | p1, k1) + NLL(sg z1 | p2, k2)] + kl_weight * KL(q || uniform), per row then reduced."""
    z1, z2 = z1.detach(), z2.detach()
    if distribution == "none":
        loss = 0.5 * (cosine_nll(p1, z2, "none") + cosine_nll(p2, z1, "none"))
        return reduce(loss, reduction)
    nll = power_spherical_nll if distribution == "power_spherical" else vmf_nll
    loss = 0.5 * (nll(p1, z2, kappa1, "none") + nll(p2, z1, kappa2, "none"))
    if kl_weight:
        kl = power_spherical_kl_uniform if distribution == "power_spherical" else vmf_kl_uniform
        dim = p1.shape[-1]
        loss = loss + kl_weight * 0.5 * (kl(kappa1, dim) + kl(kappa2, dim))
    return reduce(loss, reduction)
