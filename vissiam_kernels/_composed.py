"""``spherical_loss`` for the backends written in Python: the Triton kernels and the pure-PyTorch
reference (also the fallback when no compiled library loads).

The C++ backends (CPU, CUDA) serve the public losses with one op, ``torch.ops.vissiam_kernels
.spherical_loss``, whose checks and autograd live in csrc/loss_autograd.cpp. These two backends
compute the same thing with the same semantics from Python: the argument checks of
``_validation`` (the C++ messages, word for word), the per-row NLL of all views in one call, the
views averaged row by row, the KL term, the reduction. The Triton training path is the
minimum-traffic one of ``_fused_training``.
"""

from __future__ import annotations

import torch

from . import _dispatch, _fused_training, reference
from ._codes import FAMILY_CODES, QUANTITY_CODES
from ._validation import check_kappa, check_kappa_values, check_kl_weight, check_vectors

_FAMILY_NAMES = {code: name for name, code in FAMILY_CODES.items()}


def normalizer_quantity(backend: str, kappa: torch.Tensor, dim: int, family: str, quantity: str) -> torch.Tensor:
    """A normalizer quantity (QUANTITY_CODES) of ``family`` on ``backend``; kappa: any shape -> same shape."""
    if backend == "reference":
        check_kappa_values("kappa", kappa)
        return getattr(reference, f"{family}_{quantity}")(kappa, dim)
    ops = _dispatch.op_namespace(backend)
    return ops.normalizer_quantity(kappa, dim, FAMILY_CODES[family], QUANTITY_CODES[quantity])


def _views(mu, target, kappa, names):
    """Checked views (mu, target, kappa or None, rows_shape), one per view; names: 3 per view."""
    views = []
    for v in range(len(mu)):
        mu_name, target_name, kappa_name = names[3 * v : 3 * v + 3]
        m, t = check_vectors(mu_name, mu[v], target_name, target[v])
        rows_shape = m.shape[:-1]
        k = check_kappa(kappa_name, kappa[v], rows_shape, m.device) if kappa else None
        if views and (m.shape != views[0][0].shape or m.device != views[0][0].device):
            raise ValueError(
                f"both views must have one shape and device; got {names[0]} {tuple(views[0][0].shape)} on "
                f"{views[0][0].device} and {mu_name} {tuple(m.shape)} on {m.device}"
            )
        views.append((m, t, k, rows_shape))
    return views


def _rows_of_reference(views, family: str) -> list[torch.Tensor]:
    out = []
    for mu, target, kappa, _ in views:
        if family == "none":
            out.append(reference.cosine_nll(mu, target, "none"))
        else:
            check_kappa_values("kappa", kappa)
            nll = reference.vmf_nll if family == "vmf" else reference.power_spherical_nll
            out.append(nll(mu, target, kappa, "none"))
    return out


def _rows_of_triton(views, family: str, reduction: str) -> list[torch.Tensor]:
    from . import triton_ops

    dim = views[0][0].shape[-1]
    mus = [mu.reshape(-1, dim) for mu, _, _, _ in views]
    targets = [target.reshape(-1, dim) for _, target, _, _ in views]
    kappas = [] if family == "none" else [kappa.reshape(-1) for _, _, kappa, _ in views]
    code = FAMILY_CODES[family]
    # float16 computes its gradients in backward (csrc/loss_autograd.cpp, write_gradients_in_forward)
    if all(m.dtype != torch.float16 for m in mus):
        weight = _fused_training.predicted_upstream_weight(
            reduction, views[0][3].numel(), 1.0 / len(views), reference.compute_dtype(*mus, *kappas)
        )
        nll = triton_ops.spherical_nll_training(mus, targets, kappas, code, weight)
    else:
        nll, _ = torch.ops.vissiam_triton.spherical_nll(mus, targets, kappas, code)
    return [rows.reshape(shape) for rows, (_, _, _, shape) in zip(nll.split([m.shape[0] for m in mus]), views)]


def spherical_loss(backend: str, mu, target, kappa, family: int, reduction: str, kl_weight: float, names):
    """The loss of ``torch.ops.vissiam_kernels.spherical_loss`` on ``backend`` ("triton" or "reference").

    mu, target: sequences of (..., D) tensors, one per view; kappa: one per view, or empty for the
    cosine family; names: three argument names per view, for the errors.
    """
    check_kl_weight(kl_weight, family)
    views = _views(mu, target, kappa, names)
    name = _FAMILY_NAMES[family]
    rows = _rows_of_reference(views, name) if backend == "reference" else _rows_of_triton(views, name, reduction)
    loss = rows[0] if len(rows) == 1 else sum(rows[1:], rows[0]) / len(rows)
    if kl_weight:
        dim = views[0][0].shape[-1]
        kl = [normalizer_quantity(backend, k, dim, name, "kl_uniform") for _, _, k, _ in views]
        loss = loss + kl_weight * (sum(kl[1:], kl[0]) / len(kl))
    return reference.reduce(loss, reduction)
