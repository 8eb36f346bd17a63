"""The Triton kernels of the sampling transform (vissiam_kernels/triton_sampling.py) through the
interpreter, against the float64 reference: the checks of tests/sampling_transform_checks.py that the
CPU C++ op passes in tests/test_sampling_transform.py, each asserting that the Triton kernels ran.

Not collected by a plain ``pytest`` run (no ``test_`` prefix): TRITON_INTERPRET must be set before
triton is imported, so tests/test_sampling_transform.py runs this file in a fresh process with
TRITON_INTERPRET=1 and VISSIAM_BACKEND=triton, on CPU tensors. Shapes are small (the interpreter runs
every tl operation in numpy), except one pair of D = 65536 rows, swept in 2048-element chunks.
"""

from __future__ import annotations

import pytest
import sampling_transform_checks as checks
import torch

from vissiam_kernels._sampling_ops import sphere_transform

triton_sampling = pytest.importorskip("vissiam_kernels.triton_sampling")
if not triton_sampling.triton_ops or not triton_sampling.triton_ops.interpreted():
    pytest.skip("runs under TRITON_INTERPRET=1 (started by tests/test_sampling_transform.py)",
                allow_module_level=True)


@pytest.fixture
def triton_ran(use_backend):
    return use_backend("triton")


@pytest.mark.parametrize("dtype", list(checks.FORWARD_TOLERANCE), ids=str)
@pytest.mark.parametrize("dim", [2, 3, 33, 300])
def test_forward_and_backward_match_the_reference(triton_ran, dtype, dim):
    checks.check_forward(dtype, dim)
    triton_ran()
    checks.check_backward(dtype, dim)
    triton_ran()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_mode_and_antipode(triton_ran, dtype):
    checks.check_poles(dtype, 5)
    triton_ran()


def test_rows_of_65536_and_empty_batches(triton_ran):
    """D = 65536: the row is swept in 2048-element chunks, twice (sums, then the write)."""
    checks.check_empty_and_huge_rows(((2, 65536), (0, 5)))
    triton_ran()


def test_gradcheck_strided_inputs_and_reproducibility(triton_ran):
    checks.check_gradcheck(checks.special_rows(4, directionless=False, near=1e-2)[1:5])  # -e1, near +-e1; not e1
    triton_ran()
    checks.check_strided_inputs()
    triton_ran()
    checks.check_reproducible(rows=8, dim=33)
    triton_ran()


@pytest.mark.parametrize("name, value, error, message", checks.BAD_INPUTS[:-1], ids=checks.BAD_INPUT_IDS[:-1])
def test_bad_inputs(triton_ran, name, value, error, message):
    with pytest.raises(error, match=message):
        sphere_transform(**checks.bad_inputs(name, value))
