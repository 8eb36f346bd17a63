"""The sampling transform x = H [t, s v] (see sampling_reference.py), through the backend that
``_dispatch`` picks, with autograd and fake kernels for ``torch.compile``.

Backends (``VISSIAM_BACKEND``, ``last_backend()`` tells which ran):

- ``cpu``: the op ``vissiam_kernels::sphere_sample_transform`` (csrc/cpu/sphere_sampling_cpu.cpp);
- ``triton``: ``vissiam_triton::sphere_sample_transform`` (vissiam_kernels/triton_sampling.py);
- ``cuda``: the CUDA C++ library has no kernel of this op; its CUDA implementation is the Triton one,
  so ``cuda`` runs ``triton`` where Triton loads, else the reference (one warning);
- ``reference``: ``sampling_reference.householder_transform``.

``sphere_sample`` (and ``sphere_sample_seeded``, given the seed) is the same transform with the noise
drawn inside the C++ kernel from Philox4x32-10 under a seed (key, offset) that one call on torch's
generator draws: bit for bit reproducible under ``torch.manual_seed``, independent of the thread
count, and no (N, D-1) noise tensor in memory (``sphere_noise`` returns it, for tests and the
reference). Its backward draws the noise again. Backends: ``cpu`` (the op
``vissiam_kernels::sphere_sample_seeded``), ``triton`` (``vissiam_triton::sphere_sample_seeded``: the same
Philox words, Box-Muller in float64, so within float32 rounding of the CPU noise, not bit for bit) and
``reference`` (``sampling_reference.philox_normal``, then the reference transform).

Both compiled ops share one backward op (same schema in both namespaces), whose equations are
derived at the top of csrc/cpu/sphere_sampling_cpu.cpp; it returns gradients for loc, t and s, none
for the noise (a draw). Inputs are checked on every backend with the same messages: loc (N, D),
D >= 2, floating; t, s (N,) float64; noise (N, D - 1) in loc's dtype, all on loc's device.
"""

from __future__ import annotations

import functools
import warnings

import torch

from . import _dispatch, _extension
from .sampling_reference import householder_transform, philox_normal

FORWARD_SCHEMA = "(Tensor loc, Tensor t, Tensor s, Tensor noise) -> Tensor"
SEEDED_SCHEMA = "(Tensor loc, Tensor t, Tensor s, Tensor seed) -> Tensor"
SEEDED_BACKWARD_SCHEMA = "(Tensor grad_x, Tensor loc, Tensor t, Tensor s, Tensor seed) -> (Tensor, Tensor, Tensor)"
SEED_LOW, SEED_HIGH = -(2**63), 2**63 - 1
"""The range of the (key, offset) words drawn from torch's generator (all 64-bit patterns)."""
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


