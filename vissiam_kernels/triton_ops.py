"""Triton backend: the ops of csrc/ops.cpp in the ``vissiam_triton`` namespace, plus a fused training op.

Kernels (vissiam_kernels/triton_kernels.py) -> host launchers -> op registration and autograd
(this module). ``load()`` is the entry point of vissiam_kernels._dispatch ("triton").

Ops, registered with ``torch.library.triton_op`` + ``wrap_triton`` so that ``torch.compile``
traces into the kernels (``custom_op`` where torch lacks them):

- ``spherical_nll``, ``scaled_row_combination``, ``normalizer_quantity``: the schemas of
  csrc/ops.cpp exactly; gradients from vissiam_kernels._ops.register_autograd, shared with the
  C++ backends.
- ``spherical_nll_with_grad``: the minimum-traffic training path, with ``rescale_rows_`` (a
  launcher): a training step reads p and z once and writes grad_p (3S instead of 5S). The autograd
  glue, its eager twin and the traffic accounting live in vissiam_kernels/_fused_training.py,
  shared with the CPU C++ backend. Rows longer than MAX_BLOCK_D (8192) elements are swept twice
  (the second time mostly from L2).

Invalid kappa (negative, NaN, inf): the kernels write NaN into every output of the row (never
a finite wrong answer). On CPU tensors (interpreter) the launcher raises ValueError like the
CPU kernels; on CUDA tensors the kernels raise a device-side assert ("device-side assert
triggered" at the next synchronization, after which the CUDA context is unusable, as with the
CUDA C++ backend and torch's own index checks) without any host synchronization or extra
launch; under torch.compile a fused ``torch._assert_async`` is traced as well.
``VISSIAM_TRITON_CHECK_KAPPA=0`` turns the assert off (NaN rows remain).

Determinism: launch parameters come from a fixed table of D (``row_config``), and every sum
has a fixed order, so results are bitwise identical across runs on one device.
``VISSIAM_TRITON_AUTOTUNE=1`` autotunes block sizes and warps over the shapes instead
(faster where the table is off, but the chosen configuration, and with it the last bits of
the sums, may differ between processes).

Environment: ``VISSIAM_TRITON_MAX_BLOCK_D`` (largest D chunk, default 8192),
``VISSIAM_TRITON_BLOCK_ROWS`` (rows per program, default from D), ``VISSIAM_TRITON_ACCUMULATE``
(``float64`` default | ``float32``: accumulation of the row sums for 16/32-bit inputs),
``VISSIAM_TRITON_AUTOTUNE``, ``VISSIAM_TRITON_CHECK_KAPPA``.
"""

from __future__ import annotations

import math
import os

import torch

from . import _fused_training
from ._fused_training import is_fake as _is_fake

NAMESPACE = "vissiam_triton"

try:
    import triton

    from . import triton_kernels as kernels
except Exception as error:  # no triton, or one that cannot load here
    triton = kernels = None
    _IMPORT_ERROR: Exception | None = error
else:
    _IMPORT_ERROR = None

try:
    from torch.library import triton_op, wrap_triton
except ImportError:  # torch without triton_op: an opaque custom op, no tracing into the kernels
    triton_op = wrap_triton = None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


MAX_BLOCK_D = _env_int("VISSIAM_TRITON_MAX_BLOCK_D", 8192)
"""Largest chunk of D one program holds; rows up to this length are read once (see the kernel)."""
BLOCK_ROWS = _env_int("VISSIAM_TRITON_BLOCK_ROWS", 0)
"""Rows per program; 0 = from the table in ``row_config``."""
ACCUMULATE_FLOAT64 = os.environ.get("VISSIAM_TRITON_ACCUMULATE", "float64").strip().lower() != "float32"
"""Row sums (|mu|^2, |t|^2, mu.t) and the gradient combination in float64 (default) or float32.

float64 because the NLL's kappa * log1p(c) turns the float32 rounding of c (~1e-7) into
errors far above the 1e-6 relative target when kappa is large and |NLL| small (measured
under the interpreter: 1e-4 relative at d = 2, kappa ~ 500); products of float32 values are
exact in float64. On A100/H100/H200 (FP64 at half the FP32 rate) the 3 DFMA and 2
conversions per element pair stay far below the memory time. ``VISSIAM_TRITON_ACCUMULATE=float32``
is for GPUs with little FP64 throughput."""
CHECK_KAPPA = os.environ.get("VISSIAM_TRITON_CHECK_KAPPA", "1").strip() != "0"
EAGER_FUNCTION = True
"""``spherical_nll_training`` in eager mode through ``_fused_training.EagerFusedNLL`` (low host overhead); False:
through the op, as under torch.compile (the tests run both)."""
AUTOTUNE = os.environ.get("VISSIAM_TRITON_AUTOTUNE", "0").strip() == "1"

