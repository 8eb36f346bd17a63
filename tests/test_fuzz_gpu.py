"""The fuzz properties on CUDA tensors, for the Triton and the CUDA C++ backends (issue 8).

Collects every case of tests/accelerated_fuzz_cases.py (properties in tests/fuzz_properties.py)
at the CPU run's sizes, with fewer examples (see there). Marked ``gpu``: deselected without a CUDA device, run by
bench/gpu_check.sh (stage ``fuzz``) on a lent GPU machine. The same properties run on the Triton
backend through the interpreter in CI (tests/test_triton_interpreter.py).
"""

from __future__ import annotations

import os

import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"

from conftest import GPU_COLLECTOR_MARKS as GPU_MARKS

pytestmark = GPU_MARKS


def test_a_cuda_device_is_visible():
    """Stands for this file where the cases cannot run (then skipped, with the reason above)."""
    assert torch.cuda.is_available()


if ON_GPU:
    from accelerated_fuzz_cases import *  # noqa: F401,F403  (every case, collected here on CUDA tensors)
    from accelerated_fuzz_cases import pytestmark as case_marks

    # The star import replaced this module's pytestmark with the cases module's (see test_triton_gpu.py).
    pytestmark = GPU_MARKS + [case_marks]
