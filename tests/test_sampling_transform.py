"""The fused sampling transform x = H [t, s v] (issue 13) against vissiam_kernels/sampling_reference.py.

The C++ op (``vissiam_kernels::sphere_sample_transform`` and its backward) on CPU tensors: forward to
rounding in every dtype, the hand-derived backward by gradcheck and against the reference's autograd,
the special rows (mu = +-e1 exactly, zero and tiny loc), D = 2 and D = 65536, N = 0, strided inputs,
the streamed (cache-bypassing) write of large outputs, bad inputs, torch.compile, opcheck. The Triton
kernels run through the interpreter in a subprocess (TRITON_INTERPRET must be set before triton is
imported): the tests of ``TestTritonInterpreter`` run only there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import first_mismatch

import vissiam_kernels as vk
from vissiam_kernels import _sampling_ops
from vissiam_kernels._sampling_ops import sphere_transform
from vissiam_kernels.sampling_reference import householder_transform

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
ROOT = Path(__file__).resolve().parents[1]

# float64: the kernels and the reference differ only in the order of float64 operations.
# Lower precisions: the float64 results agree far below the output's rounding, so the outputs are
# the reference's rounded value, or one ulp away where the float64 value sits near a tie.
FORWARD_TOLERANCE = {
    torch.float64: {"rtol": 1e-14, "atol": 2e-15},
    torch.float32: {"rtol": 2**-23, "atol": 1e-30},
    torch.bfloat16: {"rtol": 2**-7, "atol": 1e-30},
    torch.float16: {"rtol": 2**-10, "atol": 1e-7},
}

# grad_loc in float64 against the reference's autograd. Near mu = e1 terms of size 1/|m| cancel (to an
# O(1) gradient at D = 2), so the kernels and the reference each carry about 50 eps/|m| relative error
# there, summed in different orders (measured at |m| = 1e-3, D = 2: kernels 2e-11, reference 5e-12
# against the closed form of the 2-d rotation). Elsewhere they agree to ~1e-15.
GRAD_LOC_RTOL_F64 = 1e-10


def special_rows(dim: int, dtype=torch.float64, directionless: bool = True, near: float = 1e-6,
                 seed: int = 0) -> torch.Tensor:
    """Rows: +e1 and -e1 exactly (scaled), near +e1 and near -e1 (tail scaled by ``near``), random; with
    ``directionless`` also zero loc and |loc| < eps (normalized by eps, not by |loc|)."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(10, dim, generator=g, dtype=torch.float64)
    loc[0] = 0.0
    loc[0, 0] = 2.5  # mu = e1 exactly: H = I
    loc[1] = 0.0
    loc[1, 0] = -0.5  # mu = -e1 exactly
    loc[2, 1:] *= near
    loc[2, 0] = 1.0  # near e1: u1 = |m|^2 / (1 + mu1), far below float64 rounding of 1 - mu1 at near = 1e-6
    loc[3, 1:] *= near
    loc[3, 0] = -1.0  # near -e1
    loc[4] = 0.0  # zero loc: mu = 0
    loc[5] = 1e-14 * loc[5]  # |loc| < eps
    if not directionless:
        loc = torch.cat([loc[:4], loc[6:]])
    return loc.to(dtype)


