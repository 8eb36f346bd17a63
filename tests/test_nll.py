"""Fused NLL kernels against the float64 pure-PyTorch reference and SciPy: values, gradients, extremes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vissiam_kernels as vk
from vissiam_kernels import reference

from conftest import first_mismatch

FAMILIES = ("power_spherical", "vmf")
NLL = {"power_spherical": vk.power_spherical_nll, "vmf": vk.vmf_nll}
REFERENCE_NLL = {"power_spherical": reference.power_spherical_nll, "vmf": reference.vmf_nll}


def make_inputs(shape, dim, dtype=torch.float32, kappa_scale=1e3, seed=0, correlation=0.7):
    generator = torch.Generator().manual_seed(seed)
    mu = torch.randn(*shape, dim, generator=generator, dtype=torch.float64)
    target = correlation * mu + (1 - correlation) * torch.randn(*shape, dim, generator=generator, dtype=torch.float64)
    kappa = kappa_scale * torch.rand(*shape, generator=generator, dtype=torch.float64)
    return mu.to(dtype), target.to(dtype), kappa.to(dtype)


def reference_rows(family, mu, target, kappa):
    """float64 reference NLL per row from the same (exactly representable) inputs."""
    return REFERENCE_NLL[family](mu.double(), target.double(), kappa.double(), "none")


def assert_close_rows(actual, expected, rtol, atol=1e-6):
    assert torch.allclose(actual.double(), expected, rtol=rtol, atol=atol), first_mismatch(actual.double(), expected, rtol, atol)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("shape, dim", [((1,), 2), ((5,), 3), ((7,), 33), ((4,), 2048), ((2, 3), 17), ((3,), 4097)])
def test_nll_matches_float64_reference(use_backend, family, dtype, rtol, shape, dim):
    ran = use_backend("cpu")
    mu, target, kappa = make_inputs(shape, dim, dtype)
    out = NLL[family](mu, target, kappa, reduction="none")
    ran()
    assert out.shape == shape and out.dtype == dtype
    assert_close_rows(out, reference_rows(family, mu, target, kappa), rtol)


@pytest.mark.parametrize("dim", [3, 10, 64])
def test_vmf_nll_matches_scipy_vonmises_fisher(use_backend, dim):
    use_backend("cpu")
    mu, target, _ = make_inputs((6,), dim, torch.float64, seed=dim)
    mu = torch.nn.functional.normalize(mu, dim=-1)
    target = torch.nn.functional.normalize(target, dim=-1)
    for kappa_value in (0.5, 7.0, 120.0, 900.0):
        kappa = torch.full((6,), kappa_value, dtype=torch.float64)
        ours = vk.vmf_nll(mu, target, kappa, reduction="none")
        expected = [
            -scipy.stats.vonmises_fisher(m.numpy(), kappa_value).logpdf(t.numpy()) for m, t in zip(mu, target)
        ]
        np.testing.assert_allclose(ours.numpy(), np.array(expected), rtol=1e-10, atol=1e-10)


def test_scipy_vonmises_fisher_is_not_finite_where_ours_is(use_backend):
    """At d = 2048 SciPy's density overflows for kappa below ~660; ours is finite and matches the reference."""
    use_backend("cpu")
    mu, target, _ = make_inputs((1,), 2048, torch.float64)
    mu, target = (torch.nn.functional.normalize(x, dim=-1) for x in (mu, target))
    kappa = torch.tensor([100.0], dtype=torch.float64)
    with np.errstate(all="ignore"):
        scipy_value = scipy.stats.vonmises_fisher(mu[0].numpy(), 100.0).logpdf(target[0].numpy())
    assert not np.isfinite(scipy_value)
    ours = vk.vmf_nll(mu, target, kappa, reduction="none")
    assert torch.isfinite(ours).all()
    assert_close_rows(ours, reference_rows("vmf", mu, target, kappa), 1e-12)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("family", FAMILIES)
