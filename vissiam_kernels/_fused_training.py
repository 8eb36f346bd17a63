"""The minimum-traffic training path of the Triton backend (the C++ backends have theirs in
csrc/loss_autograd.cpp, where the op spherical_loss also reduces the rows; the traffic is the same).

Memory traffic of a training step (S = bytes of one (B, D) tensor; z needs no gradient):

- Op-schema path (``spherical_nll`` + ``scaled_row_combination``): forward reads p, z (2S);
  backward reads them again and writes grad_p (3S). Total 5S, and p, z stay alive until backward.
- This path (``spherical_nll_with_grad`` + ``rescale_rows_``): the forward reads p, z once and,
  while each row is still in registers/cache, writes grad_p = w * dNLL/dp for the upstream
  gradient w the caller predicts (w = dL/dnll[r]: 1/B for a mean, 1/(2B) per view for
  vi_simsiam_loss, 1 for a sum; ``predicted_upstream_weight``). The backward compares each row's
  actual upstream gradient u[r] with w: equal rows are not touched, other rows are multiplied by
  u[r]/w in place. The buffer becomes p.grad as is. So ``loss.backward()`` moves 3S in all, and any
  other upstream gradient (a loss weight, a GradScaler's scale, reduction="none") is still exact,
  at +2S for the rows concerned. No host synchronization decides anything.
  The in-place rescale happens only on the node's last use (a backward that frees the graph);
  with retain_graph / create_graph, or under torch.compile, the backward returns a rescaled copy
  (+2S) and leaves the buffers as they were, so a gradient already handed out is never modified.
  Double backward is not supported on this path (the op-schema path supports it for kappa).

A backend registers ``FusedKernels`` (its op namespace, an eager forward launcher and an in-place
rescale) with ``register``; ``vissiam_kernels._composed`` then routes its training calls here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import torch


@dataclasses.dataclass(frozen=True)
class FusedKernels:
    """One backend's implementation of the training path.

    forward(mu, target, kappa, family, grad_weight, grad_mu, grad_target)
        -> (nll, row_state, grad_mu list, grad_target list, applied), the schema of
        ``spherical_nll_with_grad`` (vissiam_kernels/triton_ops.py);
    rescale_(grad_mu list, grad_target list, applied, upstream) -> None, ``rescale_rows_``.
    """

    namespace: str
    forward: Callable
    rescale_: Callable


_KERNELS: dict[str, FusedKernels] = {}


def register(backend: str, kernels: FusedKernels) -> None:
    """Make ``backend``'s training path available; registers autograd of its fused op (once)."""
    if backend in _KERNELS:
        return
    torch.library.register_autograd(
        f"{kernels.namespace}::spherical_nll_with_grad",
        lambda ctx, *grads: _op_backward(kernels, ctx, *grads),
        setup_context=_op_setup_context,
    )
    _KERNELS[backend] = kernels


def kernels_for(backend: str) -> FusedKernels | None:
    """The training path of ``backend``, or None where it has none (then the op-schema path runs)."""
    return _KERNELS.get(backend)


def is_fake(t: torch.Tensor) -> bool:
    """Traced (fake / functional) tensors: no values to check, no data to read."""
    if type(t) is torch.Tensor or type(t) is torch.nn.Parameter:  # the eager fast path
        return False
    from torch._subclasses.fake_tensor import is_fake as _is_fake

    return _is_fake(t) or type(t).__name__ == "FunctionalTensor"


def predicted_upstream_weight(reduction: str, rows: int, view_factor: float = 1.0,
                              dtype: torch.dtype = torch.float32) -> float:
    """dL/dnll[r] that ``loss.backward()`` will deliver for a per-row NLL reduced by ``reduction``
    after multiplication by ``view_factor`` (0.5 in vi_simsiam_loss), computed the way autograd
    computes it (mean: 1/rows rounded to the loss dtype), so that the prediction is exact.
    Under torch.compile the backward always returns a rescaled copy, so there the plain quotient
    serves (and stays a Python constant for the graph)."""
    if reduction == "mean":
        if torch.compiler.is_compiling():
            return view_factor / max(rows, 1)
        return _mean_weight(rows, dtype) * view_factor
    return 1.0 * view_factor