OLVER_MIN_ORDER = 30.0  # special_functions.h kOlverMinOrder
ASYMPTOTIC_MIN_ARGUMENT = 10.0  # special_functions.h kAsymptoticMinArgument


def interpreted() -> bool:
    """True when the kernels run through the Triton interpreter (TRITON_INTERPRET=1 at import)."""
    return kernels is not None and type(kernels.spherical_nll_kernel).__name__ == "InterpretedFunction"


# ================================================================ launch parameters
def _next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def row_config(dim: int) -> tuple[int, int, int]:
    """(BLOCK_R rows per program, BLOCK_D chunk of D, num_warps) for rows of length ``dim``.

    Whole rows up to MAX_BLOCK_D elements sit in one block: mu and t are read once, even with
    the gradient. Short rows are packed BLOCK_R to a program so that each program moves at least
    ~2K elements (under the interpreter, whose cost is per operation, programs are wider).
    Longer rows are swept in 2048-element chunks with float64 accumulators, twice when the
    gradient is written (the second sweep mostly hits L2).

    16 elements per thread per tensor (4 warps for a 2048-long row), not more threads per row:
    a row's float64 scalars are computed by every thread that holds part of the row, so 4 warps
    on a 2048-long row do half the float64 work of 8. Packed short rows get 8 warps, so that a
    thread holds one row's scalars, not several. tests/test_triton_compile.py checks that these
    choices compile without register spills for sm_80 and sm_90.
    """
    whole = _next_power_of_2(dim)
    if whole > _next_power_of_2(MAX_BLOCK_D):
        block_d = min(_next_power_of_2(MAX_BLOCK_D), 2048)
        block_r = _next_power_of_2(BLOCK_ROWS) if BLOCK_ROWS > 0 else 1
        return block_r, block_d, max(4, min(16, block_r * block_d // 256))
    block_d = whole
    if BLOCK_ROWS > 0:
        block_r = _next_power_of_2(BLOCK_ROWS)
    elif interpreted():
        block_r = max(1, min(64, 4096 // block_d))
    else:
        block_r = max(1, min(16, 2048 // block_d))
    elements = block_r * block_d
    num_warps = max(4, min(16, elements // 512))
    if block_r >= 8:
        num_warps = max(num_warps, 8)
    return block_r, block_d, num_warps


def _autotune_configs():
    configs = []
    for block_d in (256, 512, 1024, 2048, 4096, 8192):
        for block_r in (1, 2, 4, 8):
            for num_warps in (2, 4, 8, 16):
                configs.append(triton.Config({"BLOCK_R": block_r, "BLOCK_D": block_d}, num_warps=num_warps))
    return configs


def _prune_configs(configs, named_args, **kwargs):
    dim = named_args["D"] if "D" in named_args else kwargs["D"]
    whole = min(_next_power_of_2(dim), 8192)
    kept = []
    for config in configs:
        block_r, block_d = config.kwargs["BLOCK_R"], config.kwargs["BLOCK_D"]
        elements = block_r * block_d
        if block_d > whole or (block_d < whole and block_d < 1024):
            continue
        if not 1024 <= elements <= 8192 and not (block_r == 1 and block_d == whole):
            continue
        if config.num_warps * 32 * 4 > elements:  # at least 4 elements per thread
            continue
        kept.append(config)
    return kept or [configs[0]]


_AUTOTUNED: dict[str, object] = {}


# Kernels whose code differs between one block per row and a sweep over D.
_ONE_BLOCK_KERNELS = ("spherical_nll_kernel",)


def _kernel(name: str):
    """The jit kernel ``name``, autotuned over (BLOCK_R, BLOCK_D, num_warps) when AUTOTUNE is on."""
    kernel = getattr(kernels, name)
    if not AUTOTUNE or interpreted():
        return kernel
    if name not in _AUTOTUNED:
        if name in _ONE_BLOCK_KERNELS:
            kernel = triton.heuristics({"ONE_BLOCK": lambda args: args["BLOCK_D"] >= args["D"]})(kernel)
        _AUTOTUNED[name] = triton.autotune(
            configs=_autotune_configs(),
            key=["D", "rows"],
            prune_configs_by={"early_config_prune": _prune_configs},
        )(kernel)
    return _AUTOTUNED[name]


def _launch(name: str, rows: int, dim: int, *args, **constexprs) -> None:
    """Launch row kernel ``name`` over ``rows`` rows (table parameters, or the autotuner's)."""
    kernel = _kernel(name)
    wrapped = wrap_triton(kernel) if wrap_triton is not None else kernel
    if kernel is getattr(kernels, name):
        block_r, block_d, num_warps = row_config(dim)
        if name in _ONE_BLOCK_KERNELS:
            constexprs["ONE_BLOCK"] = block_d >= dim
        grid = (triton.cdiv(rows, block_r),)
        wrapped[grid](*args, D=dim, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=num_warps, **constexprs)
    else:
        wrapped[lambda meta: (triton.cdiv(rows, meta["BLOCK_R"]),)](*args, D=dim, **constexprs)


def olver_shift(dim: int) -> int:
    """Unit steps from nu = dim/2 - 1 up to Olver's range (special_functions.h olver_shift)."""
    nu = 0.5 * dim - 1.0
    return 0 if nu >= OLVER_MIN_ORDER else math.ceil(OLVER_MIN_ORDER - nu)


def asymptotic_steps(family: int, dim: int) -> int:
    """Masked unit steps the kernels take to reach the asymptotic range of their series:
    vMF, the order nu = d/2 - 1 up to 30 (Olver); power spherical, the gamma argument
    alpha = (d-1)/2 + kappa >= (d-1)/2 up to 10 (Stirling) — none at all for d >= 21, so the
    per-row math of a training call is short."""
    if family == 1:
        return olver_shift(dim)
    if family == 2:
        beta = 0.5 * (dim - 1.0)
        return 0 if beta >= ASYMPTOTIC_MIN_ARGUMENT else math.ceil(ASYMPTOTIC_MIN_ARGUMENT - beta)
    return 0


# ================================================================ argument checks (as csrc/cpu)
def _check_device(t: torch.Tensor, name: str) -> None:
    if t.device.type != "cuda" and not interpreted():
        raise ValueError(
            f"{name} is on {t.device}: the Triton kernels run CUDA tensors "
            "(CPU tensors only through the interpreter, TRITON_INTERPRET=1)"
        )


def _check_views(mu, target, kappa, family: int) -> None:
    if family not in (0, 1, 2):
        raise ValueError(f"family must be 0 (cosine), 1 (vMF) or 2 (power spherical); got {family}")
    if len(mu) == 0:
        raise ValueError("mu must hold at least one view")
    if len(mu) != len(target):
        raise ValueError(f"mu and target must hold the same number of views; got {len(mu)} and {len(target)}")
    if (len(kappa) != 0) if family == 0 else (len(kappa) != len(mu)):
        raise ValueError(
            f"kappa must hold one tensor per view (none for the cosine family); got {len(kappa)} for {len(mu)} views"
        )
    dim = mu[0].shape[1] if mu[0].dim() == 2 else -1
    device = mu[0].device
    for v in range(len(mu)):
        if mu[v].dim() != 2 or mu[v].shape[1] != dim:
            raise ValueError(f"mu[{v}] must have shape (B, {dim}); got {tuple(mu[v].shape)}")
        if target[v].shape != mu[v].shape:
            raise ValueError(f"target[{v}] must have mu[{v}]'s shape {tuple(mu[v].shape)}; got {tuple(target[v].shape)}")
        if target[v].dtype != mu[v].dtype:
            raise ValueError(f"target[{v}] must have mu's dtype {mu[v].dtype}; got {target[v].dtype}")
        if not mu[v].is_floating_point():
            raise TypeError(f"mu[{v}] must be a floating point tensor; got {mu[v].dtype}")
        tensors = [("mu", mu[v]), ("target", target[v])]
        if family != 0:
            if kappa[v].dim() != 1 or kappa[v].shape[0] != mu[v].shape[0]:
                raise ValueError(f"kappa[{v}] must have shape ({mu[v].shape[0]},); got {tuple(kappa[v].shape)}")
            if not kappa[v].is_floating_point():
                raise TypeError(f"kappa[{v}] must be a floating point tensor; got {kappa[v].dtype}")
            tensors.append(("kappa", kappa[v]))
        for name, t in tensors:
            if t.device != device:
                raise ValueError(f"{name}[{v}] must be on {device} (the device of mu[0]); got {t.device}")
    _check_device(mu[0], "mu[0]")
    if dim < 2:
        raise ValueError(f"the dimension D of mu and target must be >= 2; got {dim}")


def _check_kappa_values(kappa: torch.Tensor, where) -> None:
    """Negative, NaN or infinite kappa. CPU tensors (interpreter): ValueError, always. CUDA tensors:
    the kernels' device-side assert (no host synchronization); under torch.compile tracing also
    a ``torch._assert_async`` in the graph, which Inductor fuses, since a compiled copy of the
    kernel may be built without asserts."""
    if kappa.numel() == 0:
        return
    if _is_fake(kappa):
        if kappa.device.type != "cpu" and CHECK_KAPPA:
            torch._assert_async(((kappa >= 0) & torch.isfinite(kappa)).all(), "kappa must be finite and >= 0")
        return
    if kappa.device.type == "cpu":
        valid = (kappa >= 0) & torch.isfinite(kappa)
        if not bool(valid.all()):
            index = int((~valid).reshape(-1).nonzero()[0, 0])
            value = kappa.reshape(-1)[index].item()
            raise ValueError(f"kappa must be finite and >= 0; got {value} {where(index)}")


def _unit_inner_stride(x: torch.Tensor) -> torch.Tensor:
    # (B, D) rows with unit stride along D (any row stride, including 0).
    return x if x.shape[1] <= 1 or x.stride(1) == 1 else x.contiguous()


def _view_groups(mu, kappa, family: int) -> list[list[int]]:
    """Views served by one launch: consecutive pairs of one dtype (VI-SimSiam: one launch)."""
    groups, v = [], 0
    while v < len(mu):
        pair = v + 1 < len(mu) and mu[v + 1].dtype == mu[v].dtype
        if pair and family != 0:
            pair = kappa[v + 1].dtype == kappa[v].dtype
        groups.append([v, v + 1] if pair else [v])
        v += 2 if pair else 1
    return groups


def _accumulate_f64(dtype: torch.dtype) -> bool:
    return dtype == torch.float64 or ACCUMULATE_FLOAT64


# ================================================================ host launchers
def spherical_nll_forward(mu, target, kappa, family: int, grad_weight: float = 1.0,
                          grad_mu: bool = False, grad_target: bool = False):
    """Launch ``spherical_nll_kernel`` over all views.

    mu[v], target[v]: (B_v, D); kappa[v]: (B_v,) (none for the cosine family).
    Returns nll (sum B_v,) float32 (float64 if an input is float64), row_state (sum B_v, 4)
    float64, and — when asked — grad_mu[v] / grad_target[v] (B_v, D) for the upstream
    gradient ``grad_weight`` with the weight recorded per row (sum B_v,) float64.
    """
    _check_views(mu, target, kappa, family)
    mu = [_unit_inner_stride(m) for m in mu]
    target = [_unit_inner_stride(t) for t in target]
    rows = [m.shape[0] for m in mu]
    total, dim = sum(rows), mu[0].shape[1]
    device = mu[0].device
    any_double = any(m.dtype == torch.float64 for m in mu) or any(k.dtype == torch.float64 for k in kappa)
    nll = torch.empty((total,), dtype=torch.float64 if any_double else torch.float32, device=device)
    state = torch.empty((total, 4), dtype=torch.float64, device=device)
    out_mu = [torch.empty(m.shape, dtype=m.dtype, device=device) for m in mu] if grad_mu else []
    out_target = [torch.empty(t.shape, dtype=t.dtype, device=device) for t in target] if grad_target else []
    applied = torch.empty((total if grad_mu or grad_target else 0,), dtype=torch.float64, device=device)
    for v, k in enumerate(kappa):
        _check_kappa_values(k, lambda i, v=v: f"in row {i} of view {v}")
    steps = asymptotic_steps(family, dim)
    offset = 0
    for group in _view_groups(mu, kappa, family):
        v0, v1 = group[0], group[-1]
        group_rows = sum(rows[v] for v in group)
        if group_rows > 0:
            k0, k1 = (kappa[v0], kappa[v1]) if family != 0 else (mu[v0], mu[v1])
            ks0, ks1 = (k0.stride(0), k1.stride(0)) if family != 0 else (0, 0)
            gm0, gm1 = (out_mu[v0], out_mu[v1]) if grad_mu else (state, state)
            gt0, gt1 = (out_target[v0], out_target[v1]) if grad_target else (state, state)
            _launch(
                "spherical_nll_kernel", group_rows, dim,
                mu[v0], target[v0], k0, gm0, gt0,
                mu[v1], target[v1], k1, gm1, gt1,
                mu[v0].stride(0), target[v0].stride(0), ks0,
                mu[v1].stride(0), target[v1].stride(0), ks1,
                rows[v0], group_rows, offset,
                nll, state, applied if (grad_mu or grad_target) else state, float(grad_weight),
                steps,
                FAMILY=family, TWO_VIEWS=len(group) == 2,
                WRITE_GRAD_MU=grad_mu, WRITE_GRAD_TARGET=grad_target,
                ACC_F64=_accumulate_f64(mu[v0].dtype), CHECK_KAPPA=CHECK_KAPPA and family != 0,
            )
        offset += group_rows
    return nll, state, out_mu, out_target, applied


def rescale_rows_(grad_mu, grad_target, applied: torch.Tensor, upstream: torch.Tensor) -> None:
    """In place: rows r with upstream[r] != applied[r] are scaled by upstream[r] / applied[r].

    grad_mu / grad_target: lists of contiguous (B_v, D) buffers (either may be empty);
    applied, upstream: (sum B_v,).
    """
    buffers = grad_mu if grad_mu else grad_target
    rows = [g.shape[0] for g in buffers]
    dim = buffers[0].shape[1]
    offset = 0
    for group in _view_groups(buffers, [], 0):
        v0, v1 = group[0], group[-1]
        group_rows = sum(rows[v] for v in group)
        if group_rows > 0:
            gm0, gm1 = (grad_mu[v0], grad_mu[v1]) if grad_mu else (applied, applied)
            gt0, gt1 = (grad_target[v0], grad_target[v1]) if grad_target else (applied, applied)
            block_r, block_d, num_warps = row_config(dim)
            # Not autotuned: the kernel is not idempotent (it updates ``applied``).
            kernels.rescale_rows_kernel[(triton.cdiv(group_rows, block_r),)](
                gm0, gt0, gm1, gt1,
                rows[v0], group_rows, offset,
                upstream, upstream.stride(0), applied,
                D=dim, HAS_MU=bool(grad_mu), HAS_TARGET=bool(grad_target), TWO_VIEWS=len(group) == 2,
                ACC_F64=_accumulate_f64(buffers[v0].dtype),
                BLOCK_R=block_r, BLOCK_D=block_d, num_warps=num_warps,
            )
        offset += group_rows


def scaled_row_combination_forward(scale, coef_x, coef_y, x, y) -> list[torch.Tensor]:
    """out[v][i, :] = scale[i] * (coef_x[i] * x[v][i, :] + coef_y[i] * y[v][i, :]), rows numbered across views."""
    if len(x) != len(y):
        raise ValueError("x and y must hold the same number of views")
    total = 0
    for v in range(len(x)):
        if x[v].dim() != 2 or y[v].shape != x[v].shape:
            raise ValueError(
                f"x[{v}] and y[{v}] must be matching (B, D) tensors; got {tuple(x[v].shape)} and {tuple(y[v].shape)}"
            )
        if y[v].dtype != x[v].dtype:
            raise ValueError(f"y[{v}] must have x's dtype")
        _check_device(x[v], f"x[{v}]")
        total += x[v].shape[0]
    for c in (scale, coef_x, coef_y):
        if c.dim() != 1 or c.shape[0] != total:
            raise ValueError(f"scale and coefficients must have shape ({total},); got {tuple(c.shape)}")
    x = [_unit_inner_stride(t) for t in x]
    y = [_unit_inner_stride(t) for t in y]
    out = [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in x]
    if not x:
        return out
    rows = [t.shape[0] for t in x]
    dim = x[0].shape[1]
    offset = 0
    for group in _view_groups(x, [], 0):
        v0, v1 = group[0], group[-1]
        group_rows = sum(rows[v] for v in group)
        if group_rows > 0 and dim > 0:
            _launch(
                "scaled_row_combination_kernel", group_rows, dim,
                x[v0], y[v0], out[v0], x[v1], y[v1], out[v1],
                x[v0].stride(0), y[v0].stride(0), x[v1].stride(0), y[v1].stride(0),
                rows[v0], group_rows, offset,
                scale, scale.stride(0), coef_x, coef_x.stride(0), coef_y, coef_y.stride(0),
                TWO_VIEWS=len(group) == 2, ACC_F64=_accumulate_f64(x[v0].dtype),
            )
        offset += group_rows
    return out


def normalizer_quantity_forward(kappa: torch.Tensor, dim: int, family: int, quantity: int) -> torch.Tensor:
    """Elementwise quantity (0 log C, 1 dlogC, 2 d2logC, 3 entropy, 4 KL) of ``family`` (1 vMF, 2 PS)."""
    if dim < 2:
        raise ValueError(f"dim must be >= 2; got {dim}")
    if family not in (1, 2):
        raise ValueError(f"family must be 1 (vMF) or 2 (power spherical); got {family}")
    if not 0 <= quantity <= 4:
        raise ValueError(f"quantity must be in [0, 4]; got {quantity}")
    if not kappa.is_floating_point():
        raise TypeError(f"kappa must be a floating point tensor; got {kappa.dtype}")
    _check_device(kappa, "kappa")
    flat = kappa.reshape(-1)
    if flat.numel() > 1 and flat.stride(0) != 1:
        flat = flat.contiguous()
    out = torch.empty(kappa.shape, dtype=torch.float64 if kappa.dtype == torch.float64 else torch.float32,
                      device=kappa.device)
    _check_kappa_values(flat, lambda i: f"at flat index {i}")
    n = flat.numel()
    if n > 0:
        block = 1024 if interpreted() else 128
        wrapped = wrap_triton(kernels.normalizer_quantity_kernel) if wrap_triton is not None else (
            kernels.normalizer_quantity_kernel)
        wrapped[(triton.cdiv(n, block),)](
            flat, out, n, int(dim), asymptotic_steps(family, dim),
            FAMILY=family, QUANTITY=quantity, CHECK_KAPPA=CHECK_KAPPA, BLOCK=block, num_warps=4,
        )
    return out


SPECIAL_FUNCTIONS = ("lgamma_difference", "log2_plus_digamma_difference", "trigamma_difference",
                     "log_bessel_i_scaled", "bessel_ratio", "bessel_ratio_complement")


def special_function(name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The ported header functions elementwise on float64 tensors (tests). For the Bessel
    functions a = nu must be one value (the recurrence length is per launch)."""
    load()
    a, b = a.to(torch.float64).contiguous(), b.to(torch.float64).contiguous()
    shift = 0
    if name in SPECIAL_FUNCTIONS[3:]:
        nus = a.unique()
        if nus.numel() > 1:
            raise ValueError("Bessel functions take one order nu per call")
        nu = float(nus[0]) if nus.numel() else OLVER_MIN_ORDER
        shift = 0 if nu >= OLVER_MIN_ORDER else math.ceil(OLVER_MIN_ORDER - nu)
    out = torch.empty_like(a)
    n = a.numel()
    if n:
        kernels.special_function_kernel[(triton.cdiv(n, 256),)](
            a, b, out, n, shift, FUNCTION=SPECIAL_FUNCTIONS.index(name), BLOCK=256)
    return out


# ================================================================ op registration
_NLL_SCHEMA = "(Tensor[] mu, Tensor[] target, Tensor[] kappa, int family) -> (Tensor, Tensor)"
_COMBINATION_SCHEMA = "(Tensor scale, Tensor coef_x, Tensor coef_y, Tensor[] x, Tensor[] y) -> Tensor[]"
_QUANTITY_SCHEMA = "(Tensor kappa, int dim, int family, int quantity) -> Tensor"
_FUSED_SCHEMA = (
    "(Tensor[] mu, Tensor[] target, Tensor[] kappa, int family, float grad_weight, bool grad_mu,"
    " bool grad_target) -> (Tensor, Tensor, Tensor[], Tensor[], Tensor)"
)


def _define(name: str, schema: str, fn):
    qualified = f"{NAMESPACE}::{name}"
    if triton_op is not None:
        return triton_op(qualified, mutates_args=(), schema=schema)(fn)
    op = torch.library.custom_op(qualified, mutates_args=(), schema=schema)(fn)
    op.register_fake(fn)  # the launchers only read shapes when given fake tensors
    return op


# Annotated so that the schema can also be inferred: torch releases whose triton_op ignores
# ``schema`` (2.7) infer it from these annotations ("int" then becomes "SymInt").
Tensor = torch.Tensor


def _spherical_nll(mu: list[Tensor], target: list[Tensor], kappa: list[Tensor], family: int) -> tuple[Tensor, Tensor]:
    nll, state, _, _, _ = spherical_nll_forward(mu, target, kappa, family)
    return nll, state


def _spherical_nll_with_grad(
    mu: list[Tensor], target: list[Tensor], kappa: list[Tensor], family: int, grad_weight: float, grad_mu: bool,
    grad_target: bool,
) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor], Tensor]:
    return spherical_nll_forward(mu, target, kappa, family, grad_weight, grad_mu, grad_target)


def _scaled_row_combination(scale: Tensor, coef_x: Tensor, coef_y: Tensor, x: list[Tensor],
                            y: list[Tensor]) -> list[Tensor]:
    return scaled_row_combination_forward(scale, coef_x, coef_y, x, y)


def _normalizer_quantity(kappa: Tensor, dim: int, family: int, quantity: int) -> Tensor:
    return normalizer_quantity_forward(kappa, dim, family, quantity)


if _IMPORT_ERROR is None:
    spherical_nll = _define("spherical_nll", _NLL_SCHEMA, _spherical_nll)
    scaled_row_combination = _define("scaled_row_combination", _COMBINATION_SCHEMA, _scaled_row_combination)
    normalizer_quantity = _define("normalizer_quantity", _QUANTITY_SCHEMA, _normalizer_quantity)
    spherical_nll_with_grad = _define("spherical_nll_with_grad", _FUSED_SCHEMA, _spherical_nll_with_grad)


# ================================================================ training path
# The autograd glue of the fused op is shared with the CPU C++ backend (_fused_training).
# The launchers are looked up at call time (tests replace them to watch the buffers).
KERNELS = _fused_training.FusedKernels(
    NAMESPACE,
    forward=lambda *args: spherical_nll_forward(*args),
    rescale_=lambda *args: rescale_rows_(*args),
)


_registered = {"autograd": False}


def load() -> None:
    """Make ``torch.ops.vissiam_triton`` usable, or raise saying why it cannot run here."""
    if _IMPORT_ERROR is not None:
        raise RuntimeError(f"the Triton backend needs the triton package: {_IMPORT_ERROR!r}")
    if not interpreted() and not torch.cuda.is_available():
        raise RuntimeError(
            "the Triton backend needs a CUDA device (or TRITON_INTERPRET=1, set before triton is "
            "imported, to run its kernels on CPU tensors through the Triton interpreter)"
        )
    if not _registered["autograd"]:
        from . import _ops

        _ops.register_autograd(NAMESPACE)
        _fused_training.register("triton", KERNELS)
        _registered["autograd"] = True


# ================================================================ training entry point
predicted_upstream_weight = _fused_training.predicted_upstream_weight


def spherical_nll_training(mu, target, kappa, family: int, upstream_weight: float) -> torch.Tensor:
    """Per-row NLL of all views through the minimum-traffic training path (see _fused_training)."""
    load()
    return _fused_training.spherical_nll_training(KERNELS, mu, target, kappa, family, upstream_weight, EAGER_FUNCTION)