def test_gradcheck_nll_all_inputs(use_backend, family):
    ran = use_backend("cpu")
    mu, target, kappa = make_inputs((3,), 5, torch.float64, kappa_scale=20.0)
    inputs = tuple(x.clone().requires_grad_() for x in (mu, target, kappa + 0.5))
    assert torch.autograd.gradcheck(lambda m, t, k: NLL[family](m, t, k, reduction="none"), inputs)
    ran()


@pytest.mark.parametrize(
    "distribution, kl_weight", [("power_spherical", 0.0), ("power_spherical", 0.1), ("vmf", 0.0), ("vmf", 0.1), ("none", 0.0)]
)
def test_gradcheck_vi_simsiam_loss(use_backend, distribution, kl_weight):
    use_backend("cpu")
    p1, z2, k1 = make_inputs((4,), 6, torch.float64, kappa_scale=30.0, seed=1)
    p2, z1, k2 = make_inputs((4,), 6, torch.float64, kappa_scale=30.0, seed=2)
    p1, p2, k1, k2 = (x.clone().requires_grad_() for x in (p1, p2, k1 + 0.1, k2 + 0.1))
    if distribution == "none":
        fn = lambda a, b: vk.vi_simsiam_loss(a, b, z1, z2, distribution="none")  # noqa: E731
        assert torch.autograd.gradcheck(fn, (p1, p2))
    else:
        fn = lambda a, b, c, d: vk.vi_simsiam_loss(a, b, z1, z2, c, d, distribution=distribution, kl_weight=kl_weight)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (p1, p2, k1, k2))


def test_gradcheck_cosine_loss(use_backend):
    use_backend("cpu")
    p, z, _ = make_inputs((5,), 7, torch.float64)
    assert torch.autograd.gradcheck(lambda a: vk.vmf_loss(a, z, reduction="sum"), (p.requires_grad_(),))