@functools.lru_cache(maxsize=256)
def _mean_weight(rows: int, dtype: torch.dtype) -> float:
    """1/rows as MeanBackward computes it: in the loss dtype (cached: a tensor op per call costs ~4 us)."""
    return float(torch.ones((), dtype=dtype).div(max(rows, 1)))


def spherical_nll_training(kernels: FusedKernels, mu, target, kappa, family: int, upstream_weight: float,
                           eager_function: bool = True) -> torch.Tensor:
    """Per-row NLL of all views (as ``spherical_nll(...)[0]``), through the fused op when mu or target
    needs a gradient.

    upstream_weight: the gradient the caller expects to reach each row of the result, e.g.
    ``predicted_upstream_weight("mean", B, 0.5)`` for vi_simsiam_loss; nonzero. A wrong guess costs
    one extra pass over the gradient, never accuracy.
    eager_function: in eager mode run the kernels through ``EagerFusedNLL`` (an autograd.Function,
    a few microseconds of host time) rather than the custom op's Python autograd layer (~100 us per
    step, which is the whole step at B = 512); under torch.compile the op is always used (an opaque
    Function would be a graph break).
    """
    grad_on = torch.is_grad_enabled()
    want_mu = grad_on and any(m.requires_grad for m in mu)
    want_target = grad_on and any(t.requires_grad for t in target)
    ops = getattr(torch.ops, kernels.namespace)
    if not (want_mu or want_target):
        return ops.spherical_nll(mu, target, kappa, family)[0]
    if eager_function and not torch.compiler.is_compiling():
        return EagerFusedNLL.apply(kernels, family, float(upstream_weight), want_mu, want_target, len(mu),
                                   *mu, *target, *kappa)
    return ops.spherical_nll_with_grad(mu, target, kappa, family, float(upstream_weight), want_mu, want_target)[0]


# ---------------------------------------------------------------- gradients
def _graph_kept() -> bool:
    """Whether the running backward keeps the graph (retain_graph / create_graph): then this
    node may be called again, and its gradient buffers must not be modified."""
    getter = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    if getter is None:
        return True
    try:
        return bool(getter())
    except RuntimeError:
        return True


def _rescaled_copy(buffers, upstream, applied):
    """Out of place: g * u/w per row, in the buffer's compute precision."""
    ratio = upstream.to(torch.float64) / applied
    out, offset = [], 0
    for g in buffers:
        compute = torch.float64 if g.dtype == torch.float64 else torch.float32
        r = ratio[offset : offset + g.shape[0]].to(compute).unsqueeze(-1)
        out.append((g.to(compute) * r).to(g.dtype))
        offset += g.shape[0]
    return out


def _save(ctx, state, applied, out_mu, out_target, rows, kappa_dtypes, has_mu, has_target) -> None:
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(state, applied, *out_mu, *out_target)
    ctx.rows = rows
    ctx.kappa_dtypes = kappa_dtypes
    ctx.has_mu, ctx.has_target = bool(has_mu), bool(has_target)


