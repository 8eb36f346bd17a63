"""Inputs and checks of the sampling transform x = H [t, s v] shared by the backends' tests.

tests/test_sampling_transform.py runs them on the CPU C++ op, tests/triton_sampling_cases.py on the
Triton kernels through the interpreter. Every check compares ``_sampling_ops.sphere_transform`` (the
backend that VISSIAM_BACKEND selects; the caller asserts which ran) with the float64 reference
``sampling_reference.householder_transform`` and its autograd.
"""

from __future__ import annotations

import torch
from conftest import first_mismatch

from vissiam_kernels._sampling_ops import sphere_transform
from vissiam_kernels.sampling_reference import householder_transform

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
    ``directionless`` also zero loc and |loc| < eps (normalized by eps, not by |loc|). Not normalized."""
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


def assert_allclose(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> None:
    actual, expected = actual.double(), expected.double()
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), first_mismatch(actual, expected, rtol, atol)


# ---------------------------------------------------------------- checks
def check_forward(dtype: torch.dtype, dim: int) -> None:
    """x in ``dtype`` against the reference on the special rows (mu = +-e1 exactly, near them, zero loc)."""
    loc = special_rows(dim, dtype)
    t, s = angles(loc.shape[0])
    noise = noise_like(loc)
    x = sphere_transform(loc, t, s, noise)
    assert x.dtype == dtype and x.shape == loc.shape and x.is_contiguous()
    assert_allclose(x, householder_transform(loc, t, s, noise), **FORWARD_TOLERANCE[dtype])


def check_backward(dtype: torch.dtype, dim: int) -> None:
    """Gradients to loc, t, s against the reference's autograd, including mu = e1 exactly (where gradcheck
    cannot go: H is not continuous there), zero loc and |loc| < eps: all finite. Near e1 at |m| = 1e-3 (see
    GRAD_LOC_RTOL_F64)."""
    # 1/eps-sized gradients of the directionless rows overflow float16
    loc = special_rows(dim, dtype, directionless=dtype != torch.float16, near=1e-3)
    t, s = angles(loc.shape[0])
    noise = noise_like(loc)
    grad_x = torch.randn(loc.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(dtype)
    leaves = (loc.clone().requires_grad_(), t.clone().requires_grad_(), s.clone().requires_grad_())
    grad_loc, grad_t, grad_s = torch.autograd.grad(sphere_transform(*leaves, noise), leaves, grad_x)
    expected_loc, expected_t, expected_s = reference_gradients(loc, t, s, noise, grad_x)
    assert grad_loc.dtype == dtype and grad_t.dtype == grad_s.dtype == torch.float64
    assert torch.isfinite(grad_loc).all() and torch.isfinite(grad_t).all() and torch.isfinite(grad_s).all()
    rtol = GRAD_LOC_RTOL_F64 if dtype == torch.float64 else FORWARD_TOLERANCE[dtype]["rtol"]
    assert_allclose(grad_loc, expected_loc.to(dtype), rtol=rtol, atol=1e-12)
    torch.testing.assert_close(grad_t, expected_t, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(grad_s, expected_s, rtol=1e-13, atol=1e-14)


def check_poles(dtype: torch.dtype, dim: int) -> None:
    """s = 0 with t = 1 and t = -1 (the mode and the antipode): x = t mu exactly up to the rounding of
    mu = loc/|loc|, whatever the noise, on every special row with a direction; gradients equal the
    reference's (t = -1: grad_loc = -(I - mu mu^T) grad_x / |loc|)."""
    loc = special_rows(dim, dtype, directionless=False).repeat(2, 1)
    rows = loc.shape[0]
    t = torch.ones(rows, dtype=torch.float64)
    t[rows // 2:] = -1.0
    s = torch.zeros(rows, dtype=torch.float64)
    noise = noise_like(loc)
    mu = loc.double() / loc.double().norm(dim=-1, keepdim=True)
    leaves = (loc.clone().requires_grad_(), t.clone().requires_grad_(), s.clone().requires_grad_())
    x = sphere_transform(*leaves, noise)
    rtol = FORWARD_TOLERANCE[dtype]["rtol"] if dtype != torch.float64 else 1e-15
    assert_allclose(x, (t[:, None] * mu).to(dtype), rtol=rtol, atol=1e-300)
    grad_x = torch.randn(loc.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).to(dtype)
    grads = torch.autograd.grad(x, leaves, grad_x)
    expected = reference_gradients(loc, t, s, noise, grad_x)
    assert all(torch.isfinite(g).all() for g in grads)
    rtol = GRAD_LOC_RTOL_F64 if dtype == torch.float64 else FORWARD_TOLERANCE[dtype]["rtol"]
    assert_allclose(grads[0], expected[0].to(dtype), rtol=rtol, atol=1e-12)
    torch.testing.assert_close(grads[1], expected[1], rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(grads[2], expected[2], rtol=1e-13, atol=1e-14)


def check_empty_and_huge_rows(shapes=((0, 5), (1, 65536), (2, 65536))) -> None:
    """N = 0, and D = 65536 in float32 (rows far longer than any block)."""
    for rows, dim in shapes:
        loc = torch.randn(rows, dim, requires_grad=True)
        t, s = angles(rows)
        noise = torch.randn(rows, dim - 1)
        x = sphere_transform(loc, t, s, noise)
        torch.testing.assert_close(x, householder_transform(loc, t, s, noise), rtol=2**-23, atol=1e-30)
        grad_x = torch.randn(rows, dim)
        (grad_loc,) = torch.autograd.grad(x, loc, grad_x)
        expected = reference_gradients(loc, t, s, noise, grad_x)[0]
        torch.testing.assert_close(grad_loc.double(), expected, rtol=1e-6, atol=1e-12)


def check_strided_inputs() -> None:
    """Column strides other than 1, t and s of stride 2, and grad_x = ones expanded (strides (0, 0))."""
    loc = torch.randn(40, 9, dtype=torch.float64).t()[:, :7]  # (9, 7) with strides (1, 9)
    assert loc.stride(1) != 1
    noise = torch.randn(9, 20, dtype=torch.float64)[:, ::3][:, :6]  # (9, 6), column stride 3
    tt = torch.rand(18, dtype=torch.float64)
    t, s = tt[::2], tt[1::2]  # stride 2
    x = sphere_transform(loc, t, s, noise)
    torch.testing.assert_close(x, householder_transform(loc, t, s, noise), rtol=1e-14, atol=2e-15)
    loc = loc.clone().requires_grad_()
    sphere_transform(loc, t, s, noise).sum().backward()
    torch.testing.assert_close(loc.grad, reference_gradients(loc, t, s, noise, torch.ones(9, 7))[0])


def check_gradcheck(loc: torch.Tensor) -> None:
    """torch.autograd.gradcheck in float64 of x to (loc, t, s)."""
    loc = loc.detach().clone().requires_grad_()
    t, s = angles(loc.shape[0])
    t.requires_grad_()
    s.requires_grad_()
    assert torch.autograd.gradcheck(sphere_transform, (loc, t, s, noise_like(loc)))


def check_reproducible(dtype: torch.dtype = torch.float32, rows: int = 64, dim: int = 65) -> None:
    """The same inputs give bitwise the same x and gradients, call after call."""
    loc = torch.randn(rows, dim).to(dtype).requires_grad_()
    t, s = angles(rows)
    noise = torch.randn(rows, dim - 1).to(dtype)
    grad_x = torch.randn(rows, dim).to(dtype)
    results = []
    for _ in range(2):
        x = sphere_transform(loc, t, s, noise)
        results.append((x, *torch.autograd.grad(x, loc, grad_x)))
    assert all(torch.equal(a, b) for a, b in zip(*results))


# ---------------------------------------------------------------- bad inputs
def good_inputs() -> dict:
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
BAD_INPUT_IDS = [f"{case[0]}-{i}" for i, case in enumerate(BAD_INPUTS)]


def bad_inputs(name: str, value: torch.Tensor) -> dict:
    inputs = good_inputs()
    inputs[name] = value
    return inputs
