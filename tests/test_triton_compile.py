"""The Triton kernels compile for real GPUs (sm_80, sm_90) here, without one.

The interpreter runs the kernels' Python, not Triton's compiler: code that only the compiler
rejects (a non-constexpr global, a float64 op without a lowering, a layout problem) or that
spills registers would first show on a lent GPU. So the launches the host launchers make for
representative calls are captured (no kernel runs), and each is compiled to a cubin with
triton's bundled ptxas, with the argument specialization Triton's launcher applies
(16-byte-aligned pointers, ints divisible by 16, ints equal to 1 as constants). Every
compile must succeed, and the default launch table must not spill registers.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest
import torch

triton = pytest.importorskip("triton")

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiles real kernels; this process runs the interpreter", allow_module_level=True)

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from vissiam_kernels import triton_kernels, triton_ops  # noqa: E402

TARGETS = [GPUTarget("cuda", 80, 32), GPUTarget("cuda", 90, 32)]
TRITON_TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _cuobjdump() -> str:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(path):
        pytest.skip("triton's NVIDIA tools (ptxas, cuobjdump) are not bundled with this triton")
    return path


class _Recorder:
    """Stands for a jit kernel: ``kernel[grid](*args, **kwargs)`` records the call."""

    def __init__(self, fn, calls):
        self.fn, self.calls = fn, calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((self.fn, args, kwargs))


class _KernelModule:
    def __init__(self, calls):
        self._calls, self._recorders = calls, {}

    def __getattr__(self, name):
        if name not in self._recorders:
            self._recorders[name] = _Recorder(getattr(triton_kernels, name), self._calls)
        return self._recorders[name]


@pytest.fixture
def captured(monkeypatch):
    calls = []
    monkeypatch.setattr(triton_ops, "kernels", _KernelModule(calls))
    monkeypatch.setattr(triton_ops, "wrap_triton", lambda kernel: kernel)
    monkeypatch.setattr(triton_ops, "_check_device", lambda t, name: None)
    monkeypatch.setattr(triton_ops, "_check_kappa_values", lambda kappa, where: None)
    monkeypatch.setattr(triton_ops, "AUTOTUNE", False)
    return calls


def _specialize(fn, args, kwargs):
    """Signature, constants and attributes as Triton's launcher would specialize these arguments."""
    values = dict(zip(fn.arg_names, args))
    values.update({k: v for k, v in kwargs.items() if k in fn.arg_names})
    signature, constants, attrs = {}, {}, {}
    for index, name in enumerate(fn.arg_names):
        value = values[name]
        if index in fn.constexprs or name in kwargs:
            signature[name], constants[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + TRITON_TYPES[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            if value == 1:
                signature[name], constants[name] = "constexpr", 1
                continue
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{name}: {value!r}")
    return signature, constants, attrs


def _compile(fn, args, kwargs, target):
    signature, constants, attrs = _specialize(fn, args, kwargs)
    source = ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)
    compiled = triton.compile(source, target=target, options={"num_warps": kwargs.get("num_warps", 4)})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(compiled.asm["cubin"])
        handle.flush()
        usage = subprocess.run([_cuobjdump(), "-res-usage", handle.name], capture_output=True, text=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage)
    assert match, usage
    return int(match[1]), int(match[2]) + int(match[3])


def _cpu(shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


def _with_float32_accumulation(call):
    triton_ops.ACCUMULATE_FLOAT64 = False
    try:
        return call()
    finally:
        triton_ops.ACCUMULATE_FLOAT64 = True


CALLS = {
    "vi_simsiam power spherical D=2048, fused gradient": lambda: triton_ops.spherical_nll_forward(
        [_cpu((512, 2048)), _cpu((512, 2048))], [_cpu((512, 2048)), _cpu((512, 2048))],
        [torch.rand(512), torch.rand(512)], 2, 1.0 / 1024, True, False),
    "vmf D=2048 bfloat16, both gradients": lambda: triton_ops.spherical_nll_forward(
        [_cpu((64, 2048), torch.bfloat16)], [_cpu((64, 2048), torch.bfloat16)], [torch.rand(64)], 1, 1.0, True, True),
    "float32 accumulation option, D=2048": lambda: _with_float32_accumulation(lambda: triton_ops.spherical_nll_forward(
        [_cpu((512, 2048))], [_cpu((512, 2048))], [torch.rand(512)], 2, 1.0 / 512, True, False)),
    "cosine D=128 (rows packed per program)": lambda: triton_ops.spherical_nll_forward(
        [_cpu((4096, 128))], [_cpu((4096, 128))], [], 0),
    "power spherical D=20000 float64 (several blocks)": lambda: triton_ops.spherical_nll_forward(
        [_cpu((8, 20000), torch.float64)], [_cpu((8, 20000), torch.float64)], [torch.rand(8, dtype=torch.float64)], 2,
        0.5, True, False),
    "vmf D=33 (Olver shift), float16": lambda: triton_ops.spherical_nll_forward(
        [_cpu((8, 33), torch.float16)], [_cpu((8, 33), torch.float16)], [torch.rand(8)], 1),
    "scaled_row_combination two views": lambda: triton_ops.scaled_row_combination_forward(
        torch.rand(1024), torch.rand(1024, dtype=torch.float64), torch.rand(1024, dtype=torch.float64),
        [_cpu((512, 2048)), _cpu((512, 2048))], [_cpu((512, 2048)), _cpu((512, 2048))]),
    "rescale_rows_ two views": lambda: triton_ops.rescale_rows_(
        [_cpu((512, 2048)), _cpu((512, 2048))], [], torch.rand(1024, dtype=torch.float64), torch.rand(1024)),
    "normalizer_quantity vmf d2log d=2048": lambda: triton_ops.normalizer_quantity_forward(torch.rand(100), 2048, 1, 2),
    "normalizer_quantity power spherical KL d=3": lambda: triton_ops.normalizer_quantity_forward(torch.rand(100), 3, 2, 4),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CALLS))
def test_launches_compile_for_sm80_and_sm90_without_spills(captured, case):
    CALLS[case]()
    assert captured, "the launcher made no launch"
    for fn, args, kwargs in captured:
        for target in TARGETS:
            registers, spilled = _compile(fn, args, kwargs, target)
            assert spilled == 0, f"{fn.__name__} sm_{target.arch}: {registers} registers, {spilled} bytes spilled"
