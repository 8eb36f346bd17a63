"""The sampling transform x = H [t, s v] (see sampling_reference.py), through the backend that
``_dispatch`` picks, with autograd and fake kernels for ``torch.compile``.

Backends (``VISSIAM_BACKEND``, ``last_backend()`` tells which ran):

- ``cpu``: the op ``vissiam_kernels::sphere_sample_transform`` (csrc/cpu/sphere_sampling_cpu.cpp);
- ``triton``: ``vissiam_triton::sphere_sample_transform`` (vissiam_kernels/triton_sampling.py);
- ``cuda``: the CUDA C++ library has no kernel of this op; its CUDA implementation is the Triton one,
  so ``cuda`` runs ``triton`` where Triton loads, else the reference (one warning);
- ``reference``: ``sampling_reference.householder_transform``.

Both compiled ops share one backward op (same schema in both namespaces), whose equations are
derived at the top of csrc/cpu/sphere_sampling_cpu.cpp; it returns gradients for loc, t and s, none
for the noise (a draw). Inputs are checked on every backend with the same messages: loc (N, D),
D >= 2, floating; t, s (N,) float64; noise (N, D - 1) in loc's dtype, all on loc's device.
"""

from __future__ import annotations

import functools
import warnings

import torch

from . import _dispatch
from .sampling_reference import householder_transform

FORWARD_SCHEMA = "(Tensor loc, Tensor t, Tensor s, Tensor noise) -> Tensor"
BACKWARD_SCHEMA = "(Tensor grad_x, Tensor loc, Tensor t, Tensor s, Tensor noise) -> (Tensor, Tensor, Tensor)"
_NAMESPACES = {"cpu": "vissiam_kernels", "triton": "vissiam_triton"}


