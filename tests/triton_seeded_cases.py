"""The seeded sampler's Triton kernel (vissiam_kernels/triton_sampling.py, SEEDED) through the interpreter:
the noise it draws against the float64 reference noise, forward and backward against the reference
transform of that noise, reproducibility; each asserts that the Triton kernel ran.

Not collected by a plain ``pytest`` run: tests/test_sampling_seeded.py runs this file in a fresh process
with TRITON_INTERPRET=1 and VISSIAM_BACKEND=triton, on CPU tensors (small shapes: the interpreter runs
every tl operation in numpy).
"""

from __future__ import annotations

import pytest
import torch
from sampling_transform_checks import angles, reference_gradients, special_rows

from vissiam_kernels._sampling_ops import sphere_noise, sphere_sample_seeded
from vissiam_kernels.sampling_reference import householder_transform, philox_normal

triton_sampling = pytest.importorskip("vissiam_kernels.triton_sampling")
if not triton_sampling.triton_ops or not triton_sampling.triton_ops.interpreted():
    pytest.skip("runs under TRITON_INTERPRET=1 (started by tests/test_sampling_seeded.py)", allow_module_level=True)

SEED = torch.tensor([0x0123456789ABCDEF, -0x7EDCBA9876543210])


@pytest.mark.parametrize("dim", [2, 6, 70, 3000])
def test_matches_the_reference_of_its_noise(use_backend, dim):
    """D = 3000 sweeps the row in 2048-element chunks. The kernel's float32 Box-Muller agrees with the CPU
    op's and the float64 reference's to float32 rounding: x and the gradients against the reference
    transform of the float64 noise, to that rounding."""
    ran = use_backend("triton")
    loc = special_rows(dim, torch.float64, directionless=False, near=1e-3)[:6]
    t, s = angles(loc.shape[0])
    leaves = (loc.clone().requires_grad_(), t.clone().requires_grad_(), s.clone().requires_grad_())
    x = sphere_sample_seeded(*leaves, SEED)
    ran()
    noise = philox_normal(SEED, loc.shape[0], dim - 1)
    torch.testing.assert_close(x, householder_transform(loc, t, s, noise), rtol=1e-5, atol=2e-6)
    grad_x = torch.randn(loc.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(x, leaves, grad_x)
    for grad, expected in zip(grads, reference_gradients(loc, t, s, noise, grad_x)):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(sphere_sample_seeded(loc, t, s, SEED), x.detach())  # reproducible


def test_float32(use_backend):
    ran = use_backend("triton")
    loc = torch.randn(40, 33)
    t, s = angles(40)
    x = sphere_sample_seeded(loc, t, s, SEED)
    ran()
    expected = householder_transform(loc.double(), t, s, philox_normal(SEED, 40, 32))
    torch.testing.assert_close(x.double(), expected, rtol=1e-5, atol=2e-6)


def test_noise_agrees_with_the_cpu_op(use_backend):
    """The Triton noise, read back as x at mu = e1 (x[1:] = s v) with s = 1, t = 0, against the CPU op's
    noise direction: the same Philox words and formulas, float32 rounding apart."""
    ran = use_backend("triton")
    loc = torch.zeros(64, 37, dtype=torch.float64)
    loc[:, 0] = 1.0
    t, s = torch.zeros(64, dtype=torch.float64), torch.ones(64, dtype=torch.float64)
    x = sphere_sample_seeded(loc, t, s, SEED)
    ran()
    noise = sphere_noise(SEED, 64, 36, torch.float64)
    torch.testing.assert_close(x[:, 1:], noise / noise.norm(dim=-1, keepdim=True), rtol=0, atol=1e-6)
