"""The GPU collector modules keep their ``gpu`` marker, checked without a GPU.

tests/test_triton_gpu.py and tests/test_fuzz_gpu.py collect the cases of tests/triton_cases.py and
tests/accelerated_fuzz_cases.py with a star import, which also imports the cases module's own
``pytestmark`` and so replaced the collector's: on a GPU machine, bench/gpu_check.sh's
``pytest -m gpu`` would have deselected every Triton case and every GPU fuzz case. Found while
adding the GPU fuzz stage; here each collector is imported as it would be on a GPU machine
(torch.cuda.is_available patched to True; no kernel runs at import) and its marks are read.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent

pytest.importorskip("triton", reason="the collectors import the Triton cases")


@pytest.mark.parametrize("collector, cases", [("test_triton_gpu", "triton_cases"),
                                              ("test_fuzz_gpu", "accelerated_fuzz_cases")])
def test_gpu_collectors_keep_the_gpu_marker(monkeypatch, collector, cases):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    spec = importlib.util.spec_from_file_location(f"_gpu_collector_probe_{collector}", TESTS / f"{collector}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    marks = module.pytestmark if isinstance(module.pytestmark, list) else [module.pytestmark]
    names = [mark.name for mark in marks]
    assert "gpu" in names, f"{collector}: module marks {names} lost the gpu marker"
    assert "filterwarnings" in names, f"{collector}: the cases module's own marks were dropped: {names}"
    every_case = {name for name in vars(sys.modules[cases]) if name.startswith("test_")}
    collected = {name for name in vars(module) if name.startswith("test_")}
    assert every_case and every_case <= collected, f"{collector} misses {sorted(every_case - collected)}"
