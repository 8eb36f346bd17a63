"""The training path of the public losses on CPU (csrc/loss_autograd.cpp, the op spherical_loss):
exact gradients for any upstream gradient, the gradient written in the forward pass handed to
autograd without another pass, and the op's registration (opcheck, one autograd node)."""

from __future__ import annotations

import pytest
import torch

import vissiam_kernels as vk
from torch.utils._python_dispatch import TorchDispatchMode

from vissiam_kernels import _codes, _extension, reference


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


class OpLog(TorchDispatchMode):
    """The ops dispatched while active (ours called from C++ included) that touch a tensor of at least
    ``min_numel`` elements: a pass over the (B, D) rows. Views (metadata only) are not passes; a
    ``detach`` is AccumulateGrad taking the gradient buffer itself as p.grad."""

    METADATA_ONLY = ("view", "detach", "alias", "_unsafe_view")

    def __init__(self, min_numel: int):
        super().__init__()
        self.min_numel = min_numel
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if any(t.numel() >= self.min_numel for t in tensors) and func.overloadpacket.__name__ not in self.METADATA_ONLY:
            self.names.append(str(func.overloadpacket).split(".")[-1])
        return out


@pytest.mark.parametrize("distribution", ["power_spherical", "vmf", "none"])
def test_vi_simsiam_loss_backward_does_no_pass_over_the_rows(distribution):
    """loss.backward() of a mean loss: the gradient buffers the forward wrote are p.grad as they are
    (no rescale, no copy); the kappa gradients are written directly."""
    p1, z1, k1 = inputs(rows=64, dim=256, dtype=torch.float32, seed=1)
    p2, z2, k2 = inputs(rows=64, dim=256, dtype=torch.float32, seed=2)
    kappas = (None, None) if distribution == "none" else (k1, k2)
    loss = vk.vi_simsiam_loss(p1, p2, z1, z2, *kappas, distribution=distribution)
    with OpLog(min_numel=64 * 256) as log:
        loss.backward()
    assert log.names == [], log.names
    assert p1.grad is not None and p2.grad is not None and p1.grad.is_contiguous()


def test_a_scaled_loss_costs_one_in_place_pass():
    p, z, kappa = inputs(dtype=torch.float32)
    loss = vk.power_spherical_loss(p, z, kappa)
    with OpLog(min_numel=p.numel()) as log:
        (4.0 * loss).backward()
    assert log.names == ["mul_"], log.names