def sphere_sample(loc: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """x = H [t, s v] with v uniform on S^{D-2}, the noise drawn inside the kernel: loc (N, D); t, s (N,)
    float64 -> x (N, D) in loc's dtype, differentiable in loc, t, s.

    One call on torch's generator (``generator``, else the default one of loc's device) draws
    seed = (key, offset), two int64 words; the op then draws the (N, D-1) standard normal noise from
    Philox4x32-10 (``sphere_noise(seed, N, D - 1)`` is that noise), so ``torch.manual_seed``
    reproduces a draw bit for bit, and consecutive calls differ. The backward draws the noise again:
    nothing of size (N, D-1) is kept.
    """
    seed = torch.randint(SEED_LOW, SEED_HIGH, (2,), generator=generator, device=loc.device, dtype=torch.int64)
    return sphere_sample_seeded(loc, t, s, seed)


def sphere_sample_seeded(loc: torch.Tensor, t: torch.Tensor, s: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """``sphere_transform(loc, t, s, sphere_noise(seed, N, D - 1, loc.dtype))`` in one pass: seed (2,) int64
    (key, offset) on loc's device, through the backend's seeded op (see the module docstring)."""
    backend = _transform_backend(loc.device)
    if backend != "reference":
        check_devices(loc, t, s, seed, names=("t", "s", "seed", "grad_x"))
        return getattr(torch.ops, _NAMESPACES[backend]).sphere_sample_seeded.default(loc, t, s, seed)
    check_seeded_inputs(loc, t, s, seed)  # pure PyTorch: the float64 noise rounded to loc's dtype
    return householder_transform(loc, t, s, sphere_noise(seed, loc.shape[0], loc.shape[1] - 1, loc.dtype))


def sphere_noise(seed: torch.Tensor, rows: int, cols: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The standard normal noise (rows, cols) in ``dtype`` that the seeded sampler draws under seed (2,)
    int64 = (key, offset), on seed's device (csrc/cpu/philox_normal.inc gives the law of each element).
    Drawn by the CPU op (``last_backend()`` says "cpu"; a seed on another device is drawn on the CPU and
    moved), or with VISSIAM_BACKEND=reference by ``sampling_reference.philox_normal`` (float64, rounded
    to ``dtype``: within float32 rounding of the op's)."""
    if _transform_backend(seed.device) == "reference":
        return philox_normal(seed, rows, cols).to(device=seed.device, dtype=dtype)
    _extension.load_cpu_library()
    _prepare_cpu()
    _dispatch._state["last"] = "cpu"
    return torch.ops.vissiam_kernels.sphere_sample_noise(seed.cpu(), rows, cols, dtype).to(seed.device)


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


def check_seeded_inputs(loc, t, s, seed, grad_x=None) -> None:
    """The checks of the seeded op (csrc/cpu/sphere_sampling_cpu.cpp's messages): loc, t, s as above;
    seed (2,) int64 on loc's device; fewer than 2^32 rows."""
    if loc.dim() != 2 or loc.shape[1] < 2:
        raise ValueError(f"loc must have shape (N, D) with D >= 2; got {list(loc.shape)}")
    check_transform_inputs(loc, t, s, loc.new_empty((loc.shape[0], loc.shape[1] - 1)), grad_x)
    check_devices(loc, t, s, seed, grad_x, names=("t", "s", "seed", "grad_x"))
    if seed.dim() != 1 or seed.shape[0] != 2:
        raise ValueError(f"seed must have shape (2,) (key, offset); got {list(seed.shape)}")
    if seed.dtype != torch.int64:
        raise TypeError(f"seed must be an int64 tensor; got {seed.dtype}")
    if loc.shape[0] >= 2**32:
        raise ValueError(f"loc must have fewer than 2^32 rows for the seeded sampler; got {loc.shape[0]}")


def check_devices(loc, t, s, noise, grad_x=None, names=("t", "s", "noise", "grad_x")) -> None:
    """Every input on loc's device (ValueError naming the first that is not)."""
    device = loc.device
    for name, tensor in zip(names, (t, s, noise, grad_x)):
        if tensor is not None and tensor.device != device:
            raise ValueError(f"{name} must be on {device} (the device of the other inputs); got {tensor.device}")


# ---------------------------------------------------------------- fake kernels and autograd
def _fakes(check):
    """The fake forward and backward of an op whose last input is the noise (or the seed), checked by
    ``check`` (shapes and dtypes are known while tracing: the C++ messages)."""

    def forward(loc, t, s, noise):
        check(loc, t, s, noise)
        return loc.new_empty(loc.shape)

    def backward(grad_x, loc, t, s, noise):
        check(loc, t, s, noise, grad_x)
        rows = loc.shape[0]
        return loc.new_empty(loc.shape), loc.new_empty((rows,), dtype=torch.float64), loc.new_empty(
            (rows,), dtype=torch.float64)

    return forward, backward


_forward_fake, _backward_fake = _fakes(check_transform_inputs)
_seeded_fake, _seeded_backward_fake = _fakes(check_seeded_inputs)


def _noise_fake(seed, rows, cols, dtype):
    return seed.new_empty((rows, cols), dtype=dtype)


@functools.cache
def register_transform_fake(namespace: str) -> None:
    """Output shapes of the C++ ops for torch.compile (the Triton ops, made with triton_op, trace
    their launcher instead)."""
    torch.library.register_fake(f"{namespace}::sphere_sample_transform")(_forward_fake)
    torch.library.register_fake(f"{namespace}::sphere_sample_transform_backward")(_backward_fake)
    if namespace == "vissiam_kernels":  # the seeded ops are C++ only
        torch.library.register_fake(f"{namespace}::sphere_sample_seeded")(_seeded_fake)
        torch.library.register_fake(f"{namespace}::sphere_sample_seeded_backward")(_seeded_backward_fake)
        torch.library.register_fake(f"{namespace}::sphere_sample_noise")(_noise_fake)


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
    # the seeded op: the same backward with the seed for the noise
    torch.library.register_autograd(
        f"{namespace}::sphere_sample_seeded",
        functools.partial(_backward, getattr(torch.ops, namespace).sphere_sample_seeded_backward.default),
        setup_context=_setup_context,
    )
