"""CI: the CUDA C++ kernels (csrc/cuda) compile with nvcc and load, on a machine without a GPU.

The build is for one architecture (``VISSIAM_CI_CUDA_ARCH``, default 9.0) to keep
CI time reasonable (about a minute on 2 cores); the kernels themselves run in
tests/test_cuda_kernels.py where a GPU is present. The test skips, printing why,
only where nvcc (or a CUDA build of torch) is absent: any compile error fails it.
The other tests here check the build knobs and the error messages without compiling.
"""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest
import torch

from vissiam_kernels import _cuda_extension, _dispatch, _extension

CI_ARCH = os.environ.get("VISSIAM_CI_CUDA_ARCH", "9.0")
SOURCES = _extension.source_dir()
# Every op of the schema file needs a CUDA kernel, except the loss ops that csrc/loss_autograd.cpp
# serves on every device (spherical_loss; spherical_loss_forward, fused on the CPU key, composed of
# the per-row ops elsewhere: its CompositeExplicitAutograd kernel).
# The sampling ops have a C++ kernel on the CPU only (csrc/cpu/sphere_sampling_cpu.cpp): on GPUs the Triton
# kernels of vissiam_kernels/triton_sampling.py serve them (namespace vissiam_triton), as issue 13 specifies.
# The angle-derivative op (csrc/cpu/angle_law_cpu.cpp) is CPU-only too: on GPUs the reference's quadrature
# (vissiam_kernels/distributions/_angle_law.py) runs as PyTorch ops.
COMPOSED_OPS = ("spherical_loss", "spherical_loss_forward")
FUSED_CPU_OPS = ("spherical_loss_forward",)
IMPL = r'm\.impl\("(\w+)"'
DECLARED_OPS = tuple(re.findall(r'm\.def\("(\w+)\(', (SOURCES / "ops.cpp").read_text()))
SAMPLING_OPS = tuple(op for source in ("sphere_sampling_cpu.cpp", "angle_law_cpu.cpp")
                     for op in re.findall(IMPL, (SOURCES / "cpu" / source).read_text()))
OPS = tuple(op for op in DECLARED_OPS if op not in COMPOSED_OPS + SAMPLING_OPS)


def _nvcc_absent_reason() -> str | None:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build: no CUDA kernels to compile"
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if shutil.which("nvcc") is None and not (home and os.path.isfile(os.path.join(home, "bin", "nvcc"))):
        return "nvcc is absent (not on the PATH, no CUDA_HOME): the CUDA kernels cannot be compiled here"
    return None


@pytest.mark.slow
def test_cuda_extension_compiles_and_registers_cuda_kernels(monkeypatch):
    reason = _nvcc_absent_reason()
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    monkeypatch.setenv("MAX_JOBS", os.environ.get("MAX_JOBS", "2"))
    start = time.perf_counter()
    build_dir = _cuda_extension.build([CI_ARCH])  # raises, with nvcc's output, on any compile error
    print(f"CUDA extension for sm_{CI_ARCH.replace('.', '')} built or found in {build_dir} "
          f"({time.perf_counter() - start:.0f} s)")
    assert any(build_dir.glob(f"{_cuda_extension.LIBRARY_NAME}*.so"))
    missing = [op for op in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"vissiam_kernels::{op}", "CUDA")]
    assert not missing, f"no CUDA kernel registered for {missing}"
    assert _cuda_extension.has_cuda_kernels()
    # The CPU kernels stay in place beside them.
    assert torch._C._dispatch_has_kernel_for_dispatch_key("vissiam_kernels::spherical_nll", "CPU")
    # Loaded with VISSIAM_FORCE_CUDA=1, load() is then a no-op even without a GPU.
    monkeypatch.setenv("VISSIAM_FORCE_CUDA", "1")
    _cuda_extension.load()


