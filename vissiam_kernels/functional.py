"""The public functions: validation, then one call into the backend chosen by ``_dispatch``.

Shapes: vectors ``mu``/``target``/``p``/``z`` are (..., D) and normalized inside
(``F.normalize`` semantics, eps = 1e-12); ``kappa`` is (...) — one concentration
per row — or (..., 1), or a scalar. Losses with ``reduction="none"`` have shape
(...). Losses come back in float32 for float16/bfloat16/float32 inputs and in
float64 when an input is float64; gradients come back in each input's dtype.
An empty batch gives what torch's reductions give: NaN for "mean", 0 for "sum".
"""

from __future__ import annotations

import torch

from . import _dispatch, _fused_training, reference
from ._validation import (
    DISTRIBUTIONS,
    check_dim,
    check_distribution,
    check_kappa,
    check_kappa_values,
    check_reduction,
    check_vectors,
)

from ._ops import FAMILY_CODES as _FAMILY_CODES, QUANTITY_CODES as _QUANTITY_CODES


# ---------------------------------------------------------------- normalizers
def _normalizer_quantity(kappa, dim: int, family: str, quantity: str) -> torch.Tensor:
    dim = check_dim(dim)
    if not isinstance(kappa, torch.Tensor):
        kappa = torch.as_tensor(kappa, dtype=torch.get_default_dtype())
    if not kappa.is_floating_point():
        raise TypeError(f"kappa must have a floating dtype; got {kappa.dtype}")
    backend = _dispatch.select_backend(kappa.device)
    if backend == "reference":
        check_kappa_values("kappa", kappa)
        return getattr(reference, f"{family}_{quantity}")(kappa, dim)
    ops = _dispatch.op_namespace(backend)
    return ops.normalizer_quantity(kappa, dim, _FAMILY_CODES[family], _QUANTITY_CODES[quantity])


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
def _nll_per_row(views, family: str, reduction: str = "none", view_factor: float = 1.0) -> list[torch.Tensor]:
    """Per-row NLL of each view (mu, target, kappa or None, rows_shape) -> list of (rows_shape) tensors.

    ``reduction`` and ``view_factor`` say how the caller will reduce the rows (mean/sum, times
    view_factor), so that the Triton training path can write the gradient during the forward pass
    already scaled as backward() will ask (see vissiam_kernels/triton_ops.py).
    """
    device = views[0][0].device
    backend = _dispatch.select_backend(device)
    if backend == "reference":
        out = []
        for mu, target, kappa, _ in views:
            if family == "none":
                out.append(reference.cosine_nll(mu, target, "none"))
            else:
                check_kappa_values("kappa", kappa)
                nll = reference.vmf_nll if family == "vmf" else reference.power_spherical_nll
                out.append(nll(mu, target, kappa, "none"))
        return out
    dim = views[0][0].shape[-1]
    mus = [mu.reshape(-1, dim) for mu, _, _, _ in views]
    targets = [target.reshape(-1, dim) for _, target, _, _ in views]
    kappas = [] if family == "none" else [kappa.reshape(-1) for _, _, kappa, _ in views]
    fused = _fused_training.kernels_for(backend)
    # float16 stays on the op-schema path: the training path stores the gradient in the input dtype
    # scaled by the predicted upstream weight (1/B for a mean), and an fp16 buffer at that scale
    # underflows or overflows where the real upstream (a GradScaler's 2^16/B, per-row weights) would
    # not; bfloat16 has float32's exponent range and keeps the 3S path.
    if fused is not None and all(m.dtype != torch.float16 for m in mus):
        weight = _fused_training.predicted_upstream_weight(
            reduction, views[0][3].numel(), view_factor, reference.compute_dtype(*mus, *kappas)
        )
        nll = _fused_training.spherical_nll_training(fused, mus, targets, kappas, _FAMILY_CODES[family], weight)
    else:
        nll, _ = _dispatch.op_namespace(backend).spherical_nll(mus, targets, kappas, _FAMILY_CODES[family])
    return [rows.reshape(shape) for rows, (_, _, _, shape) in zip(nll.split([m.shape[0] for m in mus]), views)]


