"""The CUDA C++ kernels (csrc/cuda) on a GPU: the CPU kernels' checks, and agreement with the CPU kernels.

Marked ``gpu`` and skipped, with the reason, where no CUDA device is visible; run on
a lent GPU machine with ``pytest -m gpu tests/test_cuda_kernels.py``. The CUDA
library is built on first use (about a minute per architecture); a build failure
fails these tests rather than skipping them (only a missing toolkit skips them).

Two kinds of check: the accuracy targets of the issues (float64 reference, the
mpmath golden table, gradcheck) and agreement with the CPU kernels on the same
inputs, which run the same header math in double (differences come only from
the summation order and libdevice vs libm rounding).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import vissiam_kernels as vk
from vissiam_kernels import _cuda_extension, _extension, _ops, reference

from conftest import GOLDEN_TABLE, first_mismatch, load_golden_rows, relative_to_scale
from test_golden_table import FLOAT32_TOLERANCE, FLOAT64_TOLERANCE
from test_nll import NLL, REFERENCE_NLL, assert_close_rows, make_inputs, reference_rows

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"),
]

CUDA = "cuda"
FAMILIES = ("power_spherical", "vmf")
ops = torch.ops.vissiam_kernels


@pytest.fixture(scope="module", autouse=True)
def cuda_library():
    _extension.load_cpu_library()
    try:
        _cuda_extension.load()  # builds on first use; a compile error fails the tests
    except _cuda_extension.CudaToolkitMissing as error:
        pytest.skip(f"no CUDA toolkit to build the kernels with: {error}")
    assert _cuda_extension.has_cuda_kernels()


def on_cuda(*tensors):
    return tuple(t.to(CUDA) for t in tensors)


def assert_matches_cpu(cuda_out: torch.Tensor, cpu_out: torch.Tensor, rtol: float, what: str = ""):
    """Elementwise within rtol, and within rtol of the largest value (summation order, FMA contraction)."""
    actual, expected = cuda_out.cpu().double(), cpu_out.double()
    finite = expected[torch.isfinite(expected)]
    atol = rtol * max(1.0, finite.abs().max().item() if finite.numel() else 1.0)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True), (
        f"{what}: {first_mismatch(actual, expected, rtol, atol)}"
    )


# ---------------------------------------------------------------- backend
def test_backend_is_cuda(use_backend):
    ran = use_backend("cuda")
    p, z, kappa = on_cuda(*make_inputs((8,), 64))
    loss = vk.power_spherical_loss(p, z, kappa)
    ran()
    assert loss.device.type == "cuda" and loss.dtype == torch.float32
    assert vk.vmf_log_normalizer(kappa, 64).device.type == "cuda"
    ran()


# ---------------------------------------------------------------- values
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize(
    "shape, dim",
    [((1,), 2), ((5,), 3), ((7,), 33), ((4,), 2048), ((2, 3), 17), ((3,), 4097), ((1000,), 64), ((2,), 65536)],
)
def test_nll_matches_float64_reference(use_backend, family, dtype, rtol, shape, dim):
    ran = use_backend("cuda")
    mu, target, kappa = make_inputs(shape, dim, dtype)
    out = NLL[family](*on_cuda(mu, target, kappa), reduction="none")
    ran()
    assert out.shape == shape and out.dtype == dtype and out.device.type == "cuda"
    assert_close_rows(out.cpu(), reference_rows(family, mu, target, kappa), rtol)


@pytest.mark.parametrize("family", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows, dim", [(3, 2), (64, 7), (513, 1000), (16, 2048), (2, 4099), (1, 65536), (5000, 128)])
def test_spherical_nll_op_matches_cpu_kernel(family, dtype, rows, dim):
    """nll and the whole row state (gradient coefficients, dNLL/dkappa) as the CPU kernel gives them."""
    views = [make_inputs((rows,), dim, dtype, kappa_scale=3e3, seed=s) for s in (1, 2)]
    mu, target, kappa = ([v[i] for v in views] for i in range(3))
    kappa = [] if family == 0 else [k.float() for k in kappa]
    cpu_nll, cpu_state = ops.spherical_nll(mu, target, kappa, family)
    gpu_nll, gpu_state = ops.spherical_nll(
        [m.to(CUDA) for m in mu], [t.to(CUDA) for t in target], [k.to(CUDA) for k in kappa], family
    )
    assert gpu_nll.dtype == cpu_nll.dtype and gpu_state.dtype == torch.float64
    assert gpu_nll.shape == (2 * rows,) and gpu_state.shape == (2 * rows, 4)
    rtol = 1e-6 if gpu_nll.dtype == torch.float32 else 1e-11
    assert_matches_cpu(gpu_nll, cpu_nll, rtol, "nll")
    assert_matches_cpu(gpu_state, cpu_state, 1e-9, "row_state")


def test_views_of_different_dtypes_in_one_call():
    (m1, t1, k1), (m2, t2, k2) = make_inputs((9,), 40, torch.float32, seed=1), make_inputs((5,), 40, torch.float64, seed=2)
    cpu = ops.spherical_nll([m1, m2], [t1, t2], [k1, k2], 2)
    gpu = ops.spherical_nll(list(on_cuda(m1, m2)), list(on_cuda(t1, t2)), list(on_cuda(k1, k2)), 2)
    assert gpu[0].dtype == torch.float64
    assert_matches_cpu(gpu[0], cpu[0], 1e-11, "nll")
    assert_matches_cpu(gpu[1], cpu[1], 1e-9, "row_state")


@pytest.mark.parametrize("distribution, kl_weight", [("power_spherical", 0.0), ("vmf", 0.1), ("none", 0.0)])
def test_vi_simsiam_loss_both_views_match_reference(use_backend, distribution, kl_weight):
    ran = use_backend("cuda")
    p1, z2, k1 = make_inputs((32,), 2048, torch.float32, kappa_scale=2e4, seed=1)
    p2, z1, k2 = make_inputs((32,), 2048, torch.float32, kappa_scale=2e4, seed=2)
    kappas = (None, None) if distribution == "none" else on_cuda(k1, k2)
    ours = vk.vi_simsiam_loss(*on_cuda(p1, p2, z1, z2), *kappas, distribution=distribution, kl_weight=kl_weight,
                              reduction="none")
    ran()
    kappas64 = (None, None) if distribution == "none" else (k1.double(), k2.double())
    expected = reference.vi_simsiam_loss(p1.double(), p2.double(), z1.double(), z2.double(), *kappas64,
                                         distribution=distribution, kl_weight=kl_weight, reduction="none")
    assert_close_rows(ours.cpu(), expected, 1e-6)


@pytest.mark.parametrize("quantity", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("family", [1, 2])
@pytest.mark.parametrize("dim", [2, 3, 64, 2048, 65537])
def test_normalizer_quantity_matches_cpu_kernel(family, quantity, dim):
    kappa = torch.cat([torch.tensor([0.0, 1e-6, 0.3, 1e7]), torch.logspace(-6, 6, 61)]).double()
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        k = kappa.to(dtype)
        cpu = ops.normalizer_quantity(k, dim, family, quantity)
        gpu = ops.normalizer_quantity(k.to(CUDA), dim, family, quantity)
        assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape
        error = relative_to_scale(gpu.cpu().double() - cpu.double(), cpu.double())
        tolerance = 1e-11 if dtype == torch.float64 else 1.2e-7  # float32 outputs: one rounding apart at most
        assert error.max() <= tolerance, f"{dtype}: {first_mismatch(gpu.cpu().double(), cpu.double(), tolerance)}"
    # any shape and strides
    k2 = (torch.rand(4, 6, dtype=torch.float64) * 50).t()
    assert torch.allclose(ops.normalizer_quantity(k2.to(CUDA), dim, family, quantity).cpu(),
                          ops.normalizer_quantity(k2, dim, family, quantity), rtol=1e-11, atol=1e-11)


SPECIAL_GRID = {
    "lgamma_difference": ([0.5, 1.0, 2.5, 9.99, 10.0, 31.5, 1023.5, 32767.5, 1e6 + 0.5], [0.0, 0.5, 7.5, 1023.5, 32767.5]),
    "digamma_difference": ([0.5, 1.0, 2.5, 9.99, 10.0, 31.5, 1023.5, 32767.5, 1e6 + 0.5], [0.0, 0.5, 7.5, 1023.5, 32767.5]),
    "trigamma_difference": ([0.5, 1.0, 2.5, 9.99, 10.0, 31.5, 1023.5, 32767.5], [0.0, 0.5, 7.5, 1023.5, 32767.5]),
    "log2_plus_digamma_difference": ([0.5, 1.5, 10.0, 1023.5 + 1e-6, 32767.5 + 1e-6, 1e6], [0.5, 1023.5, 32767.5]),
    "log_bessel_i": ([0.0, 0.5, 1.0, 29.5, 30.0, 30.5, 1023.0, 32767.0], [0.0, 1e-30, 1e-6, 0.7, 29.0, 400.0, 1e4, 1e6]),
    "log_bessel_i_scaled": ([0.0, 0.5, 1.0, 29.5, 30.0, 1023.0, 32767.0], [0.0, 1e-6, 0.7, 29.0, 400.0, 1e4, 1e6]),
    "bessel_ratio": ([0.0, 0.5, 1.0, 29.5, 30.0, 30.5, 1023.0, 32767.0], [0.0, 1e-30, 1e-6, 0.7, 29.0, 400.0, 1e4, 1e6]),
    "bessel_ratio_complement": ([0.0, 0.5, 1.0, 29.5, 30.0, 30.5, 1023.0, 32767.0],
                                [0.0, 1e-30, 1e-6, 0.7, 29.0, 400.0, 1e4, 1e6, 1e7]),
}


@pytest.mark.parametrize("name", sorted(SPECIAL_GRID))
def test_header_special_functions_on_the_device_match_the_cpu_build(name):
    """The shared header compiled for the device gives the CPU build's values (libdevice vs libm: a few ulps)."""
    a_values, b_values = SPECIAL_GRID[name]
    a, b = torch.meshgrid(torch.tensor(a_values, dtype=torch.float64), torch.tensor(b_values, dtype=torch.float64),
                          indexing="ij")
    a, b = a.contiguous(), b.contiguous()
    cpu = ops.special_function(name, a, b)
    gpu = ops.special_function(name, a.to(CUDA), b.to(CUDA)).cpu()
    assert torch.equal(torch.isfinite(gpu), torch.isfinite(cpu)), name
    finite = torch.isfinite(cpu)
    assert torch.equal(gpu[~finite], cpu[~finite]), name
    error = relative_to_scale(gpu[finite] - cpu[finite], cpu[finite])
    assert error.max() <= 1e-13, f"{name}: {first_mismatch(gpu, cpu, 1e-13, 1e-13)}"


