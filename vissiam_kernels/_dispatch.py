"""The one place that picks which implementation runs.

``VISSIAM_BACKEND`` = ``auto`` (default) | ``cpu`` | ``cuda`` | ``triton`` | ``reference``.
``auto`` takes the compiled kernels for the tensors' device and falls back to the
pure-PyTorch reference with a one-time warning when none is available; a backend
named explicitly that cannot run is an error. ``last_backend()`` tells tests which
implementation served the most recent call.
"""

from __future__ import annotations

import os
import warnings

import torch

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")

_state = {"last": None, "warned": set()}


class BackendUnavailableError(RuntimeError):
    """The backend asked for through VISSIAM_BACKEND cannot run here."""


def requested_backend() -> str:
    name = os.environ.get("VISSIAM_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"VISSIAM_BACKEND must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name


def _cpu_kernels_error() -> Exception | None:
    from . import _extension

    try:
        _extension.load_cpu_library()
    except Exception as error:  # a compiler problem: report it, do not crash the caller
        return error
    return None


def _select(device_type: str) -> str:
    requested = requested_backend()
    if requested == "reference":
        return "reference"
    if requested == "cpu":
        if device_type != "cpu":
            raise BackendUnavailableError(f"VISSIAM_BACKEND=cpu runs on CPU tensors only; got {device_type} tensors")
        error = _cpu_kernels_error()
        if error is not None:
            raise BackendUnavailableError(f"VISSIAM_BACKEND=cpu: the CPU kernels failed to build or load: {error}")
        return "cpu"
    if requested in ("cuda", "triton"):
        raise BackendUnavailableError(
            f"VISSIAM_BACKEND={requested}: the {requested} kernels are not part of this build yet; "
            "use VISSIAM_BACKEND=auto or reference"
        )
    # auto
    if device_type == "cpu":
        error = _cpu_kernels_error()
        if error is None:
            return "cpu"
        reason = f"the CPU kernels failed to build or load ({error})"
    else:
        reason = f"no compiled kernels for {device_type} tensors in this build"
    if device_type not in _state["warned"]:
        _state["warned"].add(device_type)
        warnings.warn(f"vissiam_kernels: {reason}; using the pure-PyTorch reference", RuntimeWarning, stacklevel=3)
    return "reference"


@torch.compiler.assume_constant_result
def _select_for_compile(device_type: str) -> str:
    return _select(device_type)


def select_backend(device: torch.device) -> str:
    """The backend for tensors on ``device``: "cpu" or "reference" (more as they land).

    Under ``torch.compile`` the choice is made once, when the function is traced.
    """
    if torch.compiler.is_compiling():
        return _select_for_compile(device.type)
    backend = _select(device.type)
    _state["last"] = backend
    return backend


def last_backend() -> str | None:
    """The backend that served the most recent eager call (None before the first)."""
    return _state["last"]