def _view(mu_name, mu, target_name, target, kappa_name, kappa):
    mu, target = check_vectors(mu_name, mu, target_name, target)
    rows_shape = mu.shape[:-1]
    if kappa is not None:
        kappa = check_kappa(kappa_name, kappa, rows_shape, mu.device)
    return mu, target, kappa, rows_shape


def power_spherical_nll(mu: torch.Tensor, target: torch.Tensor, kappa: torch.Tensor, reduction: str = "mean"):
    """NLL of ``target`` under the power spherical distribution PS(normalize(mu), kappa).

    mu, target: (..., D); kappa: (...). NLL = -log C_PS(kappa) - kappa log1p(cos(mu, target)), with
    1 + cos floored at 1e-12 so that an antipodal target (cos = -1, zero density) gives the finite
    value -log C_PS + 27.63 kappa and no gradient to the vectors. Gradients flow to all three inputs.
    """
    check_reduction(reduction)
    view = _view("mu", mu, "target", target, "kappa", kappa)
    return reference.reduce(_nll_per_row([view], "power_spherical", reduction)[0], reduction)


def vmf_nll(mu: torch.Tensor, target: torch.Tensor, kappa: torch.Tensor, reduction: str = "mean"):
    """NLL of ``target`` under vMF(normalize(mu), kappa) = -log C_vMF(kappa) - kappa cos(mu, target).

    mu, target: (..., D); kappa: (...). Gradients flow to all three inputs.
    """
    check_reduction(reduction)
    view = _view("mu", mu, "target", target, "kappa", kappa)
    return reference.reduce(_nll_per_row([view], "vmf", reduction)[0], reduction)


def vmf_loss(p: torch.Tensor, z: torch.Tensor, kappa=None, *, distribution: str = "vmf", reduction: str = "mean"):
    """Drop-in for SimSiam's D(p, z): the NLL of the stop-gradient target z given the prediction p.

    p, z: (..., D); kappa: (...) or None. With ``kappa=None`` this is exactly
    ``-F.cosine_similarity(p, z.detach(), dim=-1).mean()`` (SimSiam); with kappa it is the
    NLL under ``distribution`` ("vmf" or "power_spherical"), with gradients to p and kappa.
    """
    check_reduction(reduction)
    check_distribution(distribution)
    if isinstance(z, torch.Tensor):
        z = z.detach()
    view = _view("p", p, "z", z, "kappa", kappa)
    family = "none" if kappa is None else distribution
    return reference.reduce(_nll_per_row([view], family, reduction)[0], reduction)


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
    check_reduction(reduction)
    check_distribution(distribution, DISTRIBUTIONS + ("none",))
    if distribution == "none":
        if kappa1 is not None or kappa2 is not None:
            raise ValueError("distribution='none' (plain SimSiam) takes no kappa; pass kappa1=kappa2=None")
        if kl_weight:
            raise ValueError("kl_weight needs a distribution; distribution='none' has no KL term")
    elif kappa1 is None or kappa2 is None:
        raise ValueError(f"distribution={distribution!r} needs kappa1 and kappa2 (one concentration per row)")
    z1 = z1.detach() if isinstance(z1, torch.Tensor) else z1
    z2 = z2.detach() if isinstance(z2, torch.Tensor) else z2
    view1 = _view("p1", p1, "z2", z2, "kappa1", kappa1)
    view2 = _view("p2", p2, "z1", z1, "kappa2", kappa2)
    if view1[0].shape != view2[0].shape or view1[0].device != view2[0].device:
        raise ValueError(
            f"both views must have one shape and device; got p1 {tuple(view1[0].shape)} on {view1[0].device} "
            f"and p2 {tuple(view2[0].shape)} on {view2[0].device}"
        )
    nll1, nll2 = _nll_per_row([view1, view2], distribution, reduction, view_factor=0.5)
    loss = 0.5 * (nll1 + nll2)
    if kl_weight:
        dim = view1[0].shape[-1]
        kl = power_spherical_kl_uniform if distribution == "power_spherical" else vmf_kl_uniform
        loss = loss + kl_weight * 0.5 * (kl(view1[2], dim) + kl(view2[2], dim))
    return reference.reduce(loss, reduction)