def sphere_transform(loc: torch.Tensor, t: torch.Tensor, s: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """loc (N, D); t, s (N,) float64 cosine and sine of the angle to the mean; noise (N, D-1) standard
    normal in loc's dtype -> x (N, D) in loc's dtype, differentiable in loc, t, s (not in noise)."""
    backend = _transform_backend(loc.device)
    if backend == "reference":
        check_transform_inputs(loc, t, s, noise)
        return householder_transform(loc, t, s, noise)
    # The op checks the rest; a tensor on another device would route the call to that device's kernel.
    check_devices(loc, t, s, noise)
    return _forward_op(backend)(loc, t, s, noise)


# ---------------------------------------------------------------- backend choice
def _transform_backend(device: torch.device) -> str:
    backend = _dispatch.select_backend(device)
    if backend in ("cpu", "reference"):
        if backend == "cpu":
            _prepare_cpu()
        return backend
    resolved = _resolve_compiled(backend)
    if resolved != backend and not torch.compiler.is_compiling():
        _dispatch._state["last"] = resolved  # what ran, for last_backend()
    return resolved


@torch.compiler.assume_constant_result
def _prepare_cpu() -> bool:
    # Run (not traced) under torch.compile: the fake kernel and autograd of the C++ op exist before
    # the op is first traced.
    register_transform_fake("vissiam_kernels")
    register_transform_autograd("vissiam_kernels")
    return True


_WARNED = set()
_TRITON_LOADED = []


@torch.compiler.assume_constant_result
def _resolve_compiled(backend: str) -> str:
    """"triton" or "cuda" -> the backend that runs the transform: "triton" where it loads, else the
    reference with a one-time warning (as _dispatch falls back)."""
    if _TRITON_LOADED:
        return "triton"
    try:
        from . import triton_sampling

        triton_sampling.load()
        _TRITON_LOADED.append(True)
    except Exception as error:  # no triton, or no device for it: report it, never crash the caller
        if backend == "triton":  # named explicitly (or chosen by auto): it loaded for the losses
            raise _dispatch.BackendUnavailableError(f"VISSIAM_BACKEND=triton cannot run here: {error}") from error
        if backend not in _WARNED:
            _WARNED.add(backend)
            warnings.warn(
                f"vissiam_kernels: the sampling transform has no CUDA C++ kernel and its Triton kernel cannot run "
                f"({error}); using the pure-PyTorch reference",
                RuntimeWarning,
                stacklevel=5,
            )
        return "reference"
    return "triton"


def _forward_op(backend: str):
    return getattr(torch.ops, _NAMESPACES[backend]).sphere_sample_transform.default


# ---------------------------------------------------------------- checks (the C++ entry's messages)
def check_transform_inputs(loc, t, s, noise, grad_x=None) -> None:
    """ValueError / TypeError naming the argument, as csrc/cpu/sphere_sampling_cpu.cpp words them."""
    if loc.dim() != 2 or loc.shape[1] < 2:
        raise ValueError(f"loc must have shape (N, D) with D >= 2; got {list(loc.shape)}")
    if not loc.is_floating_point():
        raise TypeError(f"loc must be a floating point tensor; got {loc.dtype}")
    rows, dim = loc.shape
    check_devices(loc, t, s, noise, grad_x)
    for name, tensor in (("t", t), ("s", s)):
        if tensor.dim() != 1 or tensor.shape[0] != rows:
            raise ValueError(f"{name} must have shape ({rows},) (one per row of loc); got {list(tensor.shape)}")
        if tensor.dtype != torch.float64:
            raise TypeError(f"{name} must be a float64 tensor; got {tensor.dtype}")
    if noise.dim() != 2 or noise.shape[0] != rows or noise.shape[1] != dim - 1:
        raise ValueError(
            f"noise must have shape ({rows}, {dim - 1}) (loc's rows, D - 1 columns); got {list(noise.shape)}"
        )
    if noise.dtype != loc.dtype:
        raise TypeError(f"noise must have loc's dtype {loc.dtype}; got {noise.dtype}")
    if grad_x is not None:
        if grad_x.shape != loc.shape:
            raise ValueError(f"grad_x must have loc's shape {list(loc.shape)}; got {list(grad_x.shape)}")
        if grad_x.dtype != loc.dtype:
            raise TypeError(f"grad_x must have loc's dtype {loc.dtype}; got {grad_x.dtype}")


def check_devices(loc, t, s, noise, grad_x=None) -> None:
    """Every input on loc's device (ValueError naming the first that is not)."""
    device = loc.device
    for name, tensor in (("t", t), ("s", s), ("noise", noise), ("grad_x", grad_x)):
        if tensor is not None and tensor.device != device:
            raise ValueError(f"{name} must be on {device} (the device of the other inputs); got {tensor.device}")


# ---------------------------------------------------------------- fake kernels and autograd
def _forward_fake(loc, t, s, noise):
    check_transform_inputs(loc, t, s, noise)  # shapes and dtypes known while tracing: the C++ messages
    return loc.new_empty(loc.shape)


def _backward_fake(grad_x, loc, t, s, noise):
    check_transform_inputs(loc, t, s, noise, grad_x)
    rows = loc.shape[0]
    return loc.new_empty(loc.shape), loc.new_empty((rows,), dtype=torch.float64), loc.new_empty(
        (rows,), dtype=torch.float64)


@functools.cache
def register_transform_fake(namespace: str) -> None:
    """Output shapes of the C++ ops for torch.compile (the Triton ops, made with triton_op, trace
    their launcher instead)."""
    torch.library.register_fake(f"{namespace}::sphere_sample_transform")(_forward_fake)
    torch.library.register_fake(f"{namespace}::sphere_sample_transform_backward")(_backward_fake)


def _setup_context(ctx, inputs, output):
    loc, t, s, noise = inputs
    ctx.save_for_backward(loc, t, s, noise)


def _backward(backward_op, ctx, grad_x):
    loc, t, s, noise = ctx.saved_tensors
    needs_loc, needs_t, needs_s = ctx.needs_input_grad[:3]
    if not (needs_loc or needs_t or needs_s):
        return None, None, None, None
    grad_loc, grad_t, grad_s = backward_op(grad_x.to(loc.dtype), loc, t, s, noise)
    return grad_loc if needs_loc else None, grad_t if needs_t else None, grad_s if needs_s else None, None


@functools.cache
def register_transform_autograd(namespace: str) -> None:
    """Gradients of ``namespace::sphere_sample_transform`` through ``namespace::sphere_sample_transform_backward``."""
    backward_op = getattr(torch.ops, namespace).sphere_sample_transform_backward.default
    torch.library.register_autograd(
        f"{namespace}::sphere_sample_transform",
        functools.partial(_backward, backward_op),
        setup_context=_setup_context,
    )
