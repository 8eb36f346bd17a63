"""Property-based fuzzing of every public op on the CPU backend, CPU tensors (issue 8).

The properties, strategies and tolerances live in tests/fuzz_properties.py (shared with the Triton
interpreter run and the GPU run, tests/accelerated_fuzz_cases.py); each call must return finite values
matching the float64 reference, with gradients, or raise the documented ValueError/TypeError.
Failing examples found by the fuzzing are kept below as regression tests.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import vissiam_kernels as vk
from vissiam_kernels import reference

from fuzz_properties import (
    NLL_OPS,
    NORMALIZERS,
    Target,
    check_invalid_input_raises,
    check_nll_op,
    check_normalizer,
    check_vi_simsiam_loss,
    invalid_cases,
    nll_cases,
    normalizer_cases,
    vi_cases,
)

CPU = Target("cpu", "cpu")
FUZZ = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def cpu_backend(monkeypatch):
    monkeypatch.setenv("VISSIAM_BACKEND", "cpu")
    yield


@pytest.mark.parametrize("op_name", list(NLL_OPS))
@FUZZ
@given(case=nll_cases())
def test_fuzz_nll_ops(op_name, case):
    check_nll_op(op_name, case, CPU)


@FUZZ
@given(case=vi_cases())
def test_fuzz_vi_simsiam_loss(case):
    check_vi_simsiam_loss(case, CPU)


@pytest.mark.parametrize("name", NORMALIZERS)
@settings(max_examples=40, deadline=None, database=None, derandomize=True)
@given(case=normalizer_cases())
def test_fuzz_normalizers(name, case):
    check_normalizer(name, case, CPU)


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(case=invalid_cases())
def test_fuzz_invalid_inputs_raise(case):
    check_invalid_input_raises(case)


# ---------------------------------------------------------------- regression tests from the fuzzing
@pytest.mark.parametrize("upstream", [0.7, 2.0])
def test_regression_rescaled_overflowing_half_gradient_is_inf_not_nan(upstream):
    """Found by test_fuzz_nll_ops: a float16 gradient that overflows (kappa = 1e7) came back NaN, not
    inf, when the upstream gradient differed from the predicted one: the in-place rescale of the
    training path then computed factor * g + 0 * g, and 0 * inf = NaN. torch (and the reference) give inf."""
    mu = torch.tensor([[1.5410, -0.2935]], dtype=torch.float16, requires_grad=True)
    target = torch.tensor([[-0.7192, -0.4033]], dtype=torch.float16)
    out = vk.vmf_nll(mu, target, torch.tensor([1e7]), reduction="none")
    assert vk.last_backend() == "cpu"
    out.backward(torch.full_like(out, upstream))
    mu_ref = mu.detach().clone().requires_grad_(True)
    reference.vmf_nll(mu_ref, target, torch.tensor([1e7]), "none").backward(torch.full((1,), upstream))
    assert torch.isinf(mu_ref.grad).all()
    assert not mu.grad.isnan().any()
    assert torch.equal(mu.grad, mu_ref.grad)  # +-inf with the reference's signs