@pytest.mark.parametrize(
    "fn",
    [vk.power_spherical_log_normalizer, vk.vmf_log_normalizer, vk.power_spherical_entropy, vk.vmf_entropy,
     vk.power_spherical_kl_uniform, vk.vmf_kl_uniform],
)
@pytest.mark.parametrize("dim", [2, 3, 64, 2048])
def test_gradcheck_normalizer_functions(use_backend, fn, dim):
    ran = use_backend("cpu")
    kappa = torch.tensor([1e-3, 0.7, 12.0, 350.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda k: fn(k, dim), (kappa,), eps=1e-6, atol=1e-6, rtol=1e-5)
    ran()
    # large kappa: gradcheck's fixed step drowns in rounding there; use a step relative to kappa
    for value in (4e4, 1e6):
        k = torch.tensor([value], dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(fn(k, dim).sum(), k)
        h = value * 1e-4
        quotient = (fn(k.detach() + h, dim) - fn(k.detach() - h, dim)) / (2 * h)
        assert abs(grad.item() - quotient.item()) <= 1e-4 * abs(quotient.item()) + 1e-10
    # gradient at kappa = 0 equals the second-order one-sided difference (-3 f(0) + 4 f(h) - f(2h)) / 2h
    k0 = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(fn(k0, dim).sum(), k0)
    h = 1e-4
    f = [fn(torch.tensor([i * h], dtype=torch.float64), dim).item() for i in range(3)]
    quotient = (-3 * f[0] + 4 * f[1] - f[2]) / (2 * h)
    assert abs(grad.item() - quotient) <= 1e-6 * max(1.0, abs(quotient))


def test_second_derivative_of_log_normalizer_through_autograd(use_backend):
    use_backend("cpu")
    kappa = torch.tensor([0.3, 5.0, 800.0], dtype=torch.float64, requires_grad=True)
    for fn in (vk.power_spherical_log_normalizer, vk.vmf_log_normalizer):
        assert torch.autograd.gradgradcheck(lambda k: fn(k, 9), (kappa,))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dim", [3, 2048])
def test_float32_gradients_match_float64_reference(use_backend, family, dim):
    use_backend("cpu")
    mu, target, kappa = make_inputs((16,), dim, torch.float32, kappa_scale=5e3, seed=dim)
    mu.requires_grad_(), target.requires_grad_(), kappa.requires_grad_()
    NLL[family](mu, target, kappa).backward()
    mu64, target64, kappa64 = (x.detach().double().requires_grad_() for x in (mu, target, kappa))
    REFERENCE_NLL[family](mu64, target64, kappa64).backward()
    for ours, exact in ((mu.grad, mu64.grad), (target.grad, target64.grad), (kappa.grad, kappa64.grad)):
        assert ours.dtype == torch.float32
        error = (ours.double() - exact).norm() / exact.norm()
        assert error <= 1e-5, f"relative gradient error {error:.2e}"
        assert torch.allclose(ours.double(), exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())


# ---------------------------------------------------------------- extremes
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kappa_value", [0.0, 1e-30, 1e-6, 1e7])
@pytest.mark.parametrize("dim", [2, 3, 2048, 65536])
def test_extreme_kappa_and_dimension(use_backend, family, kappa_value, dim):
    use_backend("cpu")
    mu, target, _ = make_inputs((2,), dim, torch.float32, seed=3)
    kappa = torch.full((2,), kappa_value, requires_grad=True)
    mu.requires_grad_()
    out = NLL[family](mu, target, kappa, reduction="none")
    assert torch.isfinite(out).all()
    assert_close_rows(out.detach(), reference_rows(family, mu.detach(), target, kappa.detach()), 1e-6)
    out.sum().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(kappa.grad).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_antipodal_and_identical_targets(use_backend, family):
    use_backend("cpu")
    mu = torch.randn(3, 64, dtype=torch.float64)
    kappa = torch.tensor([0.0, 5.0, 1e4], dtype=torch.float64)
    for target in (-mu, mu.clone(), 3.0 * mu):
        m = mu.clone().requires_grad_()
        out = NLL[family](m, target, kappa, reduction="none")
        assert torch.isfinite(out).all()
        out.sum().backward()
        assert torch.isfinite(m.grad).all()
    # power spherical at c = -1: 1 + c is floored at 1e-12 (documented): NLL = -log C + kappa * 27.63...
    if family == "power_spherical":
        out = vk.power_spherical_nll(mu, -mu, kappa, reduction="none")
        floor_term = -kappa * math.log(reference.POWER_SPHERICAL_ONE_PLUS_COS_FLOOR)
        expected = -vk.power_spherical_log_normalizer(kappa, 64) + floor_term
        assert torch.allclose(out, expected, rtol=1e-9)
    else:  # vMF at c = -1: -log C + kappa
        out = vk.vmf_nll(mu, -mu, kappa, reduction="none")
        assert torch.allclose(out, -vk.vmf_log_normalizer(kappa, 64) + kappa, rtol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_vectors_follow_f_normalize(use_backend, family):
    """A zero row normalizes to 0 (F.normalize's eps), so cos = 0; gradients match autograd of F.normalize."""
    use_backend("cpu")
    mu = torch.randn(3, 8, dtype=torch.float64)
    mu[1] = 0.0
    target = torch.randn(3, 8, dtype=torch.float64)
    target[2] = 0.0
    kappa = torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)
    inputs = [x.clone().requires_grad_() for x in (mu, target, kappa)]
    ours = NLL[family](*inputs, reduction="none")
    ours.sum().backward()
    inputs64 = [x.clone().requires_grad_() for x in (mu, target, kappa)]
    expected = REFERENCE_NLL[family](*inputs64, "none")
    expected.sum().backward()
    assert torch.allclose(ours, expected, rtol=1e-12)
    for a, b in zip(inputs, inputs64):
        assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_non_contiguous_and_broadcast_inputs(use_backend, family):
    use_backend("cpu")
    base = torch.randn(6, 2 * 40, dtype=torch.float64)
    mu = base[:, ::2]  # inner stride 2
    target = torch.randn(40, 6, dtype=torch.float64).t()  # transposed
    kappa = torch.rand(12, dtype=torch.float64)[::2] * 50  # strided kappa
    expanded = torch.randn(1, 40, dtype=torch.float64).expand(6, 40)  # row stride 0
    for t in (target, expanded):
        out = NLL[family](mu, t, kappa, reduction="none")
        expected = REFERENCE_NLL[family](mu.contiguous(), t.contiguous(), kappa.contiguous(), "none")
        assert torch.allclose(out, expected, rtol=1e-12)
    # gradients of a non-contiguous input
    m = mu.clone().t().contiguous().t().requires_grad_()  # column-major leaf
    NLL[family](m, target, kappa).backward()
    m64 = mu.clone().requires_grad_()
    REFERENCE_NLL[family](m64, target, kappa).backward()
    assert torch.allclose(m.grad, m64.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(use_backend, family, dtype):
    """Half inputs: loss in float32 (|NLL| ~ 9000 at d = 2048 is beyond bfloat16), gradients in the input dtype."""
    use_backend("cpu")
    mu, target, kappa = make_inputs((8,), 2048, dtype, kappa_scale=2e4)
    mu.requires_grad_(), kappa.requires_grad_()
    out = NLL[family](mu, target, kappa, reduction="none")
    assert out.dtype == torch.float32
    assert_close_rows(out.detach(), reference_rows(family, mu.detach(), target, kappa.detach()), 1e-6)
    out.sum().backward()
    assert mu.grad.dtype == dtype and kappa.grad.dtype == dtype
    mu64, kappa64 = mu.detach().double().requires_grad_(), kappa.detach().double().requires_grad_()
    REFERENCE_NLL[family](mu64, target.double(), kappa64, "none").sum().backward()
    resolution = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    assert torch.allclose(mu.grad.double(), mu64.grad, rtol=resolution, atol=resolution * mu64.grad.abs().max().item())


def test_batch_of_one_and_leading_dimensions(use_backend):
    use_backend("cpu")
    mu, target, kappa = make_inputs((1,), 5, torch.float64)
    assert vk.power_spherical_nll(mu, target, kappa, reduction="none").shape == (1,)
    mu, target, kappa = make_inputs((2, 3, 4), 5, torch.float64)
    out = vk.vmf_nll(mu, target, kappa, reduction="none")
    assert out.shape == (2, 3, 4)
    assert torch.allclose(out, reference.vmf_nll(mu, target, kappa, "none"), rtol=1e-12)


def test_results_are_bitwise_deterministic_across_thread_counts(use_backend):
    use_backend("cpu")
    mu, target, kappa = make_inputs((257,), 1000, torch.float32)
    mu.requires_grad_()
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            mu.grad = None
            out = vk.power_spherical_nll(mu, target, kappa, reduction="none")
            out.sum().backward()
            results.append((out.detach().clone(), mu.grad.clone()))
    finally:
        torch.set_num_threads(threads)
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


# ---------------------------------------------------------------- property-based
@settings(max_examples=60, deadline=None)
@given(
    family=st.sampled_from(FAMILIES),
    dim=st.integers(min_value=2, max_value=600),
    rows=st.integers(min_value=1, max_value=9),
    log_kappa=st.floats(min_value=-6, max_value=6),
    seed=st.integers(min_value=0, max_value=2**16),
    correlation=st.floats(min_value=-0.9, max_value=0.99),
)
def test_property_nll_and_gradients_match_reference(family, dim, rows, log_kappa, seed, correlation):
    import os

    os.environ["VISSIAM_BACKEND"] = "cpu"
    try:
        mu, target, kappa = make_inputs((rows,), dim, torch.float32, kappa_scale=1.0, seed=seed, correlation=correlation)
        kappa = kappa * 10.0**log_kappa
        mu.requires_grad_(), kappa.requires_grad_()
        out = NLL[family](mu, target, kappa, reduction="none")
        assert vk.last_backend() == "cpu"
        expected = reference_rows(family, mu.detach(), target, kappa.detach())
        assert_close_rows(out.detach(), expected, 1e-6)
        out.sum().backward()
        k64 = kappa.detach().double().requires_grad_()
        REFERENCE_NLL[family](mu.detach().double(), target.double(), k64, "none").sum().backward()
        assert torch.allclose(kappa.grad.double(), k64.grad, rtol=1e-5, atol=1e-6)
    finally:
        del os.environ["VISSIAM_BACKEND"]