# ---------------------------------------------------------------- golden table
@pytest.fixture(scope="module")
def golden_rows():
    if not GOLDEN_TABLE.is_file():
        pytest.skip(f"{GOLDEN_TABLE} not generated yet (tests/data/make_golden_table.py)")
    return load_golden_rows()


@pytest.mark.parametrize("column, quantity", [("log_normalizer", 0), ("dlog_normalizer_dkappa", 1)])
def test_golden_table_float32_within_2e6_and_float64(golden_rows, column, quantity):
    worst = 0.0
    groups = {}
    for row in golden_rows:
        groups.setdefault((row["family"], row["dim"]), []).append(row)
    for (family, dim), rows in groups.items():
        kappa = torch.tensor([row["kappa"] for row in rows], dtype=torch.float64)
        exact = torch.tensor([row[column] for row in rows], dtype=torch.float64)
        ours32 = ops.normalizer_quantity(kappa.float().to(CUDA), dim, _ops.FAMILY_CODES[family], quantity).cpu()
        assert ours32.dtype == torch.float32
        error = relative_to_scale(ours32.double() - exact, exact)
        i = int(error.argmax())
        assert error[i] <= FLOAT32_TOLERANCE, f"{family} d={dim} kappa={kappa[i].item()}: {ours32[i].item()!r} vs {exact[i].item()!r}"
        worst = max(worst, error.max().item())
        ours64 = ops.normalizer_quantity(kappa.to(CUDA), dim, _ops.FAMILY_CODES[family], quantity).cpu()
        assert relative_to_scale(ours64 - exact, exact).max() <= FLOAT64_TOLERANCE[column], f"{family} d={dim} float64"
    print(f"worst CUDA float32 {column} error vs mpmath: {worst:.2e}")


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("family", FAMILIES)
def test_gradcheck_nll_all_inputs(use_backend, family):
    ran = use_backend("cuda")
    mu, target, kappa = make_inputs((3,), 5, torch.float64, kappa_scale=20.0)
    inputs = tuple(x.to(CUDA).requires_grad_() for x in (mu, target, kappa + 0.5))
    assert torch.autograd.gradcheck(lambda m, t, k: NLL[family](m, t, k, reduction="none"), inputs)
    ran()


