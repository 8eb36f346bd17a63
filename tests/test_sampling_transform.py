"""The fused sampling transform x = H [t, s v] (issue 13) against vissiam_kernels/sampling_reference.py.

The C++ op (``vissiam_kernels::sphere_sample_transform`` and its backward) on CPU tensors: forward to
rounding in every dtype, the hand-derived backward by gradcheck and against the reference's autograd,
the special rows (mu = +-e1 exactly, zero and tiny loc, s = 0 with t = +-1), D = 2 and D = 65536,
N = 0, strided inputs, the streamed (cache-bypassing) write of large outputs, reproducibility, bad
inputs, torch.compile, opcheck; the portable (non-AVX2) row loops in a second process. The Triton
kernels: through the interpreter in a fresh process (tests/triton_sampling_cases.py: TRITON_INTERPRET
must be set before triton is imported), compiled for sm_80/sm_90 without spills, and on a GPU when
one is present. The shared inputs and checks are tests/sampling_transform_checks.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sampling_transform_checks import (
    BAD_INPUT_IDS,
    BAD_INPUTS,
    FORWARD_TOLERANCE,
    GRAD_LOC_RTOL_F64,
    angles,
    assert_allclose,
    bad_inputs,
    check_backward,
    check_empty_and_huge_rows,
    check_forward,
    check_gradcheck,
    check_poles,
    check_reproducible,
    check_strided_inputs,
    good_inputs,
    noise_like,
    reference_gradients,
    special_rows,
)

import vissiam_kernels as vk
from vissiam_kernels import _sampling_ops
from vissiam_kernels._sampling_ops import sphere_transform
from vissiam_kernels.sampling_reference import householder_transform

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


@pytest.fixture
def cpu_backend(use_backend):
    return use_backend("cpu")


# ---------------------------------------------------------------- forward
@pytest.mark.parametrize("dtype", list(FORWARD_TOLERANCE), ids=str)
@pytest.mark.parametrize("dim", [2, 3, 17, 128, 2049])
def test_forward_matches_the_reference(cpu_backend, dtype, dim):
    check_forward(dtype, dim)
    cpu_backend()


def test_identity_at_e1_and_reflection_at_minus_e1(cpu_backend):
    """mu = e1 exactly: x = [t, s v] (H = I, no NaN); mu = -e1: x = [-t, s v] (u = 2 e1 reflects the first axis)."""
    dim = 6
    loc = torch.zeros(2, dim, dtype=torch.float64)
    loc[0, 0], loc[1, 0] = 3.0, -3.0
    t, s = angles(2)
    noise = noise_like(loc)
    v = noise / noise.norm(dim=-1, keepdim=True)
    x = sphere_transform(loc, t, s, noise)
    cpu_backend()
    torch.testing.assert_close(x[0], torch.cat([t[:1], s[0] * v[0]]), rtol=0, atol=1e-16)
    torch.testing.assert_close(x[1], torch.cat([-t[1:], s[1] * v[1]]), rtol=0, atol=1e-16)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("dim", [2, 5, 300])
def test_mode_and_antipode(cpu_backend, dtype, dim):
    """s = 0, t = +1 and t = -1: x = +mu and -mu."""
    check_poles(dtype, dim)
    cpu_backend()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 2e-15), (torch.float32, 3e-7)], ids=str)
def test_samples_lie_on_the_sphere(cpu_backend, dtype, tolerance):
    # not zero loc (no direction: x = [0, s v]) nor |loc| < eps (mu = loc / eps is not a unit vector)
    loc = special_rows(64, dtype, directionless=False)
    t, s = angles(loc.shape[0])
    x = sphere_transform(loc, t, s, noise_like(loc)).double()
    cpu_backend()
    assert (x.norm(dim=-1) - 1).abs().max() < tolerance


def test_zero_rows_and_rows_of_65536(cpu_backend):
    check_empty_and_huge_rows()
    cpu_backend()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_large_outputs_written_around_the_cache(cpu_backend, dtype):
    """(1024, 2048) moves more than half the last-level cache: x and grad_loc are streamed, their row
    tails (one element past a row start) split into a head of plain stores and an aligned rest."""
    loc = torch.randn(1024, 2048).to(dtype).requires_grad_()
    t, s = angles(1024)
    noise = torch.randn(1024, 2047).to(dtype)
    x = sphere_transform(loc, t, s, noise)
    cpu_backend()
    tolerance = FORWARD_TOLERANCE[dtype]
    assert_allclose(x, householder_transform(loc.detach(), t, s, noise), **tolerance)
    grad_x = torch.randn(1024, 2048).to(dtype)
    (grad_loc,) = torch.autograd.grad(x, loc, grad_x)
    reference = reference_gradients(loc, t, s, noise, grad_x)[0].to(dtype)
    assert_allclose(grad_loc, reference, rtol=tolerance["rtol"], atol=1e-6)


def test_strided_inputs(cpu_backend):
    check_strided_inputs()
    cpu_backend()


def test_reproducible_bitwise_for_any_thread_count(cpu_backend, restore_torch_globals):
    """Call after call, and with 1 or 2 threads: each row is computed by the same operations."""
    check_reproducible(torch.float32, rows=300, dim=129)
    cpu_backend()
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
    loc = torch.randn(10, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    loc[:5, 0] = torch.tensor([1.0, 1.0, -1.0, -1.0, -2.0])
    loc[:5, 1:] *= torch.tensor([1e-2, 1e-4, 1e-2, 1e-6, 0.0], dtype=torch.float64)[:, None]
    check_gradcheck(loc)
    cpu_backend()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("dim", [2, 3, 65, 2049])
def test_backward_matches_the_reference_autograd(cpu_backend, dtype, dim):
    check_backward(dtype, dim)
    cpu_backend()


@pytest.mark.parametrize("near", [1e-2, 1e-3, 1e-4, 1e-6])
def test_gradient_near_e1_against_the_2d_closed_form(cpu_backend, near):
    """D = 2: mu = (cos phi, sin phi), H = [[cos phi, sin phi], [sin phi, -cos phi]], v = sign(z), so
    x = (t cos phi + s v sin phi, t sin phi - s v cos phi) and dL/dl = (g . dx/dphi) (-l_2, l_1) / |l|^2
    exactly. Near e1 (l_2 = near) the fused backward stays within 200 eps/|m| of it (measured: 1e-12 at
    1e-2, 2e-11 at 1e-3, 2e-10 at 1e-4, 1.4e-8 at 1e-6), the bound behind GRAD_LOC_RTOL_F64."""
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


def test_only_the_requested_gradients(cpu_backend):
    loc = torch.randn(5, 4, requires_grad=True)
    t, s = angles(5)
    t.requires_grad_()
    x = sphere_transform(loc, t, s, torch.randn(5, 3))
    (grad_t,) = torch.autograd.grad(x.sum(), t)
    cpu_backend()
    assert grad_t.dtype == torch.float64 and grad_t.shape == (5,)
    assert loc.grad is None


# ---------------------------------------------------------------- compile, opcheck, backends
def test_torch_compile_fullgraph(cpu_backend):
    """torch.compile(fullgraph=True) traces through the C++ op (its fake kernel) and its autograd: value
    and gradient equal the eager op's and the reference's."""
    torch.compiler.reset()

    def sample_and_loss(transform, loc, t, s, noise):
        x = transform(loc, t, s, noise)
        return (x * x.roll(1, 0)).sum()

    compiled = torch.compile(sample_and_loss, fullgraph=True, dynamic=False)
    loc = torch.randn(16, 9, dtype=torch.float64, requires_grad=True)
    t, s = angles(16)
    noise = noise_like(loc)
    value = compiled(sphere_transform, loc, t, s, noise)
    (grad,) = torch.autograd.grad(value, loc)
    for transform in (sphere_transform, householder_transform):
        expected_value = sample_and_loss(transform, loc, t, s, noise)
        (expected_grad,) = torch.autograd.grad(expected_value, loc)
        torch.testing.assert_close(value, expected_value, rtol=1e-13, atol=0)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-14)
    sphere_transform(loc, t, s, noise)
    cpu_backend()


def test_opcheck(cpu_backend):
    from torch.library import opcheck

    loc = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    t, s = angles(6)
    noise = noise_like(loc)
    sphere_transform(loc, t, s, noise)  # registers the fake kernel and the autograd
    cpu_backend()
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where the Triton kernels cannot run")
def test_cuda_backend_without_triton_falls_back_to_the_reference_with_one_warning(monkeypatch):
    """The CUDA C++ library has no kernel of the transform: VISSIAM_BACKEND=cuda (or auto without Triton)
    runs the Triton kernels, or the reference where they cannot load (checked here without a GPU)."""
    monkeypatch.setattr(_sampling_ops, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="sampling transform has no CUDA C..? kernel"):
        assert _sampling_ops._resolve_compiled("cuda") == "reference"
    with pytest.raises(vk.BackendUnavailableError, match="VISSIAM_BACKEND=triton cannot run here"):
        _sampling_ops._resolve_compiled("triton")


def _run_pytest(env: dict, path: Path, selection: str | None = None) -> str:
    """pytest over ``path`` (the tests ``selection`` names), in a fresh process with ``env``; its output."""
    env = dict(os.environ, **env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(TESTS), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", str(path), "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rfEs",
               "-W", "ignore::RuntimeWarning"]
    if selection:
        command += ["-k", selection]
    result = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = (result.stdout + result.stderr)[-8000:]
    assert result.returncode == 0, f"run with {env} failed (exit {result.returncode}):\n{tail}"
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1], tail
    return result.stdout


@pytest.mark.skipif(os.environ.get("VISSIAM_CPU_STREAMS") == "portable", reason="this process is the portable run")
def test_portable_row_streams():
    """The portable (non-AVX2) build of the row loops: the forward and backward tests again, in a process
    started with VISSIAM_CPU_STREAMS=portable (the path is chosen once per process)."""
    _run_pytest({"VISSIAM_CPU_STREAMS": "portable"}, Path(__file__),
                "test_forward_matches_the_reference or test_backward_matches_the_reference_autograd "
                "or test_large_outputs or test_mode_and_antipode")


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("name, value, error, message", BAD_INPUTS, ids=BAD_INPUT_IDS)
def test_bad_inputs_name_the_argument(use_backend, backend, name, value, error, message):
    use_backend(backend)
    inputs = bad_inputs(name, value)
    with pytest.raises(error, match=message):
        sphere_transform(**inputs)
    if backend == "cpu":  # the op itself, called directly
        with pytest.raises(error, match=message):
            torch.ops.vissiam_kernels.sphere_sample_transform(*inputs.values())


def test_bad_grad_x_of_the_backward_op(cpu_backend):
    inputs = good_inputs()
    sphere_transform(**inputs)
    cpu_backend()
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
    monkeypatch.setitem(compile_check.TRITON_TYPES, torch.int64, "i64")  # the seeded launches' seed pointer
    seed = torch.tensor([1, 2])
    for rows, dim, dtype in ((256, 128, torch.float32), (64, 2048, torch.bfloat16), (8, 8193, torch.float32)):
        t = torch.rand(rows, dtype=torch.float64)
        loc, noise = torch.randn(rows, dim).to(dtype), torch.randn(rows, dim - 1).to(dtype)
        grad_x = torch.randn(rows, dim).to(dtype)
        triton_sampling.sphere_transform_forward(loc, t, t, noise)
        triton_sampling.sphere_transform_backward(grad_x, loc, t, t, noise)
        # the seeded kernel (tests/test_sampling_seeded.py): Philox and Box-Muller in the same registers
        triton_sampling.seeded_forward(loc, t, t, seed)
        triton_sampling.seeded_backward(grad_x, loc, t, t, seed)
    assert len(calls) == 12 and sum(kwargs["SEEDED"] for _, _, kwargs in calls) == 6
    for fn, args, kwargs in calls:
        for target in compile_check.TARGETS:
            registers, spilled = compile_check._compile(fn, args, kwargs, target)
            where = f"{fn.__name__} D={args[-1]} SEEDED={kwargs['SEEDED']} sm_{target.arch}"
            assert spilled == 0, f"{where}: {registers} registers, {spilled} bytes spilled"


# ---------------------------------------------------------------- Triton on a GPU (deselected without one)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (compiled kernels)")
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
        assert_allclose(x, expected, **tolerance)
        grad_loc, grad_t, grad_s = torch.autograd.grad(x, leaves, grad_x)
        expected_loc = expected_grads[0].to(dtype).double()
        assert_allclose(grad_loc, expected_loc, rtol=rtol, atol=1e-12)
        torch.testing.assert_close(grad_t, expected_grads[1], rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(grad_s, expected_grads[2], rtol=1e-13, atol=1e-14)


# ---------------------------------------------------------------- Triton (interpreter)
def test_triton_kernels_through_the_interpreter():
    """tests/triton_sampling_cases.py in a fresh process with TRITON_INTERPRET=1, VISSIAM_BACKEND=triton:
    forward and backward against the reference in every dtype (D = 2, 3, 33, 300 and 65536), the poles,
    gradcheck, strided inputs, reproducibility, bad inputs; each asserts that the Triton kernels ran."""
    pytest.importorskip("triton", reason="the Triton backend needs the triton package")
    output = _run_pytest({"TRITON_INTERPRET": "1", "VISSIAM_BACKEND": "triton"}, TESTS / "triton_sampling_cases.py")
    print(output.strip().splitlines()[-1])
