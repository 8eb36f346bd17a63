"""Fake-tensor and autograd registration of the compiled ops (schemas in csrc/ops.cpp).

``spherical_loss`` (the public losses) has its autograd in C++ (csrc/loss_autograd.cpp); here are
the fake kernels of every op, for torch.compile, and the autograd of the per-row ops
``spherical_nll`` and ``normalizer_quantity``, which every backend with those schemas shares.

Gradients of ``spherical_nll``: the forward kernel already leaves, per row, the coefficients of
dNLL/dmu = mu_coef * mu + cross_coef * target (and the same for target), so the backward is one
fused pass (``scaled_row_combination``) that reads mu and target once and writes the gradient;
nothing of size (B, D) is saved besides the inputs.
"""

from __future__ import annotations

import functools

import torch

from ._codes import FAMILY_CODES, QUANTITY_CODES, REDUCTION_CODES, ROW_STATE, ROW_STATE_COLUMNS, loss_dtype

__all__ = ["FAMILY_CODES", "QUANTITY_CODES", "register_autograd", "register_fake_kernels"]


def _nll_fake(mu, target, kappa, family):
    rows = sum(m.shape[0] for m in mu)
    return (
        mu[0].new_empty((rows,), dtype=loss_dtype(*mu, *kappa)),
        mu[0].new_empty((rows, ROW_STATE_COLUMNS), dtype=torch.float64),
    )


def _loss_fake(mu, target, kappa, family, reduction, kl_weight, names):
    shape = mu[0].shape[:-1] if reduction == REDUCTION_CODES["none"] else ()
    dtype = loss_dtype(*mu, *target, *kappa)
    return mu[0].new_empty(shape, dtype=dtype)


def _loss_forward_fake(mu, target, kappa, family, reduction, kl_weight, with_row_gradient, grad_mu, grad_target):
    views, rows = len(mu), mu[0].shape[0]
    loss = mu[0].new_empty((rows,) if reduction == REDUCTION_CODES["none"] else (), dtype=loss_dtype(*mu, *kappa))
    row_gradient = mu[0].new_empty((views * rows if with_row_gradient else 0, ROW_STATE_COLUMNS), dtype=torch.float64)
    out_mu = [torch.empty_like(m, memory_format=torch.contiguous_format) for m in mu] if grad_mu else []
    out_target = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in target] if grad_target else []
    return loss, row_gradient, out_mu, out_target


def _combination_fake(scale, coef_x, coef_y, x, y):
    return [torch.empty_like(v, memory_format=torch.contiguous_format) for v in x]


def _quantity_fake(kappa, dim, family, quantity):
    return torch.empty_like(kappa, dtype=loss_dtype(kappa))


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
    cross = row_state[:, ROW_STATE["cross_coef"]]
    if any(_as_list(needs_mu)):
        grad_mu = ops.scaled_row_combination(grad_nll, row_state[:, ROW_STATE["mu_coef"]], cross, mu, target)
    if any(_as_list(needs_target)):
        grad_target = ops.scaled_row_combination(grad_nll, row_state[:, ROW_STATE["target_coef"]], cross, target, mu)
    if ctx.kappa_dtypes and any(_as_list(needs_kappa)):
        per_row = grad_nll.to(torch.float64) * row_state[:, ROW_STATE["kappa_grad"]]
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


def _angle_derivative_fake(theta, kappa, dim, family, vectorized=True):
    return torch.empty_like(theta)


@functools.cache
def register_fake_kernels(namespace: str = "vissiam_kernels") -> None:
    """Output shapes of the compiled ops for torch.compile; once, after the library loads."""
    torch.library.register_fake(f"{namespace}::spherical_nll")(_nll_fake)
    torch.library.register_fake(f"{namespace}::scaled_row_combination")(_combination_fake)
    torch.library.register_fake(f"{namespace}::normalizer_quantity")(_quantity_fake)
    torch.library.register_fake(f"{namespace}::spherical_loss")(_loss_fake)
    torch.library.register_fake(f"{namespace}::spherical_loss_forward")(_loss_forward_fake)
    if namespace == "vissiam_kernels":  # CPU only (csrc/cpu/angle_law_cpu.cpp)
        torch.library.register_fake(f"{namespace}::angle_kappa_derivative")(_angle_derivative_fake)


@functools.cache
def register_autograd(namespace: str = "vissiam_kernels") -> None:
    """Gradients of ``namespace::spherical_nll`` and ``namespace::normalizer_quantity``.

    Any namespace that implements the per-row ops of csrc/ops.cpp (spherical_nll,
    scaled_row_combination, normalizer_quantity) with the same
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
