"""The lane-parallel row math (csrc/include/vissiam/row_math_lanes.h, vector_math.h) against the scalar header.

Builds tests/row_math_lanes_check.cpp with g++ for the default target and -march=x86-64-v3 (and
-march=x86-64-v4, run only where the CPU has AVX-512F, else compiled only) and runs it: it checks the
vector log/log1p/exp/expm1 to < 1 ulp, row_loss_lanes against row_loss over a grid of families, dims,
kappas and cosines at every vector width the CPU has, and both against the mpmath golden table.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "row_math_lanes_check.cpp"
GOLDEN = ROOT / "tests" / "data" / "golden_normalizers.csv"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_row_math_lanes_match_the_scalar_header(tmp_path):
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ not found")
    x86 = platform.machine() in ("x86_64", "AMD64")
    flags = _cpu_flags()
    # (name, -march flags, run it?)
    builds = [("default", [], True)]
    if x86:
        builds.append(("x86-64-v3", ["-march=x86-64-v3"], {"avx2", "fma", "bmi2"} <= flags))
        builds.append(("x86-64-v4", ["-march=x86-64-v4"], {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= flags))
    # The builds are independent: compile them side by side (~8 s of CPU each).
    compiles = {}
    for name, march, _ in builds:
        binary = tmp_path / f"row_math_lanes_check_{name}"
        command = [compiler, "-O2", "-std=c++17", "-Wno-psabi", *march, "-I", str(ROOT / "csrc" / "include"),
                   str(SOURCE), "-o", str(binary)]
        compiles[name] = (binary, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for name, march, run in builds:
        binary, process = compiles[name]
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"{name} build failed:\n{output}"
        if not run:
            continue
        result = subprocess.run([str(binary), "--quick", "--golden", str(GOLDEN)], capture_output=True, text=True,
                                timeout=300)
        print(f"--- {name} ---\n{result.stdout}")
        assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
        assert "all checks passed" in result.stdout
