"""Builds (first use, cached) and loads the CUDA C++ kernels of csrc/cuda.

The CUDA library only adds ``TORCH_LIBRARY_IMPL(vissiam_kernels, CUDA, m)``: the
op schemas, fake kernels and autograd come with the CPU library, which
``load()`` loads first. Like the CPU library it is compiled with ninja through
``torch.utils.cpp_extension.load`` and cached under ``_extension.build_root()``,
one cache per architecture list.

Build knobs (environment variables, read when the library is built):

- ``VISSIAM_NO_CUDA=1``: never build or load the CUDA kernels; ``load()`` raises.
- ``VISSIAM_FORCE_CUDA=1``: build even where no GPU is visible (CI compiles the
  kernels this way; ``build()`` does it without the variable).
- ``TORCH_CUDA_ARCH_LIST``: target architectures, e.g. ``"9.0"`` or
  ``"8.0;9.0+PTX"``. Default: sm_80 and sm_90 plus every visible GPU's, with PTX
  of the newest so that later GPUs run through the driver's JIT.
- ``CUDA_HOME`` / ``CUDA_PATH``: the CUDA toolkit (``bin/nvcc``,
  ``include/cuda_runtime.h``). Unset, it is looked for next to ``nvcc`` on the
  PATH and in /usr/local/cuda (a wrapper script named nvcc on the PATH makes
  torch's own guess wrong).
- ``MAX_JOBS``: parallel compile jobs (also caps nvcc's per-architecture threads).
- ``VISSIAM_VERBOSE_BUILD=1``: show the compiler command lines.

Anything missing (no toolkit, a CPU-only torch, no GPU, a compile error) is a
``CudaExtensionUnavailable`` with the reason, never a crash; the dispatcher then
reports it or, under ``VISSIAM_BACKEND=auto``, falls back.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path

import torch

from . import _extension

LIBRARY_NAME = "vissiam_kernels_cuda"

DEFAULT_ARCHS = ("8.0", "9.0")
"""Always built unless TORCH_CUDA_ARCH_LIST says otherwise: A100 and H100/H200."""

_ARCH_PATTERN = re.compile(r"^(\d+)\.(\d+)([af]?)(\+PTX)?$")


class CudaExtensionUnavailable(RuntimeError):
    """The CUDA kernels cannot be built or loaded here; the message says why."""


class CudaToolkitMissing(CudaExtensionUnavailable):
    """No CUDA toolkit (nvcc) to compile the kernels with."""


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------- architectures
def arch_list() -> list[str]:
    """Architectures to build, as ``TORCH_CUDA_ARCH_LIST`` entries ("8.0", "9.0a", "9.0+PTX")."""
    requested = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if requested and requested != "native":
        return [entry for entry in re.split(r"[;,\s]+", requested) if entry]
    archs = list(DEFAULT_ARCHS)
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            if f"{major}.{minor}" not in archs:
                archs.append(f"{major}.{minor}")
    archs.sort(key=lambda a: tuple(int(x) for x in a.split(".")))
    archs[-1] += "+PTX"
    return archs


def gencode_flags(archs: list[str]) -> list[str]:
    """nvcc ``-gencode`` flags for ``archs`` (TORCH_CUDA_ARCH_LIST syntax)."""
    flags = []
    for entry in archs:
        match = _ARCH_PATTERN.match(entry)
        if match is None:
            raise CudaExtensionUnavailable(
                f"TORCH_CUDA_ARCH_LIST entry {entry!r} is not of the form MAJOR.MINOR, MAJOR.MINORa or "
                f"MAJOR.MINOR+PTX (for example '8.0;9.0+PTX')"
            )
        major, minor, suffix, ptx = match.groups()
        code = f"{major}{minor}{suffix}"
        flags.append(f"-gencode=arch=compute_{code},code=sm_{code}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{code},code=compute_{code}")
    return flags


def _arch_tag(archs: list[str]) -> str:
    return "_".join("sm" + entry.replace(".", "").replace("+PTX", "ptx") for entry in archs)


# ---------------------------------------------------------------- toolkit
def _is_toolkit(root: str | os.PathLike | None) -> bool:
    return bool(root) and (Path(root) / "bin" / "nvcc").is_file() and (
        Path(root) / "include" / "cuda_runtime.h"
    ).is_file()


def find_cuda_toolkit() -> Path:
    """The CUDA toolkit root to compile with; makes torch.utils.cpp_extension use it too."""
    cpp_extension = _extension.import_cpp_extension()

    for variable in ("CUDA_HOME", "CUDA_PATH"):
        explicit = os.environ.get(variable)
        if explicit:
            if not _is_toolkit(explicit):
                raise CudaToolkitMissing(
                    f"{variable}={explicit} is not a CUDA toolkit (needs bin/nvcc and include/cuda_runtime.h)"
                )
            root = Path(explicit)
            break
    else:
        nvcc = shutil.which("nvcc")
        candidates = [cpp_extension.CUDA_HOME, "/usr/local/cuda"]
        if nvcc:
            candidates.insert(1, Path(os.path.realpath(nvcc)).parent.parent)
        root = next((Path(c) for c in candidates if _is_toolkit(c)), None)
        if root is None:
            raise CudaToolkitMissing(
                "no CUDA toolkit found: nvcc is "
                + (f"at {nvcc} but no toolkit surrounds it" if nvcc else "not on the PATH")
                + "; install the CUDA toolkit matching torch's CUDA "
                f"{torch.version.cuda} and set CUDA_HOME (or set VISSIAM_NO_CUDA=1 to skip the CUDA kernels)"
            )
    # torch guesses CUDA_HOME once, at import; the build and link lines read this global.
    if cpp_extension.CUDA_HOME is None or Path(cpp_extension.CUDA_HOME).resolve() != root.resolve():
        cpp_extension.CUDA_HOME = str(root)
    return root


# ---------------------------------------------------------------- build and load
_lock = threading.Lock()
_state: dict = {"built": None, "error": None}


def build(archs: list[str] | None = None) -> Path:
    """Compile (unless cached) and load the CUDA library; no GPU needed. Returns its build directory.

    ``archs`` defaults to ``arch_list()``. The CPU library (schemas, fake kernels,
    autograd) is loaded first. Raises ``CudaExtensionUnavailable`` with the reason
    (no toolkit, CPU-only torch, compile error). A process loads one CUDA library:
    later calls return the first one's directory.
    """
    with _lock:
        if _state["built"] is not None:
            return _state["built"]
        _extension.load_cpu_library()
        if torch.version.cuda is None:
            raise CudaExtensionUnavailable(
                f"this torch ({torch.__version__}) is a CPU-only build; the CUDA kernels need a CUDA build of torch"
            )
        archs = list(archs) if archs is not None else arch_list()
        flags = gencode_flags(archs)
        find_cuda_toolkit()
        cpp_extension = _extension.import_cpp_extension()

        src = _extension.source_dir()
        build_dir = _extension.build_root() / f"{LIBRARY_NAME}_{_arch_tag(archs)}"
        build_dir.mkdir(parents=True, exist_ok=True)
        if not (build_dir / f"{LIBRARY_NAME}.so").exists():
            _extension._log(
                f"compiling the CUDA kernels for {', '.join(archs)} (first use, a few minutes per "
                f"architecture) into {build_dir}"
            )
        jobs = int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1)
        nvcc_threads = max(1, min(len(flags), jobs))
        try:
            cpp_extension.load(
                name=LIBRARY_NAME,
                sources=[str(path) for path in sorted((src / "cuda").glob("*.cu"))],
                extra_include_paths=[str(src / "include")],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3", f"--threads={nvcc_threads}", *flags],
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=_flag("VISSIAM_VERBOSE_BUILD"),
            )
        except Exception as error:  # compiler or toolkit failure: report it with the compiler's output
            raise CudaExtensionUnavailable(f"building the CUDA kernels failed: {error}") from error
        _state["built"] = build_dir
        return build_dir


def load() -> None:
    """Make the CUDA implementations of the vissiam_kernels ops available, building them on first use.

    Called by the dispatcher for ``VISSIAM_BACKEND=cuda`` (and ``auto`` on CUDA
    tensors). Raises ``CudaExtensionUnavailable`` with the reason when it cannot;
    a failed build is not retried in the same process.
    """
    if _flag("VISSIAM_NO_CUDA"):
        raise CudaExtensionUnavailable("the CUDA kernels are switched off (VISSIAM_NO_CUDA=1)")
    if _state["built"] is not None:
        return
    _extension.load_cpu_library()  # the op schemas, fake kernels and autograd, for every backend
    if _state["error"] is not None:
        kind, message = _state["error"]
        raise kind(message)
    if not _flag("VISSIAM_FORCE_CUDA") and not torch.cuda.is_available():
        raise CudaExtensionUnavailable(
            "no CUDA device is visible (torch.cuda.is_available() is False); "
            "set VISSIAM_FORCE_CUDA=1 to compile the CUDA kernels anyway"
        )
    try:
        build()
    except CudaExtensionUnavailable as error:
        _state["error"] = (type(error), str(error))
        raise


def has_cuda_kernels() -> bool:
    """Whether the loaded libraries registered CUDA kernels for every op of the namespace."""
    return all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"vissiam_kernels::{op}", "CUDA")
        for op in ("spherical_nll", "scaled_row_combination", "normalizer_quantity")
    )
