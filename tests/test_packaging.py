"""Packaging: a non-editable install ships the C++ sources and finds them, and the class lists."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_kernel_sources_and_the_installed_package_finds_them(tmp_path):
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)]
    if importlib.util.find_spec("setuptools") is not None:
        command.insert(4, "--no-build-isolation")
    subprocess.run(command, check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("vissiam_kernels-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for source in ("ops.cpp", "cpu/spherical_ops_cpu.cpp", "cpu/row_streams.h", "cpu/row_streams_body.inc",
                   "cpu/sphere_sampling_cpu.cpp", "cpu/sphere_sampling_rows.inc", "cpu/angle_law_cpu.cpp",
                   "include/vissiam/angle_law.h",
                   "include/vissiam/special_functions.h",
                   "include/vissiam/spherical_math.h"):
        assert f"vissiam_kernels/_csrc/{source}" in names, source
    assert "vi_simsiam/__init__.py" in names
    for class_list in ("imagenet100", "imagenette", "imagewoof"):  # read by data.read_class_list
        assert f"vi_simsiam/class_lists/{class_list}.txt" in names, class_list
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    found = subprocess.run(
        [sys.executable, "-c", "from vissiam_kernels._extension import source_dir; print(source_dir())"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    ).stdout.strip()
    assert Path(found) == site / "vissiam_kernels" / "_csrc"
    read_list = "import vi_simsiam.data as d; print(d.CLASS_LISTS, len(d.read_class_list('imagenet100')[0]))"
    listed = subprocess.run(
        [sys.executable, "-c", read_list],
        check=True, capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    ).stdout.split()
    assert listed == [str(site / "vi_simsiam" / "class_lists"), "100"]
