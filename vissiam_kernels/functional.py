"""The public functions: validation, then one call into the backend chosen by ``_dispatch``.

Shapes: vectors ``mu``/``target``/``p``/``z`` are (..., D) and normalized inside
(``F.normalize`` semantics, eps = 1e-12); ``kappa`` is (...) — one concentration
per row — or (..., 1), or a scalar. Losses with ``reduction="none"`` have shape
(...). Losses come back in float32 for float16/bfloat16/float32 inputs and in
float64 when an input is float64; gradients come back in each input's dtype.
An empty batch gives what torch's reductions give: NaN for "mean", 0 for "sum".
"""

from __future__ import annotations

import numbers

import torch

from . import _composed, _dispatch
from ._codes import FAMILY_CODES, REDUCTION_CODES
from ._validation import DISTRIBUTIONS, REDUCTIONS, check_dim, check_distribution

_COSINE = FAMILY_CODES["none"]


# ---------------------------------------------------------------- normalizers
def _normalizer_quantity(kappa, dim: int, family: str, quantity: str) -> torch.Tensor:
    dim = check_dim(dim)
    if not isinstance(kappa, torch.Tensor):
        kappa = torch.as_tensor(kappa, dtype=torch.get_default_dtype())
    if not kappa.is_floating_point():
        raise TypeError(f"kappa must have a floating dtype; got {kappa.dtype}")
    return _composed.normalizer_quantity(_dispatch.select_backend(kappa.device), kappa, dim, family, quantity)


