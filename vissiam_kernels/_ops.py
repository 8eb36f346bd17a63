"""Fake-tensor and autograd registration of the compiled ops (schemas in csrc/ops.cpp).

Gradients: the forward kernel already leaves, per row, the coefficients of
dNLL/dmu = mu_coef * mu + cross_coef * target (and the same for target), so the
backward is one fused pass (``scaled_row_combination``) that reads mu and target
once and writes the gradient; nothing of size (B, D) is saved besides the inputs.
"""

from __future__ import annotations

import functools

import torch

FAMILY_CODES = {"none": 0, "vmf": 1, "power_spherical": 2}
QUANTITY_CODES = {"log_normalizer": 0, "dlog_normalizer": 1, "d2log_normalizer": 2, "entropy": 3, "kl_uniform": 4}


def _loss_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _nll_fake(mu, target, kappa, family):
    rows = sum(m.shape[0] for m in mu)
    return (
        mu[0].new_empty((rows,), dtype=_loss_dtype(*mu, *kappa)),
        mu[0].new_empty((rows, 4), dtype=torch.float64),
    )


def _combination_fake(scale, coef_x, coef_y, x, y):
    return [torch.empty_like(v, memory_format=torch.contiguous_format) for v in x]


def _nll_with_grad_fake(mu, target, kappa, family, grad_weight, grad_mu, grad_target):
    nll, state = _nll_fake(mu, target, kappa, family)
    rows = nll.shape[0]
    out_mu = [torch.empty_like(m, memory_format=torch.contiguous_format) for m in mu] if grad_mu else []
    out_target = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in target] if grad_target else []
    applied = mu[0].new_empty((rows if grad_mu or grad_target else 0,), dtype=torch.float64)
    return nll, state, out_mu, out_target, applied


def _rescale_rows_fake(grad_mu, grad_target, applied, upstream):
    return None


def _quantity_fake(kappa, dim, family, quantity):
    return torch.empty_like(kappa, dtype=torch.float64 if kappa.dtype == torch.float64 else torch.float32)


def _nll_setup_context(ctx, inputs, output):
    mu, target, kappa, family = inputs
    ctx.save_for_backward(*mu, *target, output[1])
    ctx.views = len(mu)
    ctx.rows = [m.shape[0] for m in mu]
    ctx.kappa_dtypes = [k.dtype for k in kappa]
    # row_state carries no gradient: no zero-filled (rows, 4) tensor is made for it in backward
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _nll_backward(ops, ctx, grad_nll, grad_row_state):
    saved = ctx.saved_tensors
    views = ctx.views
    mu, target, row_state = list(saved[:views]), list(saved[views : 2 * views]), saved[-1]
    needs_mu, needs_target, needs_kappa = ctx.needs_input_grad[:3]
    grad_mu = grad_target = [None] * views
    grad_kappa = [None] * len(ctx.kappa_dtypes)
    if grad_nll is None:
        return grad_mu, grad_target, grad_kappa, None
    if any(_as_list(needs_mu)):
        grad_mu = ops.scaled_row_combination(grad_nll, row_state[:, 0], row_state[:, 2], mu, target)
    if any(_as_list(needs_target)):
        grad_target = ops.scaled_row_combination(grad_nll, row_state[:, 1], row_state[:, 2], target, mu)
    if ctx.kappa_dtypes and any(_as_list(needs_kappa)):
        per_row = grad_nll.to(torch.float64) * row_state[:, 3]
        grad_kappa = [g.to(dt) for g, dt in zip(per_row.split(ctx.rows), ctx.kappa_dtypes)]
    return grad_mu, grad_target, grad_kappa, None


def _as_list(flag) -> list[bool]:
    return list(flag) if isinstance(flag, (list, tuple)) else [bool(flag)]


def _quantity_setup_context(ctx, inputs, output):
    kappa, dim, family, quantity = inputs
    ctx.save_for_backward(kappa)
    ctx.dim, ctx.family, ctx.quantity = dim, family, quantity


def _quantity_backward(ops, ctx, grad):
    (kappa,) = ctx.saved_tensors
    q = ctx.quantity
    if q == QUANTITY_CODES["d2log_normalizer"]:
        raise NotImplementedError("the third kappa-derivative of a log-normalizer is not implemented")
    derivative_order = 1 if q == QUANTITY_CODES["log_normalizer"] else 2
    derivative = ops.normalizer_quantity(kappa, ctx.dim, ctx.family, derivative_order)
    if q == QUANTITY_CODES["entropy"]:  # dH/dk = k * d2logC
        derivative = kappa * derivative
    elif q == QUANTITY_CODES["kl_uniform"]:  # KL = log|S| - H
        derivative = -kappa * derivative
    return (grad * derivative).to(kappa.dtype), None, None, None


@functools.cache
def register_fake_kernels(namespace: str = "vissiam_kernels") -> None:
    """Output shapes of the compiled ops for torch.compile; once, after the library loads."""
    torch.library.register_fake(f"{namespace}::spherical_nll")(_nll_fake)
    torch.library.register_fake(f"{namespace}::scaled_row_combination")(_combination_fake)
    torch.library.register_fake(f"{namespace}::normalizer_quantity")(_quantity_fake)
    torch.library.register_fake(f"{namespace}::spherical_nll_with_grad")(_nll_with_grad_fake)
    torch.library.register_fake(f"{namespace}::rescale_rows_")(_rescale_rows_fake)


@functools.cache
def register_autograd(namespace: str = "vissiam_kernels") -> None:
    """Gradients of ``namespace::spherical_nll`` and ``namespace::normalizer_quantity``.

    Any namespace that implements the three ops of csrc/ops.cpp with the same
    schemas (the C++ library, the Triton ops) shares these formulas.
    """
    ops = getattr(torch.ops, namespace)
    torch.library.register_autograd(
        f"{namespace}::spherical_nll", functools.partial(_nll_backward, ops), setup_context=_nll_setup_context
    )
    torch.library.register_autograd(
        f"{namespace}::normalizer_quantity",
        functools.partial(_quantity_backward, ops),
        setup_context=_quantity_setup_context,
    )
