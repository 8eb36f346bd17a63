"""Builds (once, cached) and loads the compiled kernels.

The C++ sources are compiled on first use with ninja through
``torch.utils.cpp_extension.load`` and cached per torch and Python version, so
``pip install -e .`` needs no compiler step and the library always matches the
torch it runs with. Set ``VISSIAM_BUILD_DIR`` to move the cache.

``VISSIAM_SANITIZE=address,undefined`` (a ``-fsanitize=`` list) builds the CPU
library instrumented, with ``-O1 -g -fno-omit-frame-pointer``, under its own
cache name so sanitized and normal builds never mix. Only for .ci/sanitize.sh:
the sanitizer runtime must be preloaded into Python (LD_PRELOAD) to load it.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import torch

_PACKAGE_DIR = Path(__file__).resolve().parent


def source_dir() -> Path:
    """The C++ sources: ``csrc/`` beside the package in a checkout, ``_csrc/`` inside an install."""
    for candidate in (_PACKAGE_DIR / "_csrc", _PACKAGE_DIR.parent / "csrc"):
        if (candidate / "ops.cpp").is_file():
            return candidate
    raise RuntimeError(f"vissiam_kernels: C++ sources not found next to {_PACKAGE_DIR}")


def build_root() -> Path:
    default = Path.home() / ".cache" / "vissiam_kernels"
    base = Path(os.environ.get("VISSIAM_BUILD_DIR", default))
    tag = f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info.major}{sys.version_info.minor}"
    return base / tag


def _log(message: str) -> None:
    print(f"vissiam_kernels: {message}", file=sys.stderr, flush=True)


def import_cpp_extension():
    """``torch.utils.cpp_extension``, imported without its warning "No CUDA runtime is found, using
    CUDA_HOME=...": the module guesses CUDA_HOME when it is imported and warns on every machine
    without a GPU, though nothing here needs CUDA unless a CUDA tensor is passed (and on a machine
    that has one, there is no warning to hide)."""
    import logging

    if "torch.utils.cpp_extension" in sys.modules:
        return sys.modules["torch.utils.cpp_extension"]
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


@functools.cache
def load_cpu_library() -> None:
    """Compile (first use only) and load the CPU kernels; registers ``torch.ops.vissiam_kernels``."""
    cpp_extension = import_cpp_extension()
    src = source_dir()
    name = "vissiam_kernels_cpu"
    cflags, ldflags = ["-O3", "-fno-math-errno", "-fopenmp"], ["-fopenmp"]
    sanitize = os.environ.get("VISSIAM_SANITIZE", "").strip()
    if sanitize:  # see the module docstring; the name keeps this build apart from the normal one
        name += "_san_" + "".join(ch if ch.isalnum() else "_" for ch in sanitize)
        flags = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-g"]
        cflags, ldflags = ["-O1", "-fno-math-errno", "-fopenmp", *flags], ["-fopenmp", *flags]
    build_dir = build_root() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    if not (build_dir / f"{name}.so").exists():
        _log(f"compiling the CPU kernels (first use, about a minute) into {build_dir}")
    cpp_extension.load(
        name=name,
        sources=[str(src / "ops.cpp"), str(src / "loss_autograd.cpp"), str(src / "cpu" / "spherical_ops_cpu.cpp"),
                 str(src / "cpu" / "sphere_sampling_cpu.cpp"), str(src / "cpu" / "angle_law_cpu.cpp")],
        extra_include_paths=[str(src / "include")],
        # -fopenmp: at::parallel_for is inline OpenMP in the ATen headers; without it rows run serially
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=os.environ.get("VISSIAM_VERBOSE_BUILD") == "1",
    )
    from . import _ops

    _ops.register_fake_kernels("vissiam_kernels")
    _ops.register_autograd("vissiam_kernels")

