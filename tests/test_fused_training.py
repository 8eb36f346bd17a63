"""The minimum-traffic training path on CPU (vissiam_kernels/_fused_training.py + the C++ ops
spherical_nll_with_grad / rescale_rows_): exact gradients for any upstream gradient, and the
gradient written in the forward pass handed to autograd without another pass."""

from __future__ import annotations

import pytest
import torch

import vissiam_kernels as vk
from vissiam_kernels import _extension, _fused_training, reference


@pytest.fixture(autouse=True)
def cpu(use_backend):
    _extension.load_cpu_library()
    return use_backend("cpu")


def inputs(rows=6, dim=33, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(rows, dim, generator=g, dtype=dtype).requires_grad_()
    z = torch.randn(rows, dim, generator=g, dtype=dtype)
    kappa = (100 * torch.rand(rows, generator=g, dtype=dtype)).requires_grad_()
    return p, z, kappa


def reference_grads(loss_fn, p, z, kappa):
    p64, k64 = p.detach().double().requires_grad_(), kappa.detach().double().requires_grad_()
    loss_fn(p64, z.double(), k64).backward()
    return p64.grad, k64.grad


@pytest.mark.parametrize("distribution", ["power_spherical", "vmf"])
@pytest.mark.parametrize(
    "upstream, reduction",
    [(lambda loss: loss, "mean"), (lambda loss: 3.5 * loss, "mean"), (lambda loss: loss, "sum"),
     (lambda loss: (loss * torch.linspace(-1, 2, loss.numel(), dtype=loss.dtype)).sum(), "none")],
    ids=["as-predicted", "scaled-loss", "sum", "per-row-weights"],
)
def test_gradients_are_exact_for_any_upstream_gradient(distribution, upstream, reduction):
    p, z, kappa = inputs()
    upstream(vk.vmf_loss(p, z, kappa, distribution=distribution, reduction=reduction)).backward()
    nll = getattr(reference, f"{distribution}_nll")
    grad_p, grad_kappa = reference_grads(lambda a, b, c: upstream(nll(a, b, c, reduction)), p, z, kappa)
    assert torch.allclose(p.grad, grad_p, rtol=1e-10, atol=1e-14)
    assert torch.allclose(kappa.grad, grad_kappa, rtol=1e-10, atol=1e-14)


def test_the_forward_gradient_buffer_becomes_p_grad(monkeypatch):
    """No pass over (B, D) in backward: p.grad is the very buffer the forward kernel wrote."""
    p, z, kappa = inputs(dtype=torch.float32)
    cpu_kernels = _fused_training.kernels_for("cpu")
    seen = {}

    def spying_forward(*args):
        out = cpu_kernels.forward(*args)
        seen["buffer"] = out[2][0].data_ptr()
        return out

    import dataclasses

    monkeypatch.setitem(_fused_training._KERNELS, "cpu", dataclasses.replace(cpu_kernels, forward=spying_forward))
    vk.power_spherical_loss(p, z, kappa).backward()
    assert p.grad.data_ptr() == seen["buffer"]


def test_vi_simsiam_loss_gradients_with_both_views_and_kl():
    p1, z1, k1 = inputs(seed=1)
    p2, z2, k2 = inputs(seed=2)
    vk.vi_simsiam_loss(p1, p2, z1, z2, k1, k2, kl_weight=0.1).backward()
    q1, q2, c1, c2 = (t.detach().clone().requires_grad_() for t in (p1, p2, k1, k2))
    reference.vi_simsiam_loss(q1, q2, z1, z2, c1, c2, kl_weight=0.1).backward()
    for ours, expected in ((p1, q1), (p2, q2), (k1, c1), (k2, c2)):
        assert torch.allclose(ours.grad, expected.grad, rtol=1e-10, atol=1e-14)


def test_retain_graph_gives_the_same_gradient_twice():
    p, z, kappa = inputs()
    loss = vk.vmf_loss(p, z, kappa)
    (first,) = torch.autograd.grad(2.0 * loss, p, retain_graph=True)
    (second,) = torch.autograd.grad(loss, p)
    assert torch.allclose(first, 2.0 * second, rtol=1e-14)


def test_target_gradients_through_the_nll():
    p, z, kappa = inputs()
    z.requires_grad_()
    vk.power_spherical_nll(p, z, kappa, reduction="sum").backward()
    z64 = z.detach().clone().requires_grad_()
    reference.power_spherical_nll(p.detach(), z64, kappa.detach(), "sum").backward()
    assert torch.allclose(z.grad, z64.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("eager_function", [True, False])
def test_function_and_op_wrappers_agree(eager_function):
    p, z, kappa = inputs()
    kernels = _fused_training.kernels_for("cpu")
    weight = _fused_training.predicted_upstream_weight("mean", 6, 1.0, torch.float64)
    nll = _fused_training.spherical_nll_training(kernels, [p], [z], [kappa], 2, weight, eager_function=eager_function)
    nll.mean().backward()
    grad_p, grad_kappa = reference_grads(lambda a, b, c: reference.power_spherical_nll(a, b, c), p, z, kappa)
    assert torch.allclose(p.grad, grad_p, rtol=1e-10) and torch.allclose(kappa.grad, grad_kappa, rtol=1e-10)


def test_double_backward_is_refused_with_a_clear_error():
    p, z, kappa = inputs()
    loss = vk.vmf_loss(p, z, kappa)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(loss, p, create_graph=True)


def test_opcheck_training_ops():
    p, z, kappa = inputs()
    ops = torch.ops.vissiam_kernels
    torch.library.opcheck(ops.spherical_nll_with_grad.default, ([p.detach()], [z], [kappa.detach()], 2, 0.25, True, False))
    grads = [torch.randn(6, 33, dtype=torch.float64)]
    applied = torch.full((6,), 0.25, dtype=torch.float64)
    torch.library.opcheck(ops.rescale_rows_.default, (grads, [], applied, torch.rand(6, dtype=torch.float64)),
                          test_utils=("test_schema", "test_faketensor"))


def test_rescale_rows_touches_only_rows_that_differ():
    grads = torch.randn(4, 8, dtype=torch.float64)
    before = grads.clone()
    applied = torch.full((4,), 0.5, dtype=torch.float64)
    upstream = torch.tensor([0.5, 1.0, 0.5, -0.25], dtype=torch.float64)
    torch.ops.vissiam_kernels.rescale_rows_([grads], [], applied, upstream)
    assert torch.equal(grads[0], before[0]) and torch.equal(grads[2], before[2])
    assert torch.allclose(grads[1], 2 * before[1]) and torch.allclose(grads[3], -0.5 * before[3])
    assert torch.equal(applied, upstream)


def test_float16_with_a_gradscaler_upstream_keeps_its_small_gradients():
    """A mean loss scaled by 2^16 (GradScaler) with small per-element gradients: the fp16 gradient must
    be the correctly rounded scaled gradient, not a rescaled copy of an underflowed 1/B-scaled buffer."""
    g = torch.Generator().manual_seed(3)
    p64 = 300.0 * torch.randn(512, 64, generator=g, dtype=torch.float64)
    z = torch.randn(512, 64, generator=g, dtype=torch.float64)
    kappa = torch.full((512,), 2.0, dtype=torch.float64)
    p = p64.half().requires_grad_()
    (65536.0 * vk.vmf_loss(p, z.half(), kappa.half())).backward()
    exact = p.detach().double().requires_grad_()
    (65536.0 * reference.vmf_nll(exact, z.half().double(), kappa.half().double())).backward()
    assert p.grad.dtype == torch.float16
    representable = exact.grad.abs() > 6.1e-5  # fp16 normal range: there the rounding is relative
    relative = ((p.grad.double() - exact.grad).abs() / exact.grad.abs())[representable]
    assert relative.max() <= 2.0 ** -10, f"worst relative error {relative.max():.2e}"