def test_cuda_source_serves_every_op_and_special_function_of_the_cpu_source():
    """Caught here, without compiling: an op or special-function name added on CPU but not on CUDA."""
    cpu = (SOURCES / "cpu" / "spherical_ops_cpu.cpp").read_text()
    cuda = "\n".join(path.read_text() for path in sorted((SOURCES / "cuda").glob("*.cu")))
    assert {"spherical_nll", "scaled_row_combination", "normalizer_quantity"} <= set(OPS)
    assert set(re.findall(IMPL, cuda)) == set(OPS) == set(re.findall(IMPL, cpu)) - set(FUSED_CPU_OPS)
    composite = (SOURCES / "loss_autograd.cpp").read_text()
    assert set(COMPOSED_OPS) <= set(re.findall(IMPL, composite))
    # every declared op is served: the sampling ops by their CPU source (and Triton on GPUs), no other op there
    assert {"sphere_sample_transform", "sphere_sample_seeded", "angle_kappa_derivative"} <= set(SAMPLING_OPS) <= set(DECLARED_OPS)
    assert set(DECLARED_OPS) == set(OPS) | set(COMPOSED_OPS) | set(SAMPLING_OPS)
    # special-function names come from one table that both sources include
    for source in (cpu, cuda):
        assert '#include "vissiam/special_function_table.h"' in source


def test_arch_flags():
    assert _cuda_extension.gencode_flags(["8.0", "9.0+PTX"]) == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",
    ]
    assert _cuda_extension.gencode_flags(["9.0a"]) == ["-gencode=arch=compute_90a,code=sm_90a"]
    with pytest.raises(_cuda_extension.CudaExtensionUnavailable, match="TORCH_CUDA_ARCH_LIST entry 'sm_90'"):
        _cuda_extension.gencode_flags(["sm_90"])


def test_arch_list_default_and_env(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    default = [entry.replace("+PTX", "") for entry in _cuda_extension.arch_list()]
    assert "8.0" in default and "9.0" in default
    assert _cuda_extension.arch_list()[-1].endswith("+PTX")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6 9.0+PTX")
    assert _cuda_extension.arch_list() == ["8.6", "9.0+PTX"]
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    assert _cuda_extension.arch_list() == ["8.0", "9.0"]


def test_no_cuda_switch_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("VISSIAM_NO_CUDA", "1")
    with pytest.raises(_cuda_extension.CudaExtensionUnavailable, match="VISSIAM_NO_CUDA=1"):
        _cuda_extension.load()
    assert "VISSIAM_NO_CUDA=1" in str(_dispatch.availability_error("cuda"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where no GPU is visible")
def test_no_gpu_needs_force(monkeypatch):
    monkeypatch.delenv("VISSIAM_NO_CUDA", raising=False)
    monkeypatch.delenv("VISSIAM_FORCE_CUDA", raising=False)
    monkeypatch.setattr(_cuda_extension, "_state", {"built": None, "error": None})
    with pytest.raises(_cuda_extension.CudaExtensionUnavailable, match="VISSIAM_FORCE_CUDA=1"):
        _cuda_extension.load()


def test_missing_toolkit_is_a_clear_error(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "CUDA_HOME", cpp_extension.CUDA_HOME)  # restored afterwards
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    with pytest.raises(_cuda_extension.CudaExtensionUnavailable, match="is not a CUDA toolkit"):
        _cuda_extension.find_cuda_toolkit()
    monkeypatch.delenv("CUDA_HOME")
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_cuda_extension, "_is_toolkit", lambda root: False)
    with pytest.raises(_cuda_extension.CudaExtensionUnavailable, match="no CUDA toolkit found: nvcc is not on the PATH"):
        _cuda_extension.find_cuda_toolkit()


def test_failed_build_is_reported_not_retried(monkeypatch):
    monkeypatch.delenv("VISSIAM_NO_CUDA", raising=False)
    monkeypatch.setenv("VISSIAM_FORCE_CUDA", "1")
    monkeypatch.setattr(_cuda_extension, "_state", {"built": None, "error": None})
    calls = []

    def failing_build(archs=None):
        calls.append(archs)
        raise _cuda_extension.CudaExtensionUnavailable("building the CUDA kernels failed: (simulated)")

    monkeypatch.setattr(_cuda_extension, "build", failing_build)
    for _ in range(2):
        with pytest.raises(_cuda_extension.CudaExtensionUnavailable, match="simulated"):
            _cuda_extension.load()
    assert len(calls) == 1