def angles(rows: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """t, s (rows,) float64 with t^2 + s^2 = 1 (cosine and sine of the angle to the mean)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.rand(rows, generator=g, dtype=torch.float64) * torch.pi
    return theta.cos(), theta.sin()


def noise_like(loc: torch.Tensor, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(loc.shape[0], loc.shape[1] - 1, generator=g, dtype=torch.float64).to(loc.dtype)


def reference_gradients(loc, t, s, noise, grad_x):
    """d<grad_x, x>/d(loc, t, s) of the reference, in float64."""
    loc64 = loc.detach().double().requires_grad_()
    t64, s64 = t.detach().clone().requires_grad_(), s.detach().clone().requires_grad_()
    x = householder_transform(loc64, t64, s64, noise.double())
    return torch.autograd.grad(x, (loc64, t64, s64), grad_x.double())


@pytest.fixture
def cpu_backend(use_backend):
    if INTERPRETED:
        pytest.skip("this process runs the Triton interpreter")
    return use_backend("cpu")


# ---------------------------------------------------------------- forward
@pytest.mark.parametrize("dtype", list(FORWARD_TOLERANCE), ids=str)
@pytest.mark.parametrize("dim", [2, 3, 17, 128, 2049])
def test_forward_matches_the_reference(cpu_backend, dtype, dim):
    loc = special_rows(dim, dtype)
    t, s = angles(loc.shape[0])
    noise = noise_like(loc)
    x = sphere_transform(loc, t, s, noise)
    cpu_backend()
    expected = householder_transform(loc, t, s, noise)
    assert x.dtype == dtype and x.shape == loc.shape and x.is_contiguous()
    tolerance = FORWARD_TOLERANCE[dtype]
    assert torch.allclose(x.double(), expected.double(), **tolerance), first_mismatch(
        x.double(), expected.double(), tolerance["rtol"], tolerance["atol"])


def test_identity_at_e1_and_reflection_at_minus_e1(cpu_backend):
    """mu = e1 exactly: x = [t, s v] (H = I, no NaN); mu = -e1: x = [-t, s v] (u = 2 e1 reflects the first axis)."""
    dim = 6
    loc = torch.zeros(2, dim, dtype=torch.float64)
    loc[0, 0], loc[1, 0] = 3.0, -3.0
    t, s = angles(2)
    noise = noise_like(loc)
    v = noise / noise.norm(dim=-1, keepdim=True)
    x = sphere_transform(loc, t, s, noise)
    torch.testing.assert_close(x[0], torch.cat([t[:1], s[0] * v[0]]), rtol=0, atol=1e-16)
    torch.testing.assert_close(x[1], torch.cat([-t[1:], s[1] * v[1]]), rtol=0, atol=1e-16)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 2e-15), (torch.float32, 3e-7)], ids=str)
def test_samples_lie_on_the_sphere(cpu_backend, dtype, tolerance):
    # not zero loc (no direction: x = [0, s v]) nor |loc| < eps (mu = loc / eps is not a unit vector)
    loc = special_rows(64, dtype, directionless=False)
    t, s = angles(loc.shape[0])
    x = sphere_transform(loc, t, s, noise_like(loc)).double()
    assert (x.norm(dim=-1) - 1).abs().max() < tolerance


def test_zero_rows_and_one_huge_row(cpu_backend):
    for rows, dim in ((0, 5), (1, 65536), (2, 65536)):
        loc = torch.randn(rows, dim, requires_grad=True)
        t, s = angles(rows)
        noise = torch.randn(rows, dim - 1)
        x = sphere_transform(loc, t, s, noise)
        torch.testing.assert_close(x, householder_transform(loc, t, s, noise), rtol=2**-23, atol=1e-30)
        grad_x = torch.randn(rows, dim)
        (grad_loc,) = torch.autograd.grad(x, loc, grad_x)
        expected = reference_gradients(loc, t, s, noise, grad_x)[0]
        torch.testing.assert_close(grad_loc.double(), expected, rtol=1e-6, atol=1e-12)
    cpu_backend()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_large_outputs_written_around_the_cache(cpu_backend, dtype):
    """(1024, 2048) moves more than half the last-level cache: x and grad_loc are streamed, their row
    tails (one element past a row start) split into a head of plain stores and an aligned rest."""
    loc = torch.randn(1024, 2048).to(dtype).requires_grad_()
    t, s = angles(1024)
    noise = torch.randn(1024, 2047).to(dtype)
    x = sphere_transform(loc, t, s, noise)
    expected = householder_transform(loc.detach(), t, s, noise)
    tolerance = FORWARD_TOLERANCE[dtype]
    assert torch.allclose(x.double(), expected.double(), **tolerance)
    grad_x = torch.randn(1024, 2048).to(dtype)
    (grad_loc,) = torch.autograd.grad(x, loc, grad_x)
    reference = reference_gradients(loc, t, s, noise, grad_x)[0].to(dtype).double()
    assert torch.allclose(grad_loc.double(), reference, rtol=tolerance["rtol"], atol=1e-6)


def test_strided_inputs(cpu_backend):
    loc = torch.randn(40, 9, dtype=torch.float64).t()[:, :7]  # (9, 7) with strides (1, 9)
    assert loc.stride(1) != 1
    noise = torch.randn(9, 20, dtype=torch.float64)[:, ::3][:, :6]  # (9, 6), column stride 3
    tt = torch.rand(18, dtype=torch.float64)
    t, s = tt[::2], tt[1::2]  # stride 2
    x = sphere_transform(loc, t, s, noise)
    torch.testing.assert_close(x, householder_transform(loc, t, s, noise), rtol=1e-14, atol=2e-15)
    loc = loc.clone().requires_grad_()
    sphere_transform(loc, t, s, noise).sum().backward()  # grad_x: ones expanded, strides (0, 0)
    torch.testing.assert_close(loc.grad, reference_gradients(loc, t, s, noise, torch.ones(9, 7))[0])


def test_bitwise_the_same_for_any_thread_count(cpu_backend, restore_torch_globals):
    loc = torch.randn(300, 129, requires_grad=True)
    t, s = angles(300)
    noise = torch.randn(300, 128)
    grad_x = torch.randn(300, 129)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        x = sphere_transform(loc, t, s, noise)
        results.append((x, *torch.autograd.grad(x, loc, grad_x)))
    assert all(torch.equal(a, b) for a, b in zip(*results))


# ---------------------------------------------------------------- backward
def test_gradcheck(cpu_backend):
    """Random rows, mu = -e1 exactly, near +e1 (|m| = 1e-2, 1e-4: the gradient grows like 1/|m|) and
    near -e1. Not at +e1 exactly (H is not continuous there) nor |loc| <= eps (a step of 1e-6 leaves
    that regime): those are compared with the reference's autograd below."""
    torch.manual_seed(0)
    loc = torch.randn(10, 7, dtype=torch.float64)
    loc[:5, 0] = torch.tensor([1.0, 1.0, -1.0, -1.0, -2.0])
    loc[:5, 1:] *= torch.tensor([1e-2, 1e-4, 1e-2, 1e-6, 0.0], dtype=torch.float64)[:, None]
    loc.requires_grad_()
    t, s = angles(loc.shape[0])
    t.requires_grad_()
    s.requires_grad_()
    noise = noise_like(loc)
    assert torch.autograd.gradcheck(sphere_transform, (loc, t, s, noise))
    cpu_backend()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("dim", [2, 3, 65, 2049])
def test_backward_matches_the_reference_autograd(cpu_backend, dtype, dim):
    """Including mu = e1 exactly (where gradcheck cannot go: H is not continuous there), zero loc and
    |loc| < eps: every gradient finite, equal to the reference's autograd. Near e1 at |m| = 1e-3 both
    formulas lose digits (GRAD_LOC_RTOL_F64; test_gradient_near_e1_against_the_2d_closed_form bounds it)."""
    # 1/eps-sized gradients of the directionless rows overflow float16
    loc = special_rows(dim, dtype, directionless=dtype != torch.float16, near=1e-3)
    t, s = angles(loc.shape[0])
    noise = noise_like(loc)
    grad_x = torch.randn(loc.shape, dtype=torch.float64).to(dtype)
    leaves = (loc.clone().requires_grad_(), t.clone().requires_grad_(), s.clone().requires_grad_())
    grad_loc, grad_t, grad_s = torch.autograd.grad(sphere_transform(*leaves, noise), leaves, grad_x)
    cpu_backend()
    expected_loc, expected_t, expected_s = reference_gradients(loc, t, s, noise, grad_x)
    assert grad_loc.dtype == dtype and grad_t.dtype == grad_s.dtype == torch.float64
    assert torch.isfinite(grad_loc).all() and torch.isfinite(grad_t).all() and torch.isfinite(grad_s).all()
    rtol = GRAD_LOC_RTOL_F64 if dtype == torch.float64 else FORWARD_TOLERANCE[dtype]["rtol"]
    expected_loc = expected_loc.to(dtype).double()
    assert torch.allclose(grad_loc.double(), expected_loc, rtol=rtol, atol=1e-12), first_mismatch(
        grad_loc.double(), expected_loc, rtol, 1e-12)
    torch.testing.assert_close(grad_t, expected_t, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(grad_s, expected_s, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("near", [1e-2, 1e-3, 1e-4, 1e-6])
def test_gradient_near_e1_against_the_2d_closed_form(cpu_backend, near):
    """D = 2: mu = (cos phi, sin phi), H = [[cos phi, sin phi], [sin phi, -cos phi]], v = sign(z), so
    x = (t cos phi + s v sin phi, t sin phi - s v cos phi) and dL/dl = (g . dx/dphi) (-l_2, l_1) / |l|^2
    exactly. Near e1 (l_2 = near) the fused backward stays within 200 eps/|m| of it (measured: 1e-12 at
    1e-2, 2e-11 at 1e-3, 2e-10 at 1e-4, 1.4e-8 at 1e-6)."""
    loc = torch.tensor([[1.0, near], [1.0, -near]], dtype=torch.float64)
    t, s = angles(2)
    noise = torch.tensor([[0.7], [-1.3]], dtype=torch.float64)
    grad_x = torch.tensor([[0.3, -1.1], [-0.8, 0.5]], dtype=torch.float64)
    leaf = loc.clone().requires_grad_()
    (grad_loc,) = torch.autograd.grad(sphere_transform(leaf, t, s, noise), leaf, grad_x)
    cpu_backend()
    phi, v = torch.atan2(loc[:, 1], loc[:, 0]), noise[:, 0].sign()
    dx_dphi = torch.stack([-t * phi.sin() + s * v * phi.cos(), t * phi.cos() + s * v * phi.sin()], dim=-1)
    exact = (grad_x * dx_dphi).sum(-1, keepdim=True) * torch.stack([-loc[:, 1], loc[:, 0]], -1) / loc.square().sum(
        -1, keepdim=True)
    error = ((grad_loc - exact).abs().amax(-1) / exact.abs().amax(-1)).max().item()
    assert error < 200 * torch.finfo(torch.float64).eps / near, error


def test_backward_at_e1_and_zero_loc_is_finite():
    for loc in (torch.tensor([[1.0, 0.0, 0.0]]), torch.zeros(1, 3)):
        loc = loc.double().requires_grad_()
        t = torch.tensor([0.6], dtype=torch.float64, requires_grad=True)
        s = torch.tensor([0.8], dtype=torch.float64, requires_grad=True)
        x = sphere_transform(loc, t, s, torch.tensor([[0.3, -1.2]], dtype=torch.float64))
        grads = torch.autograd.grad(x, (loc, t, s), torch.ones_like(x))
        assert all(torch.isfinite(g).all() for g in grads)


def test_only_the_requested_gradients(cpu_backend):
    loc = torch.randn(5, 4, requires_grad=True)
    t, s = angles(5)
    t.requires_grad_()
    x = sphere_transform(loc, t, s, torch.randn(5, 3))
    (grad_t,) = torch.autograd.grad(x.sum(), t)
    assert grad_t.dtype == torch.float64 and grad_t.shape == (5,)


# ---------------------------------------------------------------- compile, opcheck, backends
def test_torch_compile_fullgraph(cpu_backend):
    torch.compiler.reset()

    def sample_and_loss(loc, t, s, noise):
        x = sphere_transform(loc, t, s, noise)
        return (x * x.roll(1, 0)).sum()

    compiled = torch.compile(sample_and_loss, fullgraph=True, dynamic=False)
    loc = torch.randn(16, 9, dtype=torch.float64, requires_grad=True)
    t, s = angles(16)
    noise = noise_like(loc)
    value = compiled(loc, t, s, noise)
    (grad,) = torch.autograd.grad(value, loc)
    expected_value = sample_and_loss(loc, t, s, noise)
    (expected_grad,) = torch.autograd.grad(expected_value, loc)
    torch.testing.assert_close(value, expected_value)
    torch.testing.assert_close(grad, expected_grad)


def test_opcheck(cpu_backend):
    from torch.library import opcheck

    loc = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    t, s = angles(6)
    noise = noise_like(loc)
    sphere_transform(loc, t, s, noise)  # registers the fake kernel and the autograd
    opcheck(torch.ops.vissiam_kernels.sphere_sample_transform.default, (loc, t, s, noise))
    opcheck(torch.ops.vissiam_kernels.sphere_sample_transform_backward.default,
            (torch.randn(6, 5, dtype=torch.float64), loc.detach(), t, s, noise))


def test_reference_backend(use_backend):
    ran = use_backend("reference")
    loc = torch.randn(3, 4)
    t, s = angles(3)
    noise = torch.randn(3, 3)
    torch.testing.assert_close(sphere_transform(loc, t, s, noise), householder_transform(loc, t, s, noise))
    ran()


def test_cuda_backend_without_triton_falls_back_to_the_reference_with_one_warning(monkeypatch):
    """The CUDA C++ library has no kernel of the transform: VISSIAM_BACKEND=cuda (or auto without Triton)
    runs the Triton kernels, or the reference where they cannot load (checked here without a GPU)."""
    if INTERPRETED or torch.cuda.is_available():
        pytest.skip("needs a machine where the Triton kernels cannot run")
    monkeypatch.setattr(_sampling_ops, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="sampling transform has no CUDA C..? kernel"):
        assert _sampling_ops._resolve_compiled("cuda") == "reference"
    with pytest.raises(vk.BackendUnavailableError, match="VISSIAM_BACKEND=triton cannot run here"):
        _sampling_ops._resolve_compiled("triton")


def _run_this_file(env: dict, selection: str) -> str:
    """pytest over the tests of this file that ``selection`` names, in a fresh process with ``env``."""
    env = dict(os.environ, **env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               "-rfE", "-k", selection, "-W", "ignore::RuntimeWarning"]
    result = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = (result.stdout + result.stderr)[-8000:]
    assert result.returncode == 0, f"run with {env} failed (exit {result.returncode}):\n{tail}"
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1], tail
    return result.stdout


def test_portable_row_streams():
    """The portable (non-AVX2) build of the row loops: the forward and backward tests again, in a process
    started with VISSIAM_CPU_STREAMS=portable (the path is chosen once per process)."""
    if INTERPRETED or os.environ.get("VISSIAM_CPU_STREAMS") == "portable":
        pytest.skip("this process runs the interpreter, or is the portable run")
    _run_this_file({"VISSIAM_CPU_STREAMS": "portable"},
                   "test_forward_matches_the_reference or test_backward_matches_the_reference_autograd "
                   "or test_large_outputs")


# ---------------------------------------------------------------- bad inputs
def _good_inputs():
    loc = torch.randn(4, 5)
    t, s = angles(4)
    return {"loc": loc, "t": t, "s": s, "noise": torch.randn(4, 4)}


BAD_INPUTS = [
    ("loc", torch.randn(5), ValueError, r"loc must have shape \(N, D\) with D >= 2; got \[5\]"),
    ("loc", torch.randn(4, 1), ValueError, r"loc must have shape \(N, D\) with D >= 2; got \[4, 1\]"),
    ("loc", torch.ones(4, 5, dtype=torch.int64), TypeError, "loc must be a floating point tensor"),
    ("t", torch.rand(3, dtype=torch.float64), ValueError,
     r"t must have shape \(4,\) \(one per row of loc\); got \[3\]"),
    ("s", torch.rand(4, 1, dtype=torch.float64), ValueError, r"s must have shape \(4,\)"),
    ("t", torch.rand(4), TypeError, "t must be a float64 tensor; got (torch.)?[Ff]loat"),
    ("s", torch.rand(4, dtype=torch.float16), TypeError, "s must be a float64 tensor"),
    ("noise", torch.randn(4, 5), ValueError,
     r"noise must have shape \(4, 4\) \(loc's rows, D - 1 columns\); got \[4, 5\]"),
    ("noise", torch.randn(4, 4, dtype=torch.float64), TypeError, "noise must have loc's dtype"),
    ("noise", torch.randn(4, 4, device="meta"), ValueError, "noise must be on cpu"),
]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("name, value, error, message", BAD_INPUTS,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(BAD_INPUTS)])
def test_bad_inputs_name_the_argument(use_backend, backend, name, value, error, message):
    if INTERPRETED:
        pytest.skip("this process runs the Triton interpreter")
    use_backend(backend)
    inputs = _good_inputs()
    inputs[name] = value
    with pytest.raises(error, match=message):
        sphere_transform(**inputs)
    if backend == "cpu":  # the op itself, called directly
        with pytest.raises(error, match=message):
            torch.ops.vissiam_kernels.sphere_sample_transform(*inputs.values())


def test_bad_grad_x_of_the_backward_op(cpu_backend):
    inputs = _good_inputs()
    sphere_transform(**inputs)
    backward = torch.ops.vissiam_kernels.sphere_sample_transform_backward
    with pytest.raises(ValueError, match=r"grad_x must have loc's shape \[4, 5\]"):
        backward(torch.randn(4, 4), *inputs.values())
    with pytest.raises(TypeError, match="grad_x must have loc's dtype"):
        backward(torch.randn(4, 5, dtype=torch.float64), *inputs.values())
    with pytest.raises(ValueError, match="grad_x must be on cpu"):
        backward(torch.randn(4, 5, device="meta"), *inputs.values())


# ---------------------------------------------------------------- Triton (compiled for sm_80 / sm_90, no GPU)
@pytest.mark.slow
def test_triton_launches_compile_for_sm80_and_sm90_without_spills(monkeypatch):
    """The launches the Triton launchers make, compiled to cubins with triton's ptxas (the machinery of
    tests/test_triton_compile.py): code only the compiler rejects, or a launch table that spills."""
    pytest.importorskip("triton")
    if INTERPRETED:
        pytest.skip("compiles real kernels; this process runs the interpreter")
    import test_triton_compile as compile_check

    from vissiam_kernels import triton_ops, triton_sampling

    calls = []

    class Recorder:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((self.fn, args, kwargs))

    monkeypatch.setattr(triton_ops, "wrap_triton", Recorder)
    monkeypatch.setattr(triton_ops, "_check_device", lambda tensor, name: None)
    for rows, dim, dtype in ((256, 128, torch.float32), (64, 2048, torch.bfloat16), (8, 8193, torch.float32)):
        t = torch.rand(rows, dtype=torch.float64)
        loc, noise = torch.randn(rows, dim).to(dtype), torch.randn(rows, dim - 1).to(dtype)
        triton_sampling.sphere_transform_forward(loc, t, t, noise)
        triton_sampling.sphere_transform_backward(torch.randn(rows, dim).to(dtype), loc, t, t, noise)
    assert len(calls) == 6
    for fn, args, kwargs in calls:
        for target in compile_check.TARGETS:
            registers, spilled = compile_check._compile(fn, args, kwargs, target)
            where = f"{fn.__name__} D={args[-1]} sm_{target.arch}"
            assert spilled == 0, f"{where}: {registers} registers, {spilled} bytes spilled"


# ---------------------------------------------------------------- Triton on a GPU (deselected without one)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED, reason="needs a CUDA device (compiled kernels)")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dim", [2, 3, 128, 2049, 8193])
def test_triton_on_cuda_matches_the_reference_and_compiles(use_backend, dtype, dim):
    """auto on CUDA tensors runs the Triton kernels; eager and torch.compile(fullgraph=True) against
    the reference (forward and the gradients), special rows included."""
    pytest.importorskip("triton")
    use_backend("auto")
    cuda = torch.device("cuda")
    loc = special_rows(dim, dtype, near=1e-3).repeat(40, 1).to(cuda)
    t, s = (x.repeat(40).to(cuda) for x in angles(loc.shape[0] // 40))
    noise = noise_like(loc).to(cuda)
    grad_x = torch.randn(loc.shape, dtype=torch.float64, device=cuda).to(dtype)
    expected = householder_transform(loc, t, s, noise).double()
    expected_grads = reference_gradients(loc, t, s, noise, grad_x)
    tolerance = FORWARD_TOLERANCE[dtype]
    rtol = GRAD_LOC_RTOL_F64 if dtype == torch.float64 else tolerance["rtol"]
    compiled = torch.compile(sphere_transform, fullgraph=True, dynamic=False)
    for transform in (sphere_transform, compiled):
        leaves = (loc.clone().requires_grad_(), t.clone().requires_grad_(), s.clone().requires_grad_())
        x = transform(*leaves, noise)
        if transform is sphere_transform:
            assert vk.last_backend() == "triton", vk.last_backend()
        assert torch.allclose(x.double(), expected, **tolerance), first_mismatch(
            x.double(), expected, tolerance["rtol"], tolerance["atol"])
        grad_loc, grad_t, grad_s = torch.autograd.grad(x, leaves, grad_x)
        expected_loc = expected_grads[0].to(dtype).double()
        assert torch.allclose(grad_loc.double(), expected_loc, rtol=rtol, atol=1e-12), first_mismatch(
            grad_loc.double(), expected_loc, rtol, 1e-12)
        torch.testing.assert_close(grad_t, expected_grads[1], rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(grad_s, expected_grads[2], rtol=1e-13, atol=1e-14)


# ---------------------------------------------------------------- Triton (interpreter)
def test_triton_kernels_through_the_interpreter():
    """Runs ``TestTritonInterpreter`` in a fresh process with TRITON_INTERPRET=1, VISSIAM_BACKEND=triton."""
    pytest.importorskip("triton", reason="the Triton backend needs the triton package")
    if INTERPRETED:
        pytest.skip("this process is the interpreter run")
    _run_this_file({"TRITON_INTERPRET": "1", "VISSIAM_BACKEND": "triton"}, "TestTritonInterpreter")


@pytest.mark.skipif(not INTERPRETED, reason="run by test_triton_kernels_through_the_interpreter")
class TestTritonInterpreter:
    @pytest.mark.parametrize("dtype", list(FORWARD_TOLERANCE), ids=str)
    @pytest.mark.parametrize("dim", [2, 3, 33, 300])
    def test_forward_and_backward_match_the_reference(self, use_backend, dtype, dim):
        ran = use_backend("triton")
        loc = special_rows(dim, dtype, directionless=dtype != torch.float16, near=1e-3)
        t, s = angles(loc.shape[0])
        noise = noise_like(loc)
        leaves = (loc.clone().requires_grad_(), t.clone().requires_grad_(), s.clone().requires_grad_())
        x = sphere_transform(*leaves, noise)
        ran()
        tolerance = FORWARD_TOLERANCE[dtype]
        expected = householder_transform(loc, t, s, noise).double()
        assert torch.allclose(x.double(), expected, **tolerance), first_mismatch(
            x.double(), expected, tolerance["rtol"], tolerance["atol"])
        grad_x = torch.randn(loc.shape, dtype=torch.float64).to(dtype)
        grad_loc, grad_t, grad_s = torch.autograd.grad(x, leaves, grad_x)
        expected_loc, expected_t, expected_s = reference_gradients(loc, t, s, noise, grad_x)
        rtol = GRAD_LOC_RTOL_F64 if dtype == torch.float64 else tolerance["rtol"]
        expected_loc = expected_loc.to(dtype).double()
        assert torch.allclose(grad_loc.double(), expected_loc, rtol=rtol, atol=1e-12), first_mismatch(
            grad_loc.double(), expected_loc, rtol, 1e-12)
        torch.testing.assert_close(grad_t, expected_t, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(grad_s, expected_s, rtol=1e-13, atol=1e-14)

    def test_rows_longer_than_a_block_and_empty_batches(self, use_backend):
        """D = 65536: the row is swept in 2048-element chunks, twice (sums, then the write)."""
        ran = use_backend("triton")
        for rows, dim in ((2, 65536), (0, 5)):
            loc = torch.randn(rows, dim, requires_grad=True)
            t, s = angles(rows)
            noise = torch.randn(rows, dim - 1)
            x = sphere_transform(loc, t, s, noise)
            ran()
            torch.testing.assert_close(x, householder_transform(loc, t, s, noise), rtol=2**-23, atol=1e-30)
            grad_x = torch.randn(rows, dim)
            (grad_loc,) = torch.autograd.grad(x, loc, grad_x)
            expected = reference_gradients(loc, t, s, noise, grad_x)[0]
            torch.testing.assert_close(grad_loc.double(), expected, rtol=1e-6, atol=1e-12)

    def test_gradcheck_and_strided_inputs(self, use_backend):
        ran = use_backend("triton")
        loc = special_rows(4, directionless=False, near=1e-2)[1:5].requires_grad_()  # -e1, near +-e1; not e1
        t, s = angles(loc.shape[0])
        t.requires_grad_()
        s.requires_grad_()
        assert torch.autograd.gradcheck(sphere_transform, (loc, t, s, noise_like(loc)))
        ran()
        loc = torch.randn(40, 9, dtype=torch.float64).t()[:, :7]
        noise = torch.randn(9, 20, dtype=torch.float64)[:, ::3][:, :6]
        tt = torch.rand(18, dtype=torch.float64)
        x = sphere_transform(loc, tt[::2], tt[1::2], noise)
        torch.testing.assert_close(x, householder_transform(loc, tt[::2], tt[1::2], noise), rtol=1e-14, atol=2e-15)

    @pytest.mark.parametrize("name, value, error, message", BAD_INPUTS[:-1],
                             ids=[f"{case[0]}-{i}" for i, case in enumerate(BAD_INPUTS[:-1])])
    def test_bad_inputs(self, use_backend, name, value, error, message):
        use_backend("triton")
        inputs = _good_inputs()
        inputs[name] = value
        with pytest.raises(error, match=message):
            sphere_transform(**inputs)