def power_spherical_log_normalizer(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """log C_PS(kappa, d) of the power spherical density on S^{d-1}; kappa: any shape -> same shape.

    log C_PS = -[(a+b) log 2 + b log pi + lgamma(a) - lgamma(a+b)], b = (d-1)/2, a = b + kappa.
    """
    return _normalizer_quantity(kappa, dim, "power_spherical", "log_normalizer")


def vmf_log_normalizer(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """log C_vMF(kappa, d) = nu log kappa - (nu+1) log 2 pi - log I_nu(kappa), nu = d/2 - 1; kappa -> same shape."""
    return _normalizer_quantity(kappa, dim, "vmf", "log_normalizer")


def power_spherical_entropy(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """Entropy H = -log C + kappa dlogC/dkappa of the power spherical distribution; kappa -> same shape."""
    return _normalizer_quantity(kappa, dim, "power_spherical", "entropy")


def vmf_entropy(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """Entropy H = -log C - kappa A_d(kappa) of the vMF distribution; kappa -> same shape."""
    return _normalizer_quantity(kappa, dim, "vmf", "entropy")


def power_spherical_kl_uniform(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """KL(PS(mu, kappa) || uniform on S^{d-1}) = log|S^{d-1}| - H; kappa -> same shape."""
    return _normalizer_quantity(kappa, dim, "power_spherical", "kl_uniform")


def vmf_kl_uniform(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """KL(vMF(mu, kappa) || uniform on S^{d-1}) = log|S^{d-1}| - H; kappa -> same shape."""
    return _normalizer_quantity(kappa, dim, "vmf", "kl_uniform")


# ---------------------------------------------------------------- likelihoods
def _tensor(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    return x


def _kappa(name: str, kappa, vectors: torch.Tensor) -> torch.Tensor:
    """A Python number becomes a 0-dim tensor (one concentration for every row); the rest is checked in the op."""
    if isinstance(kappa, numbers.Real) and not isinstance(kappa, bool):
        return torch.tensor(float(kappa), device=vectors.device)
    return _tensor(name, kappa)


def _reduction_code(reduction) -> int:
    code = REDUCTION_CODES.get(reduction) if isinstance(reduction, str) else None
    if code is None:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    return code


def _stop_gradient(z: torch.Tensor) -> torch.Tensor:
    return z.detach() if z.requires_grad else z  # a detach is a dispatch: skipped where it changes nothing


def _loss(mu, target, kappa, family: int, reduction: str, kl_weight: float, names: str) -> torch.Tensor:
    """Every public loss: views mu, target (lists of (..., D)), kappa (one per view, or none for the
    cosine family), one call on the chosen backend. names: three argument names per view, for errors."""
    code = _reduction_code(reduction)
    backend = _dispatch.select_backend(mu[0].device)
    if backend in _dispatch.CXX_BACKENDS:
        return _dispatch.spherical_loss_op()(mu, target, kappa, family, code, kl_weight, names)
    return _composed.spherical_loss(backend, mu, target, kappa, family, reduction, kl_weight, names.split())


def power_spherical_nll(mu: torch.Tensor, target: torch.Tensor, kappa: torch.Tensor, reduction: str = "mean"):
    """NLL of ``target`` under the power spherical distribution PS(normalize(mu), kappa).

    mu, target: (..., D); kappa: (...). NLL = -log C_PS(kappa) - kappa log1p(cos(mu, target)), with
    1 + cos floored at 1e-12 so that an antipodal target (cos = -1, zero density) gives the finite
    value -log C_PS + 27.63 kappa and no gradient to the vectors. Gradients flow to all three inputs.
    """
    mu, target = _tensor("mu", mu), _tensor("target", target)
    kappa = _kappa("kappa", kappa, mu)
    return _loss([mu], [target], [kappa], FAMILY_CODES["power_spherical"], reduction, 0.0, "mu target kappa")


def vmf_nll(mu: torch.Tensor, target: torch.Tensor, kappa: torch.Tensor, reduction: str = "mean"):
    """NLL of ``target`` under vMF(normalize(mu), kappa) = -log C_vMF(kappa) - kappa cos(mu, target).

    mu, target: (..., D); kappa: (...). Gradients flow to all three inputs.
    """
    mu, target = _tensor("mu", mu), _tensor("target", target)
    kappa = _kappa("kappa", kappa, mu)
    return _loss([mu], [target], [kappa], FAMILY_CODES["vmf"], reduction, 0.0, "mu target kappa")


def vmf_loss(p: torch.Tensor, z: torch.Tensor, kappa=None, *, distribution: str = "vmf", reduction: str = "mean"):
    """Drop-in for SimSiam's D(p, z): the NLL of the stop-gradient target z given the prediction p.

    p, z: (..., D); kappa: (...) or None. With ``kappa=None`` this is exactly
    ``-F.cosine_similarity(p, z.detach(), dim=-1).mean()`` (SimSiam); with kappa it is the
    NLL under ``distribution`` ("vmf" or "power_spherical"), with gradients to p and kappa.
    """
    family = FAMILY_CODES[check_distribution(distribution)]
    p, z = _tensor("p", p), _stop_gradient(_tensor("z", z))
    if kappa is None:
        return _loss([p], [z], [], _COSINE, reduction, 0.0, "p z kappa")
    return _loss([p], [z], [_kappa("kappa", kappa, p)], family, reduction, 0.0, "p z kappa")


def power_spherical_loss(p: torch.Tensor, z: torch.Tensor, kappa, reduction: str = "mean"):
    """``vmf_loss(p, z, kappa, distribution="power_spherical", reduction=reduction)``."""
    return vmf_loss(p, z, kappa, distribution="power_spherical", reduction=reduction)


def vi_simsiam_loss(
    p1: torch.Tensor,
    p2: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
    kappa1=None,
    kappa2=None,
    *,
    distribution: str = "power_spherical",
    kl_weight: float = 0.0,
    reduction: str = "mean",
):
    """The VI-SimSiam loss, both views in one fused call:

        L = 1/2 [NLL(sg z2 | p1, kappa1) + NLL(sg z1 | p2, kappa2)]
            + kl_weight * 1/2 [KL(q1 || U) + KL(q2 || U)]

    p1, p2, z1, z2: (..., D); kappa1, kappa2: (...). ``distribution`` is "power_spherical"
    (the paper's choice), "vmf", or "none" — plain SimSiam (-cos), which takes no kappa.
    """
    check_distribution(distribution, DISTRIBUTIONS + ("none",))
    p1, p2 = _tensor("p1", p1), _tensor("p2", p2)
    z1, z2 = _stop_gradient(_tensor("z1", z1)), _stop_gradient(_tensor("z2", z2))
    if distribution == "none":
        if kappa1 is not None or kappa2 is not None:
            raise ValueError("distribution='none' (plain SimSiam) takes no kappa; pass kappa1=kappa2=None")
        if kl_weight:
            raise ValueError("kl_weight needs a distribution; distribution='none' has no KL term")
        return _loss([p1, p2], [z2, z1], [], _COSINE, reduction, 0.0, "p1 z2 kappa1 p2 z1 kappa2")
    if kappa1 is None or kappa2 is None:
        raise ValueError(f"distribution={distribution!r} needs kappa1 and kappa2 (one concentration per row)")
    kappas = [_kappa("kappa1", kappa1, p1), _kappa("kappa2", kappa2, p2)]
    return _loss([p1, p2], [z2, z1], kappas, FAMILY_CODES[distribution], reduction, float(kl_weight),
                 "p1 z2 kappa1 p2 z1 kappa2")