def test_vi_simsiam_loss_gradients_with_both_views_and_kl():
    p1, z1, k1 = inputs(seed=1)
    p2, z2, k2 = inputs(seed=2)
    vk.vi_simsiam_loss(p1, p2, z1, z2, k1, k2, kl_weight=0.1).backward()
    q1, q2, c1, c2 = (t.detach().clone().requires_grad_() for t in (p1, p2, k1, k2))
    reference.vi_simsiam_loss(q1, q2, z1, z2, c1, c2, kl_weight=0.1).backward()
    for ours, expected in ((p1, q1), (p2, q2), (k1, c1), (k2, c2)):
        assert torch.allclose(ours.grad, expected.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("order", [(2.0, 1.0), (1.0, 2.0)])
def test_retain_graph_gives_the_same_gradient_twice(order):
    """A gradient handed out while the graph is kept never changes when the last backward scales."""
    p, z, kappa = inputs()
    loss = vk.vmf_loss(p, z, kappa)
    (first,) = torch.autograd.grad(order[0] * loss, p, retain_graph=True)
    kept = first.clone()
    (second,) = torch.autograd.grad(order[1] * loss, p)
    assert torch.equal(first, kept)
    assert torch.allclose(first / order[0], second / order[1], rtol=1e-14)


def test_target_gradients_through_the_nll():
    p, z, kappa = inputs()
    z.requires_grad_()
    vk.power_spherical_nll(p, z, kappa, reduction="sum").backward()
    z64 = z.detach().clone().requires_grad_()
    reference.power_spherical_nll(p.detach(), z64, kappa.detach(), "sum").backward()
    assert torch.allclose(z.grad, z64.grad, rtol=1e-10, atol=1e-14)


def test_double_backward_is_refused_with_a_clear_error():
    p, z, kappa = inputs()
    loss = vk.vmf_loss(p, z, kappa)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(loss, p, create_graph=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("family", ["none", "vmf", "power_spherical"])
def test_opcheck_spherical_loss(family, reduction):
    p1, z1, k1 = inputs(seed=1)
    p2, z2, k2 = inputs(seed=2)
    code = _codes.FAMILY_CODES[family]
    kappa = [] if family == "none" else [k1, k2]
    kl_weight = 0.0 if family == "none" else 0.1
    torch.library.opcheck(torch.ops.vissiam_kernels.spherical_loss.default,
                          ([p1, p2], [z2, z1], kappa, code, _codes.REDUCTION_CODES[reduction], kl_weight, "p1 z2 k1 p2 z1 k2"))


@pytest.mark.parametrize("flags", [(False, False, False), (True, False, False), (True, True, False), (True, True, True)])
def test_opcheck_spherical_loss_forward(flags):
    p, z, kappa = inputs()
    torch.library.opcheck(torch.ops.vissiam_kernels.spherical_loss_forward.default,
                          ([p.detach()], [z], [kappa.detach()], 2, 1, 0.0, *flags))


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [2048, 2047], ids=["rows-aligned", "rows-unaligned"])
def test_gradient_rows_written_around_the_cache_equal_cached_writes(dtype, dim):
    """A pass larger than half the last-level cache writes its gradient rows with non-temporal stores
    (csrc/cpu/row_streams.h: stream_output); a few rows of the same inputs are written with ordinary
    stores. Rows are independent and "sum" gives each the same weight, so the rows must agree bitwise:
    float32/bfloat16/float64 in the forward's 3S path, float16 in the deferred backward
    (scaled_row_combination). Unaligned rows (D = 2047) take the ordinary stores."""
    rows = 8192 if dtype.itemsize <= 2 else 4096  # >= 64 MiB moved: streamed for any L3 up to 128 MiB
    g = torch.Generator().manual_seed(3)
    p = torch.randn(rows, dim, generator=g).to(dtype).requires_grad_()
    z = torch.randn(rows, dim, generator=g).to(dtype)
    kappa = (1e3 * torch.rand(rows, generator=g)).requires_grad_()
    vk.vmf_loss(p, z, kappa, reduction="sum").backward()
    assert vk.last_backend() == "cpu"
    few = slice(1000, 1016)
    p_few = p.detach()[few].clone().requires_grad_()
    vk.vmf_loss(p_few, z[few], kappa.detach()[few], reduction="sum").backward()
    assert torch.equal(p.grad[few], p_few.grad)
    assert torch.isfinite(p.grad.float()).all() and p.grad.abs().sum() > 0


_PORTABLE_STREAMS_PROGRAM = r"""
import sys, torch, vissiam_kernels as vk
g = torch.Generator().manual_seed(5)
out = {}
for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    for rows, dim in ((37, 3), (64, 130), (2048, 2048)):  # tails, a row of 8 + 2, streamed writes
        p = torch.randn(rows, dim, generator=g).to(dtype).requires_grad_()
        z = torch.randn(rows, dim, generator=g).to(dtype)
        kappa = (50 * torch.rand(rows, generator=g)).requires_grad_()
        loss = vk.vmf_loss(p, z, kappa, reduction="sum")
        loss.backward()
        assert vk.last_backend() == "cpu"
        out[f"{dtype}-{rows}-{dim}"] = (loss.detach().double(), p.grad.double(), kappa.grad.double())
torch.save(out, sys.argv[1])
"""


def test_portable_row_streams_agree_with_the_vector_path(tmp_path):
    """The portable row streams (plain vector extensions: non-x86 CPUs, x86 without AVX2) against the
    AVX2 path that this machine takes by default, on the same inputs: losses to float64 rounding,
    gradients to one rounding of their dtype (the paths contract products into FMAs differently)."""
    import os
    import subprocess
    import sys

    results = {}
    for name, env in (("default", {}), ("portable", {"VISSIAM_CPU_STREAMS": "portable"})):
        path = tmp_path / f"{name}.pt"
        subprocess.run([sys.executable, "-c", _PORTABLE_STREAMS_PROGRAM, str(path)], check=True,
                       env={**os.environ, "VISSIAM_BACKEND": "cpu", **env}, timeout=600)
        results[name] = torch.load(path)
    assert results["default"].keys() == results["portable"].keys()
    for key, (loss, grad_p, grad_kappa) in results["default"].items():
        loss_p, grad_p_p, grad_kappa_p = results["portable"][key]
        eps = torch.finfo(getattr(torch, key.split("-")[0].removeprefix("torch."))).eps
        torch.testing.assert_close(loss_p, loss, rtol=1e-12, atol=0, msg=key)
        torch.testing.assert_close(grad_kappa_p, grad_kappa, rtol=1e-12, atol=1e-15, msg=key)
        torch.testing.assert_close(grad_p_p, grad_p, rtol=eps, atol=eps * grad_p.abs().max().item(), msg=key)
