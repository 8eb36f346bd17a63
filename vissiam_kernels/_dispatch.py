"""The one place that picks which implementation runs.

``VISSIAM_BACKEND`` = ``auto`` (default) | ``cpu`` | ``cuda`` | ``triton`` | ``reference``.

- ``cpu``: the C++ kernels (csrc/cpu), CPU tensors.
- ``cuda``: the CUDA C++ kernels (csrc/cuda), CUDA tensors.
- ``triton``: the Triton kernels, CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``).
- ``reference``: the pure-PyTorch reference, any device.

``auto`` takes the first available compiled backend for the tensors' device
(``AUTO_ORDER``) and falls back to the reference with a one-time warning; a
backend named explicitly that cannot run is an error (BackendUnavailableError).
``last_backend()`` tells tests which implementation served the most recent call.
The decision is cached per (VISSIAM_BACKEND, device type): a call costs one dict lookup.
The C++ backends (``CXX_BACKENDS``) serve the public losses through the op
``vissiam_kernels::spherical_loss``; Triton and the reference through ``_composed``.
"""

from __future__ import annotations

import importlib
import os
import warnings

import torch

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
CXX_BACKENDS = ("cpu", "cuda")

# Which compiled backends serve which device type, in auto's order of preference. On CUDA,
# Triton comes first because its training path moves 3S per step (read p, z; write grad_p) where
# the CUDA C++ backend's op-schema path moves 5S; neither has been timed on a GPU yet, and
# bench/gpu_check.sh measures both side by side: put the faster first once it has run.
AUTO_ORDER = {"cpu": ("cpu",), "cuda": ("triton", "cuda")}

# Where each compiled backend lives: module whose load() makes its ops available
# (raising if it cannot), and the torch.ops namespace of those ops.
_BACKEND_MODULES = {
    "cpu": ("vissiam_kernels._extension", "load_cpu_library", "vissiam_kernels"),
    "cuda": ("vissiam_kernels._cuda_extension", "load", "vissiam_kernels"),
    "triton": ("vissiam_kernels.triton_ops", "load", "vissiam_triton"),
}

# Device types each compiled backend accepts (the Triton interpreter runs CPU tensors).
_BACKEND_DEVICES = {"cpu": ("cpu",), "cuda": ("cuda",), "triton": ("cuda", "cpu")}

_state = {"last": None, "warned": set(), "available": set()}
_decided: dict[tuple[str | None, str], str] = {}  # (VISSIAM_BACKEND, device type) -> backend


class BackendUnavailableError(RuntimeError):
    """The backend asked for through VISSIAM_BACKEND cannot run here."""


def requested_backend() -> str:
    name = os.environ.get("VISSIAM_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"VISSIAM_BACKEND must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name


def op_namespace(backend: str):
    """``torch.ops.<namespace>`` holding ``backend``'s implementation of the ops."""
    return getattr(torch.ops, _BACKEND_MODULES[backend][2])


def availability_error(backend: str) -> Exception | None:
    """None if ``backend`` loads (building it on first use), else the reason it cannot."""
    if backend in _state["available"]:  # loaded once: no import machinery on every call
        return None
    module_name, loader, _ = _BACKEND_MODULES[backend]
    try:
        getattr(importlib.import_module(module_name), loader)()
    except Exception as error:  # a missing compiler or toolkit: report it, never crash the caller
        return error
    _state["available"].add(backend)
    return None


def _select(device_type: str) -> str:
    requested = requested_backend()
    if requested == "reference":
        return "reference"
    if requested != "auto":
        if device_type not in _BACKEND_DEVICES[requested]:
            raise BackendUnavailableError(
                f"VISSIAM_BACKEND={requested} runs on {' or '.join(_BACKEND_DEVICES[requested])} tensors; "
                f"got {device_type} tensors"
            )
        error = availability_error(requested)
        if error is not None:
            raise BackendUnavailableError(f"VISSIAM_BACKEND={requested} cannot run here: {error}")
        return requested
    reasons = []
    for backend in AUTO_ORDER.get(device_type, ()):
        error = availability_error(backend)
        if error is None:
            return backend
        reasons.append(f"{backend}: {error}")
    if device_type not in _state["warned"]:
        _state["warned"].add(device_type)
        why = "; ".join(reasons) or f"no compiled kernels for {device_type} tensors"
        warnings.warn(f"vissiam_kernels: using the pure-PyTorch reference ({why})", RuntimeWarning, stacklevel=4)
    return "reference"


@torch.compiler.assume_constant_result
def _select_for_compile(device_type: str) -> str:
    return _select(device_type)


def select_backend(device: torch.device) -> str:
    """The backend for tensors on ``device``. Under ``torch.compile`` it is chosen once, at tracing."""
    if torch.compiler.is_compiling():
        return _select_for_compile(device.type)
    key = (os.environ.get("VISSIAM_BACKEND"), device.type)
    backend = _decided.get(key)
    if backend is None:
        backend = _select(device.type)
        if backend != "reference" or requested_backend() == "reference":  # a fallback is retried next time
            _decided[key] = backend
    _state["last"] = backend
    return backend


_LOSS_OP = []


def spherical_loss_op():
    """``torch.ops.vissiam_kernels.spherical_loss.default``, looked up once (an attribute chain and an
    overload resolution per call otherwise)."""
    if not _LOSS_OP:
        _LOSS_OP.append(torch.ops.vissiam_kernels.spherical_loss.default)
    return _LOSS_OP[0]


def last_backend() -> str | None:
    """The backend that served the most recent eager call (None before the first)."""
    return _state["last"]