@pytest.mark.parametrize("distribution, kl_weight", [("power_spherical", 0.1), ("vmf", 0.0), ("none", 0.0)])
def test_gradcheck_vi_simsiam_loss(use_backend, distribution, kl_weight):
    use_backend("cuda")
    p1, z2, k1 = on_cuda(*make_inputs((4,), 6, torch.float64, kappa_scale=30.0, seed=1))
    p2, z1, k2 = on_cuda(*make_inputs((4,), 6, torch.float64, kappa_scale=30.0, seed=2))
    p1, p2, k1, k2 = (x.clone().requires_grad_() for x in (p1, p2, k1 + 0.1, k2 + 0.1))
    if distribution == "none":
        assert torch.autograd.gradcheck(lambda a, b: vk.vi_simsiam_loss(a, b, z1, z2, distribution="none"), (p1, p2))
    else:
        fn = lambda a, b, c, d: vk.vi_simsiam_loss(a, b, z1, z2, c, d, distribution=distribution, kl_weight=kl_weight)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (p1, p2, k1, k2))


@pytest.mark.parametrize("fn", [vk.power_spherical_log_normalizer, vk.vmf_log_normalizer, vk.power_spherical_entropy,
                                vk.vmf_kl_uniform])
def test_gradcheck_normalizer_functions(use_backend, fn):
    use_backend("cuda")
    kappa = torch.tensor([1e-3, 0.7, 12.0, 350.0], dtype=torch.float64, device=CUDA, requires_grad=True)
    for dim in (2, 3, 64, 2048):
        assert torch.autograd.gradcheck(lambda k: fn(k, dim), (kappa,), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dim", [3, 2048, 4099])
def test_float32_gradients_match_float64_reference(use_backend, family, dim):
    use_backend("cuda")
    mu, target, kappa = (x.to(CUDA).requires_grad_() for x in make_inputs((16,), dim, torch.float32, kappa_scale=5e3, seed=dim))
    NLL[family](mu, target, kappa).backward()
    mu64, target64, kappa64 = (x.detach().cpu().double().requires_grad_() for x in (mu, target, kappa))
    REFERENCE_NLL[family](mu64, target64, kappa64).backward()
    for ours, exact in ((mu.grad, mu64.grad), (target.grad, target64.grad), (kappa.grad, kappa64.grad)):
        assert ours.dtype == torch.float32 and ours.device.type == "cuda"
        ours = ours.cpu().double()
        error = (ours - exact).norm() / exact.norm()
        assert error <= 1e-5, f"relative gradient error {error:.2e}"
        assert torch.allclose(ours, exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("dim", [2, 33, 2048])
def test_scaled_row_combination_matches_cpu_kernel(dtype, dim):
    """Strided and expanded coefficients (a row_state column, a "mean" gradient), several views."""
    g = torch.Generator().manual_seed(dim)
    x = [torch.randn(r, dim, generator=g).to(dtype) for r in (5, 3)]
    y = [torch.randn(r, dim, generator=g).to(dtype) for r in (5, 3)]
    state = torch.randn(8, 4, generator=g, dtype=torch.float64)
    for scale in (torch.tensor(0.125).expand(8), torch.randn(8, generator=g)):
        cpu = ops.scaled_row_combination(scale, state[:, 0], state[:, 2], x, y)
        gpu = ops.scaled_row_combination(scale.to(CUDA), state[:, 0].to(CUDA), state[:, 2].to(CUDA),
                                         [v.to(CUDA) for v in x], [v.to(CUDA) for v in y])
        for a, b in zip(gpu, cpu):
            assert a.dtype == dtype and a.is_contiguous() and a.shape == b.shape
            # both form the value in double and round once: equal up to one rounding of the output
            resolution = {torch.float32: 2.0**-23, torch.float64: 1e-13, torch.bfloat16: 2.0**-7}[dtype]
            assert_matches_cpu(a, b, 2 * resolution, f"{dtype} d={dim}")


# ---------------------------------------------------------------- extremes
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kappa_value", [0.0, 1e-30, 1e-6, 1e7])
@pytest.mark.parametrize("dim", [2, 3, 2048, 65536])
def test_extreme_kappa_and_dimension(use_backend, family, kappa_value, dim):
    use_backend("cuda")
    mu, target, _ = make_inputs((2,), dim, torch.float32, seed=3)
    kappa = torch.full((2,), kappa_value, device=CUDA, requires_grad=True)
    mu_cuda = mu.to(CUDA).requires_grad_()
    out = NLL[family](mu_cuda, target.to(CUDA), kappa, reduction="none")
    assert torch.isfinite(out).all()
    assert_close_rows(out.detach().cpu(), reference_rows(family, mu, target, kappa.detach().cpu()), 1e-6)
    out.sum().backward()
    assert torch.isfinite(mu_cuda.grad).all() and torch.isfinite(kappa.grad).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_antipodal_identical_and_zero_vectors(use_backend, family):
    mu = torch.randn(4, 64, dtype=torch.float64)
    mu[3] = 0.0
    kappa = torch.tensor([0.0, 5.0, 1e4, 2.0], dtype=torch.float64)
    for target in (-mu, mu.clone(), 3.0 * mu, torch.zeros_like(mu)):
        m_cpu = mu.clone().requires_grad_()
        m_gpu = mu.to(CUDA).detach().clone().requires_grad_()
        use_backend("cpu")
        expected = NLL[family](m_cpu, target, kappa, reduction="none")
        use_backend("cuda")
        ours = NLL[family](m_gpu, target.to(CUDA), kappa.to(CUDA), reduction="none")
        assert torch.isfinite(ours).all()
        assert_matches_cpu(ours.detach(), expected.detach(), 1e-12, "nll")
        expected.sum().backward()
        ours.sum().backward()
        assert torch.isfinite(m_gpu.grad).all()
        assert_matches_cpu(m_gpu.grad, m_cpu.grad, 1e-10, "grad mu")
    if family == "power_spherical":  # 1 + c floored at 1e-12 (documented): -log C + kappa * 27.63...
        out = vk.power_spherical_nll(mu[:3].to(CUDA), -mu[:3].to(CUDA), kappa[:3].to(CUDA), reduction="none").cpu()
        floor_term = -kappa[:3] * math.log(reference.POWER_SPHERICAL_ONE_PLUS_COS_FLOOR)
        assert torch.allclose(out, -reference.power_spherical_log_normalizer(kappa[:3], 64) + floor_term, rtol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dim", [2048, 33])  # 8-wide vector loads, and the scalar path
def test_half_precision_inputs(use_backend, family, dtype, dim):
    use_backend("cuda")
    mu, target, kappa = make_inputs((8,), dim, dtype, kappa_scale=2e4)
    m, k = (x.to(CUDA).detach().clone().requires_grad_() for x in (mu, kappa))
    out = NLL[family](m, target.to(CUDA), k, reduction="none")
    assert out.dtype == torch.float32
    assert_close_rows(out.detach().cpu(), reference_rows(family, mu, target, kappa), 1e-6)
    out.sum().backward()
    assert m.grad.dtype == dtype and k.grad.dtype == dtype
    mu64, kappa64 = mu.double().requires_grad_(), kappa.double().requires_grad_()
    REFERENCE_NLL[family](mu64, target.double(), kappa64, "none").sum().backward()
    resolution = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    grad = m.grad.cpu().double()
    assert torch.allclose(grad, mu64.grad, rtol=resolution, atol=resolution * mu64.grad.abs().max().item())


@pytest.mark.parametrize("family", FAMILIES)
def test_non_contiguous_misaligned_and_broadcast_inputs(use_backend, family):
    use_backend("cuda")
    base = torch.randn(6, 2 * 40, dtype=torch.float64, device=CUDA)
    mu = base[:, ::2]  # inner stride 2
    target = torch.randn(40, 6, dtype=torch.float64, device=CUDA).t()  # transposed
    kappa = torch.rand(12, dtype=torch.float64, device=CUDA)[::2] * 50  # strided kappa
    expanded = torch.randn(1, 40, dtype=torch.float64, device=CUDA).expand(6, 40)  # row stride 0
    offset = torch.randn(6, 41, dtype=torch.float64, device=CUDA)[:, 1:]  # rows not 16-byte aligned: scalar loads
    for t in (target, expanded, offset):
        out = NLL[family](mu, t, kappa, reduction="none").cpu()
        expected = REFERENCE_NLL[family](mu.cpu().contiguous(), t.cpu().contiguous(), kappa.cpu(), "none")
        assert torch.allclose(out, expected, rtol=1e-12)
    m = mu.clone().t().contiguous().t().requires_grad_()  # column-major leaf
    NLL[family](m, target, kappa).backward()
    m64 = mu.cpu().clone().requires_grad_()
    REFERENCE_NLL[family](m64, target.cpu(), kappa.cpu()).backward()
    assert torch.allclose(m.grad.cpu(), m64.grad, rtol=1e-10, atol=1e-12)
    # float32 misaligned rows against the aligned copy: same values up to the summation order
    misaligned = torch.randn(64, 2049, device=CUDA)[:, 1:]
    y = torch.randn(64, 2048, device=CUDA)
    k = torch.rand(64, device=CUDA) * 100
    a = NLL[family](misaligned, y, k, reduction="none")
    b = NLL[family](misaligned.contiguous(), y, k, reduction="none")
    assert torch.allclose(a, b, rtol=1e-6)


def test_empty_batch(use_backend):
    use_backend("cuda")
    mu = torch.randn(0, 16, device=CUDA, requires_grad=True)
    kappa = torch.rand(0, device=CUDA, requires_grad=True)
    out = vk.power_spherical_nll(mu, mu.detach(), kappa, reduction="none")
    assert out.shape == (0,)
    assert vk.power_spherical_nll(mu, mu.detach(), kappa, reduction="sum").item() == 0.0
    assert math.isnan(vk.power_spherical_nll(mu, mu.detach(), kappa, reduction="mean").item())
    vk.power_spherical_nll(mu, mu.detach(), kappa, reduction="sum").backward()
    assert mu.grad.shape == (0, 16)


def test_results_are_bitwise_deterministic(use_backend):
    use_backend("cuda")
    for rows, dim in ((513, 1000), (3, 65536), (20000, 64)):
        mu, target, kappa = on_cuda(*make_inputs((rows,), dim, torch.float32, seed=rows))
        mu.requires_grad_(), kappa.requires_grad_()
        results = []
        for _ in range(3):
            mu.grad = kappa.grad = None
            out = vk.power_spherical_nll(mu, target, kappa, reduction="none")
            out.sum().backward()
            results.append((out.detach().clone(), mu.grad.clone(), kappa.grad.clone()))
        for r in results[1:]:
            assert all(torch.equal(a, b) for a, b in zip(r, results[0])), (rows, dim)


# ---------------------------------------------------------------- bad input
def test_bad_input_at_the_op_names_the_argument():
    mu, target, kappa = on_cuda(*make_inputs((4,), 8))
    with pytest.raises(ValueError, match=r"kappa\[0\] must be on cuda"):
        ops.spherical_nll([mu], [target], [kappa.cpu()], 2)
    with pytest.raises(ValueError, match=r"target\[0\] must be on cuda"):
        ops.spherical_nll([mu], [target.cpu()], [kappa], 2)
    with pytest.raises(ValueError, match=r"target\[0\] must have mu\[0\]'s shape"):
        ops.spherical_nll([mu], [target[:, :7]], [kappa], 2)
    with pytest.raises(ValueError, match=r"kappa\[0\] must have shape \(4,\)"):
        ops.spherical_nll([mu], [target], [kappa[:, None]], 2)
    with pytest.raises(ValueError, match="dimension D of mu and target must be >= 2"):
        ops.spherical_nll([mu[:, :1]], [target[:, :1]], [kappa], 2)
    with pytest.raises(ValueError, match="family must be"):
        ops.spherical_nll([mu], [target], [kappa], 7)
    with pytest.raises(TypeError, match=r"mu\[0\] must be a floating point tensor"):
        ops.spherical_nll([mu.int()], [target.int()], [kappa], 2)
    with pytest.raises(ValueError, match="coef_x must have shape"):
        ops.scaled_row_combination(kappa, kappa[:3], kappa, [mu], [target])
    with pytest.raises(ValueError, match=r"y\[0\] must be on cuda"):
        ops.scaled_row_combination(kappa, kappa, kappa, [mu], [target.cpu()])
    with pytest.raises(ValueError, match="dim must be >= 2"):
        ops.normalizer_quantity(kappa, 1, 2, 0)


def test_bad_input_through_the_api(use_backend):
    use_backend("cuda")
    mu, target, kappa = on_cuda(*make_inputs((4,), 8))
    with pytest.raises(ValueError, match="same device"):
        vk.power_spherical_nll(mu, target.cpu(), kappa)
    with pytest.raises(ValueError, match="kappa must be on the same device"):
        vk.power_spherical_nll(mu, target, kappa.cpu())
    with pytest.raises(ValueError, match="one concentration per row"):
        vk.vmf_nll(mu, target, kappa[:, None, None])


@pytest.mark.parametrize("bad", ["-1.0", "float('nan')", "float('inf')"])
@pytest.mark.parametrize("call", ["nll", "normalizer"])
def test_invalid_kappa_is_a_device_side_assert(bad, call):
    """Checked without a host sync: a device-side assert at the next synchronization, never a finite answer.

    Run in a child process: a device-side assert leaves the CUDA context unusable.
    """
    expression = {
        "nll": "vk.power_spherical_nll(mu, mu.flip(0), kappa, reduction='none')",
        "normalizer": "vk.vmf_log_normalizer(kappa, 8)",
    }[call]
    script = textwrap.dedent(f"""
        import os, torch
        os.environ["VISSIAM_BACKEND"] = "cuda"
        import vissiam_kernels as vk
        mu = torch.randn(4, 8, device="cuda")
        kappa = torch.tensor([1.0, {bad}, 2.0, 3.0], device="cuda")
        try:
            out = {expression}
            torch.cuda.synchronize()
            print("RESULT", "finite" if bool(torch.isfinite(out).all()) else "not finite")
        except RuntimeError as error:
            print("RESULT", "device-side assert" if "device-side assert" in str(error) else repr(error))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=os.environ)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, f"child failed: {done.stdout}\n{done.stderr}"
    assert lines[-1] == "RESULT device-side assert", done.stdout + done.stderr


# ---------------------------------------------------------------- custom-op machinery on CUDA
def _cuda_views(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=dtype).to(CUDA).requires_grad_()  # noqa: E731
    mu, target = [mk(3, 5), mk(3, 5)], [mk(3, 5), mk(3, 5)]
    kappa = [(torch.rand(3, generator=g, dtype=dtype) * 9).to(CUDA).requires_grad_() for _ in range(2)]
    return mu, target, kappa


@pytest.mark.parametrize("family", [0, 1, 2])
def test_opcheck_spherical_nll(family):
    mu, target, kappa = _cuda_views()
    torch.library.opcheck(ops.spherical_nll.default, (mu, target, [] if family == 0 else kappa, family))


def test_opcheck_scaled_row_combination_and_normalizer_quantity():
    mu, target, _ = _cuda_views()
    mu, target = [m.detach() for m in mu], [t.detach() for t in target]
    coefficients = [torch.randn(6, dtype=torch.float64, device=CUDA) for _ in range(3)]
    torch.library.opcheck(ops.scaled_row_combination.default, (*coefficients, mu, target))
    kappa = (torch.rand(2, 3, dtype=torch.float64, device=CUDA) * 20).requires_grad_()
    for family in (1, 2):
        for quantity in (0, 1, 3, 4):
            torch.library.opcheck(ops.normalizer_quantity.default, (kappa, 7, family, quantity))


def test_compile_fullgraph_matches_eager(use_backend):
    use_backend("cuda")
    torch._dynamo.reset()

    def step(p1, p2, z1, z2, k1, k2):
        return vk.vi_simsiam_loss(p1, p2, z1, z2, k1, k2, kl_weight=0.01)

    compiled = torch.compile(step, fullgraph=True)
    args = [torch.randn(8, 64, device=CUDA, requires_grad=i < 2) for i in range(4)]
    kappas = [(torch.rand(8, device=CUDA) * 100).requires_grad_() for _ in range(2)]
    eager = step(*args, *kappas)
    grads_eager = torch.autograd.grad(eager, [args[0], args[1], *kappas])
    out = compiled(*args, *kappas)
    grads_compiled = torch.autograd.grad(out, [args[0], args[1], *kappas])
    assert torch.allclose(out, eager, rtol=1e-6)
    for a, b in zip(grads_compiled, grads_eager):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_current_stream_is_used(use_backend):
    use_backend("cuda")
    mu, target, kappa = on_cuda(*make_inputs((256,), 2048))
    expected = vk.power_spherical_nll(mu, target, kappa, reduction="none")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = vk.power_spherical_nll(mu, target, kappa, reduction="none")
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(out, expected)


@pytest.mark.slow
def test_int64_indexing_beyond_2_to_the_31_elements(use_backend):
    """B * D > 2^31 (float16, 4.3 GB per tensor): the last rows are right, forward and backward."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip(f"needs 24 GiB of free GPU memory; {free / 2**30:.1f} GiB free")
    use_backend("cuda")
    dim = 4096
    rows = 2**31 // dim + 3
    mu = torch.randn(rows, dim, device=CUDA, dtype=torch.float16, requires_grad=True)
    target = torch.randn(rows, dim, device=CUDA, dtype=torch.float16)
    kappa = torch.rand(rows, device=CUDA) * 100
    out = vk.power_spherical_nll(mu, target, kappa, reduction="none")
    out.sum().backward()
    tail = slice(rows - 3, rows)
    use_backend("cpu")
    mu_tail = mu.detach()[tail].cpu().requires_grad_()
    expected = vk.power_spherical_nll(mu_tail, target[tail].cpu(), kappa[tail].cpu(), reduction="none")
    expected.sum().backward()
    assert_matches_cpu(out[tail].detach(), expected.detach(), 1e-6, "nll tail")
    assert_matches_cpu(mu.grad[tail], mu_tail.grad, 2.0**-10, "grad tail")
