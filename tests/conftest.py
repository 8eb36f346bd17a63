"""Shared fixtures of the kernel tests: backend selection and the mpmath golden table."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pytest
import torch

import vissiam_kernels as vk

GOLDEN_TABLE = Path(__file__).parent / "data" / "golden_normalizers.csv"


def pytest_configure(config):
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """Without a CUDA device the tests marked ``gpu`` are deselected (one line says how many), not
    skipped one by one; bench/gpu_check.sh runs them on a GPU machine."""
    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
        config.hook.pytest_deselected(items=gpu)
        config._vissiam_gpu_deselected = len(gpu)


# Marks of the modules that collect the shared cases on CUDA tensors (tests/test_triton_gpu.py,
# tests/test_fuzz_gpu.py): deselected without CUDA, and not under the Triton interpreter.
GPU_COLLECTOR_MARKS = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="runs compiled kernels, not the interpreter"),
]


def pytest_report_header(config):
    if not torch.cuda.is_available():
        return "vissiam-kernels: no CUDA device; tests marked gpu are deselected (bench/gpu_check.sh runs them)"


@pytest.fixture
def use_backend(monkeypatch):
    """``use_backend("cpu")`` sets VISSIAM_BACKEND for the test; returns a checker of the backend that ran."""

    def select(name: str):
        monkeypatch.setenv("VISSIAM_BACKEND", name)

        def assert_ran():
            assert vk.last_backend() == name, f"expected backend {name!r}, ran {vk.last_backend()!r}"

        return assert_ran

    return select


def load_golden_rows() -> list[dict]:
    """Rows of tests/data/golden_normalizers.csv with floats parsed (empty cells -> None)."""
    rows = []
    with open(GOLDEN_TABLE, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed = {"family": row["family"], "dim": int(row["dim"])}
            for key, value in row.items():
                if key not in parsed:
                    parsed[key] = None if value in ("", None) else float(value)
            rows.append(parsed)
    return rows


def relative_to_scale(error: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """|error| / max(1, |exact|): the accuracy measure of the issue's numerics targets."""
    return error.abs() / exact.abs().clamp_min(1.0)


def first_mismatch(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float = 0.0) -> str:
    """A message naming the first index where |actual - expected| > atol + rtol |expected|."""
    bad = ((actual - expected).abs() > atol + rtol * expected.abs()) | (actual.isnan() != expected.isnan())
    if not bool(bad.any()):
        return "no mismatch"
    index = tuple(int(i) for i in bad.nonzero()[0])
    return f"first mismatch at {index}: {actual[index].item()!r} vs {expected[index].item()!r}"


def log_sphere_area(dim: int) -> float:
    return math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)


@pytest.fixture
def restore_torch_globals():
    """In-process runs (vi_simsiam's CLI) set the thread count; put it back for the tests that follow."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
