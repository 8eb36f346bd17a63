"""The seeded sampler (issue 13): ``_sampling_ops.sphere_sample`` / ``sphere_sample_seeded``, the sampling
transform x = H [t, s v] with the tangent noise drawn inside the C++ kernel from Philox4x32-10
(csrc/cpu/philox_normal.inc), and ``sphere_noise``, the noise it draws.

The generator: Philox against the Random123 known answers (through the float64 reference
``sampling_reference.philox4x32_10``), the kernel's noise against the float64 reference noise, its law
(Kolmogorov-Smirnov, pooled and per column) and independence (correlations across columns, rows, seeds).
The sampler: equal bit for bit to ``sphere_transform`` of the noise it drew, forward and backward, in
every dtype; gradcheck in float64; reproducible under ``torch.manual_seed`` and for 1 or 2 threads,
different call after call; mu = +-e1, D = 2, D = 65536; torch.compile(fullgraph=True); opcheck; bad
inputs; the portable (non-AVX2) path in a second process; the Triton kernel through the interpreter
(tests/triton_seeded_cases.py; tests/test_sampling_transform.py compiles its launches for sm_80/sm_90 and
checks that nothing spills). Each test asserts the backend that ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from sampling_transform_checks import angles, special_rows
from scipy import stats

import vissiam_kernels as vk
from vissiam_kernels._sampling_ops import sphere_noise, sphere_sample, sphere_sample_seeded, sphere_transform
from vissiam_kernels.sampling_reference import householder_transform, philox4x32_10, philox_normal

SEED = torch.tensor([0x0123456789ABCDEF, -0x7EDCBA9876543210])
ALPHA = 1e-4
"""Significance of the statistical tests (fixed seeds: each either passes or fails, every run)."""


@pytest.fixture
def cpu_backend(use_backend):
    return use_backend("cpu")


# ---------------------------------------------------------------- the generator
def test_philox_known_answers():
    """Random123's known-answer vectors of philox4x32_10 (kat_vectors), through the float64 reference that
    the kernel's noise is compared with below."""
    m = 0xFFFFFFFF
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((m, m, m, m), (m, m), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for counter, key, expected in cases:
        assert tuple(int(w) for w in philox4x32_10(counter, key)) == expected


@pytest.mark.parametrize("cols", [1, 3, 4, 37, 300])
def test_noise_matches_the_float64_reference(cpu_backend, cols):
    """The kernel's float32 Box-Muller (Cephes log, sin, cos) within float32 rounding of the float64 one,
    on the same Philox words; float64 noise is the float32 noise widened, bfloat16 it rounded."""
    noise = sphere_noise(SEED, 33, cols)
    cpu_backend()
    reference = philox_normal(SEED, 33, cols)
    error = ((noise.double() - reference).abs() / reference.abs().clamp_min(1)).max().item()
    assert error < 2e-6, error
    assert torch.equal(sphere_noise(SEED, 33, cols, torch.float64), noise.double())
    assert torch.equal(sphere_noise(SEED, 33, cols, torch.bfloat16), noise.to(torch.bfloat16))
    # a column depends on (key, offset, row, column) only: a prefix of a wider matrix
    assert torch.equal(sphere_noise(SEED, 40, cols + 5)[:33, :cols], noise)


def test_noise_is_standard_normal_and_independent(cpu_backend):
    """4096 rows x 64 columns: KS of all values pooled, and of each column (its 64 p-values uniform,
    none below ALPHA / 64); correlations between columns (within Box-Muller pairs and quadruples and
    across them), between neighbouring rows, between squares, and between two offsets of one key, all
    within 5 standard errors of 0."""
    rows, cols = 4096, 64
    z = sphere_noise(SEED, rows, cols).double()
    cpu_backend()
    assert stats.kstest(z.flatten().numpy(), "norm").pvalue > ALPHA
    column_p = [stats.kstest(z[:, j].numpy(), "norm").pvalue for j in range(cols)]
    assert min(column_p) > ALPHA / cols, min(column_p)
    assert stats.kstest(column_p, "uniform").pvalue > ALPHA
    assert abs(z.mean().item()) < 5 / (rows * cols) ** 0.5 and abs(z.var().item() - 1) < 5 * (2 / (rows * cols)) ** 0.5

    def max_offdiagonal(values):
        corr = torch.corrcoef(values.T)
        return (corr - torch.eye(corr.shape[0], dtype=corr.dtype)).abs().max().item()

    bound = 5 / rows**0.5
    assert max_offdiagonal(z) < bound  # columns, including the cos/sin pair of one draw
    assert max_offdiagonal(z.square()) < 2 * bound  # the pair's radius is shared: squares must still decorrelate
    neighbours = torch.corrcoef(torch.stack([z[:-1].flatten(), z[1:].flatten()]))[0, 1].item()
    assert abs(neighbours) < 5 / (rows * cols) ** 0.5
    other = sphere_noise(SEED + torch.tensor([0, 1]), rows, cols).double()
    across = torch.corrcoef(torch.stack([z.flatten(), other.flatten()]))[0, 1].item()
    assert abs(across) < 5 / (rows * cols) ** 0.5


# ---------------------------------------------------------------- the sampler
def _inputs(rows, dim, dtype, seed=0):
    loc = special_rows(dim, torch.float64, directionless=False, seed=seed)
    loc = torch.cat([loc, torch.randn(rows - loc.shape[0], dim, dtype=torch.float64,
                                      generator=torch.Generator().manual_seed(seed))]).to(dtype)
    t, s = angles(rows)
    return loc, t, s


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("dim", [2, 3, 37, 2049])
def test_equals_the_transform_of_its_noise(cpu_backend, dtype, dim):
    """x = sphere_transform(loc, t, s, sphere_noise(seed, N, D-1)) bit for bit, and so are grad_loc,
    grad_t, grad_s (the same row code reads the noise from a buffer instead of a tensor); the
    reference of both within the transform's tolerance."""
    loc, t, s = _inputs(12, dim, dtype)
    grad_x = torch.randn(loc.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(dtype)
    noise = sphere_noise(SEED, loc.shape[0], dim - 1, dtype)
    results = []
    for sample in (lambda *a: sphere_sample_seeded(*a, SEED), lambda *a: sphere_transform(*a, noise)):
        leaves = (loc.clone().requires_grad_(), t.clone().requires_grad_(), s.clone().requires_grad_())
        x = sample(*leaves)
        cpu_backend()
        results.append((x, *torch.autograd.grad(x, leaves, grad_x)))
    for seeded, transformed in zip(*results):
        assert torch.equal(seeded, transformed)
    expected = householder_transform(loc.double(), t, s, noise.double())
    tolerance = 1e-14 if dtype == torch.float64 else 2 * torch.finfo(dtype).eps
    assert (results[0][0].double() - expected).abs().max().item() <= tolerance


def test_gradcheck(cpu_backend):
    """float64, rows mu = -e1, near +-e1 and random (not +e1 exactly: H is not continuous there)."""
    loc = special_rows(7, directionless=False, near=1e-2)[1:]
    t, s = angles(loc.shape[0])
    inputs = (loc.requires_grad_(), t.requires_grad_(), s.requires_grad_())
    assert torch.autograd.gradcheck(lambda *a: sphere_sample_seeded(*a, SEED), inputs)
    cpu_backend()


def test_reproducible_under_manual_seed_and_across_threads(cpu_backend, restore_torch_globals):
    """torch.manual_seed reproduces a draw bit for bit (one int64 pair drawn from torch's generator per
    call), consecutive calls differ, an explicit generator is used; 1 or 2 threads give the same bits,
    forward and backward."""
    loc, t, s = _inputs(300, 129, torch.float32)
    torch.manual_seed(7)
    first, second = sphere_sample(loc, t, s), sphere_sample(loc, t, s)
    cpu_backend()
    torch.manual_seed(7)
    assert torch.equal(sphere_sample(loc, t, s), first)
    assert torch.equal(sphere_sample(loc, t, s), second)
    assert (first != second).any(-1).all()  # every row redrawn
    generated = [sphere_sample(loc, t, s, generator=torch.Generator().manual_seed(11)) for _ in range(2)]
    assert torch.equal(*generated) and not torch.equal(generated[0], first)
    grad_x = torch.randn(loc.shape)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        leaf = loc.clone().requires_grad_()
        x = sphere_sample_seeded(leaf, t, s, SEED)
        results.append((x, *torch.autograd.grad(x, leaf, grad_x)))
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("dim", [2, 65536])
def test_poles_and_extreme_dimensions(cpu_backend, dim):
    """mu = e1 exactly (H = I: x = [t, s v]) and -e1 (x = [-t, s v]), near them and random rows: finite,
    on the sphere, equal to the transform of the drawn noise; D = 2 (v = +-1) and D = 65536."""
    loc = special_rows(dim, torch.float32, directionless=False, near=1e-3)[:5]
    t, s = angles(loc.shape[0])
    x = sphere_sample_seeded(loc, t, s, SEED)
    cpu_backend()
    noise = sphere_noise(SEED, loc.shape[0], dim - 1)
    assert torch.equal(x, sphere_transform(loc, t, s, noise))
    assert torch.isfinite(x).all() and ((x.double().norm(dim=-1) - 1).abs() < 1e-6).all()
    v = noise.double() / noise.double().norm(dim=-1, keepdim=True)
    torch.testing.assert_close(x[0].double(), torch.cat([t[:1], s[0] * v[0]]), rtol=0, atol=1e-7)
    torch.testing.assert_close(x[1].double(), torch.cat([-t[1:2], s[1] * v[1]]), rtol=0, atol=1e-7)
    if dim == 2:
        assert torch.equal(v.abs(), torch.ones_like(v))


def test_reference_backend(use_backend):
    """VISSIAM_BACKEND=reference: pure PyTorch (float64 noise, the reference transform), within float32
    rounding of the C++ op."""
    loc, t, s = _inputs(20, 33, torch.float64)
    cpu = sphere_sample_seeded(loc, t, s, SEED)
    ran = use_backend("reference")
    reference = sphere_sample_seeded(loc, t, s, SEED)
    ran()
    torch.testing.assert_close(reference, cpu, rtol=0, atol=2e-6)


def test_torch_compile_fullgraph(cpu_backend):
    """torch.compile(fullgraph=True) through the seeded op (fake kernel, autograd): value and gradients equal
    eager's to rounding; and sphere_sample itself (torch's generator draws the seed inside the graph): the
    compiled draws are the eager draws bit for bit under one torch.manual_seed, two calls two draws."""
    torch.compiler.reset()

    def loss(loc, t, s, seed):
        x = sphere_sample_seeded(loc, t, s, seed)
        return (x * x.roll(1, 0)).sum()

    loc, t, s = _inputs(16, 9, torch.float64)
    leaves = (loc.requires_grad_(), t.requires_grad_(), s.requires_grad_())
    compiled = torch.compile(loss, fullgraph=True, dynamic=False)
    value = compiled(*leaves, SEED)
    grads = torch.autograd.grad(value, leaves)
    expected = loss(*leaves, SEED)
    cpu_backend()
    torch.testing.assert_close(value, expected, rtol=1e-13, atol=0)  # the compiled sum adds in its own order
    for grad, expected_grad in zip(grads, torch.autograd.grad(expected, leaves)):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-14)

    def two_draws(loc, t, s):
        return sphere_sample(loc, t, s), sphere_sample(loc, t, s)

    sampler = torch.compile(two_draws, fullgraph=True, dynamic=False)
    inputs = (loc.detach(), t.detach(), s.detach())
    torch.manual_seed(5)
    compiled_draws = sampler(*inputs)
    torch.manual_seed(5)
    eager_draws = two_draws(*inputs)
    assert all(torch.equal(a, b) for a, b in zip(compiled_draws, eager_draws))  # the same seeds, eager or compiled
    assert not torch.equal(*compiled_draws)  # two calls in one graph: two draws


def test_opcheck(cpu_backend):
    from torch.library import opcheck

    loc, t, s = _inputs(12, 5, torch.float64)
    sphere_sample_seeded(loc, t, s, SEED)  # registers the fake kernels and the autograd
    cpu_backend()
    ops = torch.ops.vissiam_kernels
    opcheck(ops.sphere_sample_seeded.default, (loc.requires_grad_(), t, s, SEED))
    opcheck(ops.sphere_sample_seeded_backward.default, (torch.randn(12, 5, dtype=torch.float64), loc.detach(), t, s,
                                                        SEED))
    opcheck(ops.sphere_sample_noise.default, (SEED, 4, 7, torch.float32))


BAD_SEEDS = [
    (torch.tensor([1, 2, 3]), ValueError, r"seed must have shape \(2,\) \(key, offset\); got \[3\]"),
    (torch.tensor([1.0, 2.0]), TypeError, "seed must be an int64 tensor; got"),
    (torch.tensor([1, 2], dtype=torch.int32), TypeError, "seed must be an int64 tensor; got"),
    (torch.empty(2, dtype=torch.int64, device="meta"), ValueError, "seed must be on cpu"),
]


@pytest.mark.parametrize("seed, error, message", BAD_SEEDS, ids=["shape", "float", "int32", "device"])
def test_bad_seed_names_the_argument(cpu_backend, seed, error, message):
    loc, t, s = _inputs(12, 5, torch.float32)
    with pytest.raises(error, match=message):
        sphere_sample_seeded(loc, t, s, seed)
    with pytest.raises(error, match=message):
        torch.ops.vissiam_kernels.sphere_sample_seeded(loc, t, s, seed)
    with pytest.raises(ValueError, match=r"loc must have shape \(N, D\) with D >= 2"):
        sphere_sample_seeded(loc[:, :1], t, s, SEED)
    with pytest.raises(TypeError, match="t must be a float64 tensor"):
        sphere_sample_seeded(loc, t.float(), s, SEED)


@pytest.mark.skipif(os.environ.get("VISSIAM_CPU_STREAMS") == "portable", reason="this process is the portable run")
def test_portable_path():
    """The portable (non-AVX2) build of the generator and the rows: the noise and sampler tests again in a
    process started with VISSIAM_CPU_STREAMS=portable."""
    from test_sampling_transform import _run_pytest

    _run_pytest({"VISSIAM_CPU_STREAMS": "portable"}, Path(__file__),
                "test_noise_matches or test_equals_the_transform or test_poles")



def test_triton_kernel_through_the_interpreter():
    """tests/triton_seeded_cases.py in a fresh process with TRITON_INTERPRET=1, VISSIAM_BACKEND=triton: the
    seeded Triton kernel (noise drawn in the kernel, float64 Box-Muller) against the reference transform of
    the float64 reference noise, forward and backward, D = 2 to 3000."""
    pytest.importorskip("triton", reason="the Triton backend needs the triton package")
    from test_sampling_transform import TESTS, _run_pytest

    _run_pytest({"TRITON_INTERPRET": "1", "VISSIAM_BACKEND": "triton"}, TESTS / "triton_seeded_cases.py")



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (compiled kernels)")
@pytest.mark.parametrize("dim", [2, 129, 2049, 8193])
def test_triton_on_cuda(use_backend, dim):
    """auto on CUDA tensors runs the seeded Triton kernel: x within float32 rounding of the reference
    transform of the CPU op's noise (the same Philox words), gradients to loc finite, manual_seed
    reproduces a draw."""
    use_backend("auto")
    cuda = torch.device("cuda")
    loc = special_rows(dim, torch.float32, directionless=False, near=1e-3).repeat(40, 1).to(cuda)
    rows = loc.shape[0]
    t, s = (x.to(cuda) for x in angles(rows))
    leaf = loc.clone().requires_grad_()
    x = sphere_sample_seeded(leaf, t, s, SEED.to(cuda))
    assert vk.last_backend() == "triton", vk.last_backend()
    noise = sphere_noise(SEED, rows, dim - 1, torch.float64).to(cuda)
    expected = householder_transform(loc.double(), t, s, noise)
    torch.testing.assert_close(x.double(), expected, rtol=1e-5, atol=2e-6)
    (grad,) = torch.autograd.grad(x, leaf, torch.randn_like(x))
    assert torch.isfinite(grad).all()
    torch.manual_seed(3)
    first = sphere_sample(loc, t, s)
    torch.manual_seed(3)
    assert torch.equal(sphere_sample(loc, t, s), first)
