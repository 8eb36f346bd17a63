"""The Triton backend in CI without a GPU: its suite (tests/triton_cases.py) and the fuzz properties
(tests/accelerated_fuzz_cases.py) through the Triton interpreter.

TRITON_INTERPRET must be set before triton is imported, and this pytest process has imported
it already (other test modules, torch.compile), so each file runs in a fresh interpreter with
TRITON_INTERPRET=1 and VISSIAM_BACKEND=triton on CPU tensors; its output is shown on failure.
The rest of this file checks, in this process, how the backend reports that it cannot run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vissiam_kernels as vk
from vissiam_kernels import _dispatch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

triton = pytest.importorskip("triton", reason="the Triton backend needs the triton package")


@pytest.mark.slow
@pytest.mark.parametrize("cases", ["triton_cases.py", "accelerated_fuzz_cases.py"])
def test_triton_suite_through_the_interpreter(cases):
    """triton_cases.py: the backend's correctness suite; accelerated_fuzz_cases.py: the fuzz
    properties of every public op (issue 8) on the Triton backend."""
    env = dict(os.environ, TRITON_INTERPRET="1", VISSIAM_BACKEND="triton")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(TESTS), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", str(TESTS / cases), "-q", "-p", "no:cacheprovider",
               "-o", "addopts=", "-rfE"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (result.stdout + result.stderr)[-12000:]
    assert result.returncode == 0, f"interpreter suite failed (exit {result.returncode}):\n{tail}"
    print(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where no GPU is present")
def test_without_gpu_or_interpreter_the_backend_says_why(monkeypatch):
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs the interpreter")
    from vissiam_kernels import triton_ops

    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        triton_ops.load()
    assert "TRITON_INTERPRET" in str(_dispatch.availability_error("triton"))
    monkeypatch.setenv("VISSIAM_BACKEND", "triton")
    with pytest.raises(vk.BackendUnavailableError, match="VISSIAM_BACKEND=triton cannot run here"):
        vk.vmf_loss(torch.randn(2, 4), torch.randn(2, 4))
