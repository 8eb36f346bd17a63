"""A CPU user sees no CUDA warnings: loading the CPU kernels and running a loss prints nothing about
CUDA on stderr (torch.utils.cpp_extension warns "No CUDA runtime is found" when it is imported on a
machine without a GPU; vissiam_kernels._extension.import_cpp_extension keeps that quiet)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

PROGRAM = """
import torch, vissiam_kernels as vk
loss = vk.vi_simsiam_loss(torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8),
                          torch.rand(4) + 1, torch.rand(4) + 1)
assert vk.last_backend() == "cpu", vk.last_backend()
print(float(loss))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is only given on machines without CUDA")
def test_no_cuda_warning_on_a_cpu_machine():
    env = {**os.environ, "VISSIAM_BACKEND": "cpu"}
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "CUDA" not in result.stderr, result.stderr
    float(result.stdout)
