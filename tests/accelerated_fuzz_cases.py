"""The fuzz properties of tests/fuzz_properties.py on the accelerated backends (issue 8).

Not collected by a plain ``pytest`` run (no ``test_`` prefix). It runs

- with TRITON_INTERPRET=1: the Triton backend on CPU tensors through the interpreter, in a fresh
  process started by tests/test_triton_interpreter.py (CI); fewer examples and smaller shapes,
  since the interpreter executes every tl operation in numpy;
- with a CUDA device: the Triton and the CUDA C++ backends on CUDA tensors, collected by
  tests/test_fuzz_gpu.py (``gpu`` marker, run by bench/gpu_check.sh), at the CPU run's sizes
  with fewer examples.

Every test asserts which backend served the call. Invalid kappa values on CUDA tensors are
device-side asserts (see fuzz_properties' docstring): those draws are rejected here.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from fuzz_properties import (
    ELEMENT_BUDGET,
    HOST_CHECKED_KINDS,
    INVALID_KINDS,
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

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("the accelerated fuzz cases need TRITON_INTERPRET=1 or a CUDA device", allow_module_level=True)

if INTERPRETED:
    TARGETS = (Target("triton", "cpu", element_budget=300_000),)
    EXAMPLES, NORMALIZER_EXAMPLES, INVALID_EXAMPLES, NORMALIZER_SIDE = 60, 40, 150, 40
    INVALID = INVALID_KINDS  # CPU tensors: invalid kappa is a ValueError here too
else:
    # Fewer examples than on the CPU: a lent GPU machine has minutes, and every new dtype/layout
    # combination first compiles its Triton specialization (seconds each on a fresh machine).
    TARGETS = (Target("triton", "cuda"), Target("cuda", "cuda"))
    EXAMPLES, NORMALIZER_EXAMPLES, INVALID_EXAMPLES, NORMALIZER_SIDE = 25, 15, 50, 40
    INVALID = HOST_CHECKED_KINDS
BUDGET = min(t.element_budget for t in TARGETS)
assert BUDGET <= ELEMENT_BUDGET

FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy warnings from masked interpreter lanes


@contextmanager
def backend(name: str):
    """VISSIAM_BACKEND=name for the block (a fixture would be shared by all of hypothesis' examples)."""
    before = os.environ.get("VISSIAM_BACKEND")
    os.environ["VISSIAM_BACKEND"] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("VISSIAM_BACKEND", None)
        else:
            os.environ["VISSIAM_BACKEND"] = before


def target_id(target: Target) -> str:
    return f"{target.backend}-{target.device}"


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
@pytest.mark.parametrize("op_name", list(NLL_OPS))
@FUZZ
@given(case=nll_cases(element_budget=BUDGET))
def test_fuzz_nll_ops_accelerated(target, op_name, case):
    with backend(target.backend):
        check_nll_op(op_name, case, target)


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
@FUZZ
@given(case=vi_cases(element_budget=BUDGET))
def test_fuzz_vi_simsiam_loss_accelerated(target, case):
    with backend(target.backend):
        check_vi_simsiam_loss(case, target)


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
@pytest.mark.parametrize("name", NORMALIZERS)
@settings(FUZZ, max_examples=NORMALIZER_EXAMPLES)
@given(case=normalizer_cases(max_side=NORMALIZER_SIDE))
def test_fuzz_normalizers_accelerated(target, name, case):
    with backend(target.backend):
        check_normalizer(name, case, target)


# Argument errors are raised on the host before any backend is chosen: one target covers them.
@pytest.mark.parametrize("target", TARGETS[:1], ids=target_id)
@settings(FUZZ, max_examples=INVALID_EXAMPLES)
@given(case=invalid_cases(kinds=INVALID))
def test_fuzz_invalid_inputs_raise_accelerated(target, case):
    with backend(target.backend):
        check_invalid_input_raises(case, target.device)