def fused_gradients(kernels: FusedKernels, ctx, grad_nll, needs_mu, needs_target, needs_kappa):
    """Gradients from the buffers the forward wrote (both autograd wrappers).

    In place (the minimum-traffic case) only when this is the last use of the node: eager mode
    and a backward that frees the graph. Then rows whose upstream gradient equals the predicted
    weight are not touched. Otherwise (retain_graph, torch.compile tracing) the gradient is a
    rescaled copy and the buffers keep their state for the next call.
    Returns (grad_mu, grad_target, grad_kappa) lists, one entry per view.
    """
    state, applied, *buffers = ctx.saved_tensors
    views = len(ctx.rows)
    n_mu = views if ctx.has_mu else 0
    out_mu, out_target = list(buffers[:n_mu]), list(buffers[n_mu:])
    if (any(needs_mu) and not ctx.has_mu) or (any(needs_target) and not ctx.has_target):
        raise RuntimeError("spherical_nll_with_grad: a gradient was needed that the forward was not asked for")
    if grad_nll is None:
        grad_nll = torch.zeros(sum(ctx.rows), dtype=torch.float32, device=state.device)
    if out_mu or out_target:
        if torch.is_grad_enabled():
            raise NotImplementedError(
                "double backward (create_graph=True) through the fused training NLL is not supported; "
                "use the op-schema path (spherical_nll) for it"
            )
        traced = torch.compiler.is_compiling() or any(is_fake(t) for t in (grad_nll, applied))
        if not traced and not _graph_kept():
            kernels.rescale_(out_mu, out_target, applied, grad_nll)
        else:
            out_mu = _rescaled_copy(out_mu, grad_nll, applied)
            out_target = _rescaled_copy(out_target, grad_nll, applied)
    grad_kappa = [None] * len(ctx.kappa_dtypes)
    if ctx.kappa_dtypes and any(needs_kappa):
        per_row = grad_nll.to(torch.float64) * state[:, 3]
        grad_kappa = [g.to(dt) for g, dt in zip(per_row.split(ctx.rows), ctx.kappa_dtypes)]
    return (out_mu if ctx.has_mu else [None] * views, out_target if ctx.has_target else [None] * views, grad_kappa)


def _flags(flag) -> list[bool]:
    return [bool(f) for f in flag] if isinstance(flag, (list, tuple)) else [bool(flag)]


def _op_setup_context(ctx, inputs, output):
    mu, target, kappa, family, grad_weight, grad_mu, grad_target = inputs
    _, state, out_mu, out_target, applied = output
    # Only nll is a loss; without this the engine would fill a zero "gradient" for each of the
    # gradient buffers (2S of writes per step) before calling the backward.
    ctx.mark_non_differentiable(state, applied, *out_mu, *out_target)
    _save(ctx, state, applied, out_mu, out_target, [m.shape[0] for m in mu], [k.dtype for k in kappa],
          grad_mu, grad_target)


def _op_backward(kernels, ctx, grad_nll, grad_state, grad_out_mu, grad_out_target, grad_applied):
    needs_mu, needs_target, needs_kappa = (_flags(f) for f in ctx.needs_input_grad[:3])
    grad_mu, grad_target, grad_kappa = fused_gradients(kernels, ctx, grad_nll, needs_mu, needs_target, needs_kappa)
    return grad_mu, grad_target, grad_kappa, None, None, None, None


class EagerFusedNLL(torch.autograd.Function):
    """Eager twin of the op ``spherical_nll_with_grad``, with the same kernels and gradients.

    Inputs: (kernels, family, grad_weight, grad_mu, grad_target, views, *mu, *target, *kappa).
    """

    @staticmethod
    def forward(ctx, kernels, family, grad_weight, grad_mu, grad_target, views, *tensors):
        mu, target, kappa = list(tensors[:views]), list(tensors[views : 2 * views]), list(tensors[2 * views :])
        nll, state, out_mu, out_target, applied = kernels.forward(
            mu, target, kappa, family, grad_weight, grad_mu, grad_target)
        _save(ctx, state, applied, out_mu, out_target, [m.shape[0] for m in mu], [k.dtype for k in kappa],
              grad_mu, grad_target)
        ctx.kernels = kernels
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        views = len(ctx.rows)
        flags = ctx.needs_input_grad[6:]
        grad_mu, grad_target, grad_kappa = fused_gradients(
            ctx.kernels, ctx, grad_nll, flags[:views], flags[views : 2 * views], flags[2 * views :])
        return (None, None, None, None, None, None, *grad_mu, *grad_target, *grad_kappa)
