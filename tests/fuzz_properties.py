"""The fuzz properties of every public op (issue 8), for any backend on any device.

Not a test module (no ``test_`` prefix): the properties are collected by

- tests/test_fuzz_ops.py: the CPU backend on CPU tensors (CI);
- tests/accelerated_fuzz_cases.py: the Triton backend through the interpreter on CPU tensors (CI,
  a fresh process started by tests/test_triton_interpreter.py), and the Triton and CUDA C++
  backends on CUDA tensors (tests/test_fuzz_gpu.py, marked ``gpu``, run by bench/gpu_check.sh).

Hypothesis draws shapes (B in [0, 300], D in [2, 5000], extra leading dimensions), memory layouts
(contiguous, transposed, strided, storage offset, expanded/broadcast views), dtypes (float16,
bfloat16, float32, float64) and concentrations (0, subnormals, 1e-30, 1e7, ordinary values). Every
call must either return finite values that match ``vissiam_kernels.reference`` evaluated in float64
(on the CPU) on the very same (already rounded) input values, or raise the documented error.
Gradients are checked against the float64 reference's autograd too.

Tolerances (|ours - reference| <= tol * max(1, |reference|)):
- NLL / losses: 1e-6 (the kernels compute row sums and per-row math in float64; the result is
  rounded once to float32 for float32/half inputs, 6e-8) and 1e-10 for float64 results.
- normalizers/entropies/KL: 2e-6 for float32 results (tests/test_golden_table.py's target) and
  2e-9 for float64 (the golden table's float64 entropy tolerance 1e-9, plus the reference's own error).
- gradients come back in the input dtype: compared with the float64 reference's gradient rounded
  to that dtype, within a few units of that dtype's precision, scaled by the tensor's largest entry.

Invalid concentrations (negative, NaN, inf — e.g. 1e7 drawn in float16 is inf) raise ValueError on
CPU tensors. On CUDA tensors they are an asynchronous device-side assert, which leaves the CUDA
context unusable; those draws are rejected here and the assert is tested in child processes
(tests/test_cuda_kernels.py, tests/test_triton_gpu.py). Shape, dtype and argument errors are
raised on the host for every device and are fuzzed everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import reject
from hypothesis import strategies as st

import vissiam_kernels as vk
from vissiam_kernels import reference

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LAYOUTS = ("contiguous", "transposed", "strided", "offset", "expanded")
KAPPA_FORMS = ("rows", "rows1", "scalar", "python", "strided", "expanded")
# elements of a kappa tensor are drawn from these kinds, row by row
SPECIAL_KAPPAS = ("zero", "subnormal", "1e-30", "1e7", "uniform", "loguniform")

NLL_RTOL = {torch.float32: 1e-6, torch.float64: 1e-10}
NORMALIZER_RTOL = {torch.float32: 2e-6, torch.float64: 2e-9}
# relative precision of a gradient delivered in each dtype (a few ulps of the rounded result,
# plus float32 intermediates for half inputs)
GRAD_RTOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 2e-5, torch.float64: 1e-9}

ELEMENT_BUDGET = 1_500_000  # B * D of one view: (300, 5000) is allowed; most draws are far smaller


@dataclass(frozen=True)
class Target:
    """Where the properties run: ``backend`` (VISSIAM_BACKEND, asserted after every call) on
    tensors of ``device``; ``element_budget`` bounds B * D of one view (the interpreter is slow)."""

    backend: str
    device: str
    element_budget: int = ELEMENT_BUDGET

    @property
    def asserts_on_device(self) -> bool:
        """Invalid kappa is a device-side assert here (not a ValueError)."""
        return self.device != "cpu"

    def ran(self):
        assert vk.last_backend() == self.backend, f"expected backend {self.backend!r}, ran {vk.last_backend()!r}"


# ---------------------------------------------------------------- strategies
@st.composite
def row_shapes(draw, max_rows=300, element_budget=ELEMENT_BUDGET):
    """(rows_shape, D): rows_shape has 0-2 extra leading dims; total rows <= max_rows."""
    dim = draw(st.one_of(st.integers(2, 64), st.integers(65, 5000), st.sampled_from([2, 3, 4096, 4097, 5000])))
    max_b = max(0, min(max_rows, element_budget // dim))
    extra = draw(st.integers(0, 2))
    if extra == 0:
        return (draw(st.integers(0, max_b)),), dim
    lead = tuple(draw(st.integers(0, 4)) for _ in range(extra))
    inner = max(1, math.prod(d for d in lead if d) or 1)
    b = draw(st.integers(0, max(0, max_b // inner)))
    return lead + (b,), dim


def lay_out(base_values: torch.Tensor, shape, layout: str, generator) -> torch.Tensor:
    """A tensor of logical ``shape`` with the values of ``base_values`` (contiguous ``shape``, on the
    target device) viewed through ``layout``; dtype and device are those of ``base_values``."""
    dtype, device = base_values.dtype, base_values.device
    if layout == "contiguous":
        return base_values.clone()
    if layout == "transposed":
        dims = tuple(range(len(shape)))[::-1]
        return base_values.permute(dims).contiguous().permute(dims)  # same values, reversed strides
    if layout == "strided":
        wide = torch.zeros(*shape[:-1], 2 * shape[-1] + 1, dtype=dtype, device=device)
        view = wide[..., 1::2]
        view.copy_(base_values)
        return view
    if layout == "offset":
        offset = int(torch.randint(1, 17, (), generator=generator))
        flat = torch.zeros(base_values.numel() + offset, dtype=dtype, device=device)
        view = flat[offset:].view(shape)
        view.copy_(base_values)
        assert view.storage_offset() == offset
        return view
    if layout == "expanded":  # one row broadcast to every row (stride 0 over the rows)
        if base_values.numel():
            row = base_values.reshape(-1, shape[-1])[:1].clone()
        else:
            row = torch.ones(1, shape[-1], dtype=dtype, device=device)
        return row.reshape((1,) * (len(shape) - 1) + (shape[-1],)).expand(shape)
    raise AssertionError(layout)


def vectors(shape, dtype, layout, generator, kind, device="cpu"):
    values = torch.randn(*shape, generator=generator, dtype=torch.float64)
    if kind == "tiny":  # norms near and below F.normalize's eps
        values = values * 1e-13
    elif kind == "zero_rows" and values.numel():
        rows = values.reshape(-1, shape[-1])
        rows[:: 3] = 0.0
    elif kind == "huge" and dtype in (torch.float32, torch.float64):
        values = values * 1e30
    return lay_out(values.to(dtype).to(device), shape, layout, generator)


def kappa_values(rows_shape, dtype, generator, kinds) -> torch.Tensor:
    """CPU tensor of ``rows_shape`` in ``dtype``, each element of a kind drawn from ``kinds``."""
    n = math.prod(rows_shape)
    finfo = torch.finfo(dtype)
    choices = {
        "zero": 0.0,
        "subnormal": finfo.smallest_normal / 4,
        "1e-30": 1e-30,
        "1e7": 1e7,
    }
    which = torch.randint(0, len(kinds), (n,), generator=generator).tolist()
    uniform = (100 * torch.rand(n, generator=generator, dtype=torch.float64)).tolist()
    logu = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(1e-6), math.log(1e6), generator=generator)).tolist()
    out = []
    for i, w in enumerate(which):
        k = kinds[w]
        out.append(uniform[i] if k == "uniform" else logu[i] if k == "loguniform" else choices[k])
    return torch.tensor(out, dtype=torch.float64).reshape(rows_shape).to(dtype)


def kappa_argument(values: torch.Tensor, form: str):
    """(argument passed to the op, per-row kappa tensor that the op will see), on values' device."""
    rows_shape, device = values.shape, values.device
    if form == "rows":
        return values, values
    if form == "rows1":
        return values.unsqueeze(-1), values
    if form == "strided":
        wide = torch.zeros(*rows_shape[:-1], 2 * rows_shape[-1], dtype=values.dtype, device=device)
        wide[..., ::2] = values
        return wide[..., ::2], values
    first = values.reshape(-1)[:1] if values.numel() else torch.ones(1, dtype=values.dtype, device=device)
    if form == "scalar":
        return first.reshape(()).clone(), first.reshape(()).expand(rows_shape)
    if form == "expanded":
        return first.reshape((1,) * len(rows_shape)).expand(rows_shape), first.reshape(()).expand(rows_shape)
    if form == "python":  # check_kappa makes a default-dtype tensor of a Python number
        as_tensor = torch.tensor(float(first), dtype=torch.get_default_dtype(), device=device)
        return float(first), as_tensor.expand(rows_shape)
    raise AssertionError(form)


@st.composite
def nll_cases(draw, max_rows=300, element_budget=ELEMENT_BUDGET):
    rows_shape, dim = draw(row_shapes(max_rows, element_budget))
    shape = rows_shape + (dim,)
    case = {
        "shape": shape,
        "rows_shape": rows_shape,
        "dtype": draw(st.sampled_from(DTYPES)),
        "target_dtype": None,
        "mu_layout": draw(st.sampled_from(LAYOUTS)),
        "target_layout": draw(st.sampled_from(LAYOUTS)),
        "vector_kind": draw(st.sampled_from(("normal", "normal", "normal", "tiny", "zero_rows", "huge", "antipodal"))),
        "kappa_dtype": draw(st.sampled_from(DTYPES)),
        "kappa_form": draw(st.sampled_from(KAPPA_FORMS)),
        "kappa_kinds": tuple(draw(st.lists(st.sampled_from(SPECIAL_KAPPAS), min_size=1, max_size=4, unique=True))),
        "reduction": draw(st.sampled_from(("none", "mean", "sum"))),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }
    if draw(st.integers(0, 5)) == 0:
        case["target_dtype"] = draw(st.sampled_from(DTYPES))
    return case


@st.composite
def vi_cases(draw, element_budget=ELEMENT_BUDGET):
    case = draw(nll_cases(max_rows=150, element_budget=element_budget))
    case["distribution"] = draw(st.sampled_from(("power_spherical", "vmf", "none")))
    case["kl_weight"] = draw(st.sampled_from((0.0, 1e-3, 0.5))) if case["distribution"] != "none" else 0.0
    return case


NORMALIZERS = (
    "power_spherical_log_normalizer",
    "vmf_log_normalizer",
    "power_spherical_entropy",
    "vmf_entropy",
    "power_spherical_kl_uniform",
    "vmf_kl_uniform",
)


@st.composite
def normalizer_cases(draw, max_side=40):
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.integers(0, max_side)) for _ in range(ndim))
    return {
        "shape": shape,
        "dim": draw(st.one_of(st.integers(2, 64), st.integers(65, 5000), st.sampled_from([2, 3, 4, 2048, 4097, 65536]))),
        "dtype": draw(st.sampled_from(DTYPES)),
        "layout": draw(st.sampled_from(("contiguous", "transposed", "strided", "offset", "expanded")) if ndim else st.just("contiguous")),
        "kinds": tuple(draw(st.lists(st.sampled_from(SPECIAL_KAPPAS), min_size=1, max_size=4, unique=True))),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


INVALID_KINDS = ("bad_kappa_value", "kappa_shape", "vector_shape", "dim_one", "zero_dim", "int_vector", "int_kappa",
                 "bad_dim", "normalizer_bad_kappa", "normalizer_int")
# the kinds raised on the host for tensors of every device (the others are device-side asserts on CUDA)
HOST_CHECKED_KINDS = tuple(k for k in INVALID_KINDS if k not in ("bad_kappa_value", "normalizer_bad_kappa"))


@st.composite
def invalid_cases(draw, kinds=INVALID_KINDS):
    return {
        "b": draw(st.integers(1, 20)),
        "d": draw(st.integers(2, 40)),
        "kind": draw(st.sampled_from(kinds)),
        "bad": draw(st.sampled_from((-1.0, -1e-30, -5e-324, float("nan"), float("inf"), float("-inf"), -1e7))),
        "dtype": draw(st.sampled_from(DTYPES)),
        "int_dtype": draw(st.sampled_from((torch.int8, torch.int32, torch.int64, torch.bool, torch.uint8))),
        "op": draw(st.sampled_from(("power_spherical_nll", "vmf_nll", "vmf_loss", "power_spherical_loss", "vi_simsiam_loss"))),
        "normalizer": draw(st.sampled_from(NORMALIZERS)),
        "row": draw(st.integers(0, 19)),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


# ---------------------------------------------------------------- inputs and comparisons
def build_nll_inputs(case, device="cpu"):
    """(mu, target, kappa argument, per-row kappa) of a drawn case, laid out on ``device``."""
    gen = torch.Generator().manual_seed(case["seed"])
    shape, dtype = case["shape"], case["dtype"]
    kind = case["vector_kind"]
    mu = vectors(shape, dtype, case["mu_layout"], gen, "normal" if kind == "antipodal" else kind, device)
    if kind == "antipodal":
        if mu.numel():
            target = lay_out((-mu.double()).to(dtype).contiguous(), shape, case["target_layout"], gen)
        else:
            target = mu.clone()
    else:
        target = vectors(shape, case["target_dtype"] or dtype, case["target_layout"], gen, kind, device)
    kappa_vals = kappa_values(case["rows_shape"], case["kappa_dtype"], gen, case["kappa_kinds"]).to(device)
    kappa_arg, kappa_rows = kappa_argument(kappa_vals, case["kappa_form"])
    return mu, target, kappa_arg, kappa_rows


def expected_loss_dtype(*tensors):
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def assert_close(actual, expected, rtol, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    assert not a.isnan().any(), f"{what}: NaN in the result"
    assert torch.isfinite(e).all(), f"{what}: the reference is not finite"
    assert torch.isfinite(a).all(), f"{what}: non-finite result"
    bad = (a - e).abs() > rtol * e.abs().clamp_min(1.0)
    if bad.any():
        i = tuple(int(j) for j in bad.nonzero()[0])
        raise AssertionError(f"{what}: at {i}: {a[i].item()!r} vs reference {e[i].item()!r} (rtol {rtol})")


def assert_grad_close(actual, expected64, dtype, what, term_scale=0.0):
    """A gradient in ``dtype`` against the float64 reference gradient, within GRAD_RTOL[dtype] times
    the larger of its largest entry and ``term_scale``, the size of the terms that cancel in it (e.g.
    t - cos(mu, t) mu for an antipodal pair is 0 up to rounding of terms of size kappa / |mu|)."""
    assert actual is not None, f"{what}: no gradient"
    assert actual.dtype == dtype and actual.shape == expected64.shape, f"{what}: {actual.dtype} {tuple(actual.shape)}"
    actual = actual.cpu()
    assert not actual.isnan().any(), f"{what}: NaN in the gradient"
    finfo = torch.finfo(dtype)
    representable = expected64.abs() <= finfo.max / 2  # beyond that the dtype overflows, as in torch
    assert torch.isfinite(actual[representable]).all(), f"{what}: non-finite gradient where the reference is representable"
    if not representable.any():
        return
    a, e = actual.double()[representable], expected64[representable]
    scale = max(e.abs().max().item(), term_scale)
    tol = GRAD_RTOL[dtype] * scale + finfo.tiny
    err = (a - e).abs()
    assert err.max().item() <= tol, f"{what}: max error {err.max().item():.3e} > {tol:.3e} (scale {scale:.3e})"


def gradient_term_scales(family, mu64, target64, kappa64, upstream, reduction) -> dict:
    """Sizes of the terms whose difference is each gradient (see assert_grad_close)."""
    rows = mu64.shape[:-1]
    n = max(1, math.prod(rows))
    weight = upstream.expand(rows) if reduction == "none" else upstream.expand(rows) / (n if reduction == "mean" else 1)
    if not weight.numel():
        return {"mu": 0.0, "target": 0.0, "kappa": 0.0}
    cos = reference.cosine(mu64, target64)
    if family == "none":
        dcos = torch.ones_like(cos)
    elif family == "vmf":
        dcos = kappa64.expand(rows)
    else:
        dcos = kappa64.expand(rows) / (1 + cos).clamp_min(reference.POWER_SPHERICAL_ONE_PLUS_COS_FLOOR)
    unit_max = lambda x: (x / x.norm(dim=-1, keepdim=True).clamp_min(reference.NORMALIZE_EPS)).abs().amax(-1)  # noqa: E731
    shared = weight.abs() * dcos * (unit_max(mu64) + unit_max(target64))
    norm = lambda x: x.norm(dim=-1).clamp_min(reference.NORMALIZE_EPS)  # noqa: E731
    log_term = torch.log((1 + cos).clamp_min(reference.POWER_SPHERICAL_ONE_PLUS_COS_FLOOR)).abs()
    return {
        "mu": (shared / norm(mu64)).max().item(),
        "target": (shared / norm(target64)).max().item(),
        "kappa": (weight.abs() * (2 + log_term)).max().item(),
    }


def _reference_rows(family, mu64, target64, kappa64):
    if family == "none":
        return reference.cosine_nll(mu64, target64, "none")
    fn = reference.vmf_nll if family == "vmf" else reference.power_spherical_nll
    return fn(mu64, target64, kappa64, "none")


def invalid_kappa(kappa_rows) -> bool:
    return bool((~torch.isfinite(kappa_rows)).any() | (kappa_rows < 0).any())


def _expect_invalid_kappa_error(target: Target, call):
    """Invalid kappa: ValueError on CPU tensors; on CUDA tensors the draw is rejected (module docstring)."""
    if target.asserts_on_device:
        reject()
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        call()


def _upstream(shape, seed):
    """A random upstream gradient in [0.5, 1.5), float64 on the CPU."""
    return torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) + 0.5


# ---------------------------------------------------------------- the properties
NLL_OPS = {
    "power_spherical_nll": ("power_spherical", lambda m, t, k, r: vk.power_spherical_nll(m, t, k, r), True),
    "vmf_nll": ("vmf", lambda m, t, k, r: vk.vmf_nll(m, t, k, r), True),
    "vmf_loss_vmf": ("vmf", lambda m, t, k, r: vk.vmf_loss(m, t, k, reduction=r), False),
    "vmf_loss_ps": ("power_spherical", lambda m, t, k, r: vk.vmf_loss(m, t, k, distribution="power_spherical", reduction=r), False),
    "power_spherical_loss": ("power_spherical", lambda m, t, k, r: vk.power_spherical_loss(m, t, k, reduction=r), False),
    "vmf_loss_no_kappa": ("none", lambda m, t, k, r: vk.vmf_loss(m, t, reduction=r), False),
}


def check_nll_op(op_name, case, target: Target):
    family, fn, target_grad = NLL_OPS[op_name]
    mu, tgt, kappa_arg, kappa_rows = build_nll_inputs(case, target.device)
    reduction = case["reduction"]
    mu.requires_grad_(True)
    if target_grad:
        tgt.requires_grad_(True)
    kappa_tensor_arg = isinstance(kappa_arg, torch.Tensor)
    if family != "none" and kappa_tensor_arg:
        kappa_arg.requires_grad_(True)
    if family != "none" and invalid_kappa(kappa_rows):
        _expect_invalid_kappa_error(target, lambda: fn(mu, tgt, kappa_arg, reduction))
        return
    out = fn(mu, tgt, kappa_arg, reduction)
    target.ran()
    assert out.device == mu.device
    vec_dtype = torch.promote_types(mu.dtype, tgt.dtype)
    tensors = (mu, tgt) if family == "none" else (mu, tgt, kappa_rows)
    loss_dtype = expected_loss_dtype(*[t.to(vec_dtype) if t is not kappa_rows else t for t in tensors])
    assert out.dtype == loss_dtype, f"{op_name}: loss dtype {out.dtype}, expected {loss_dtype}"

    mu64 = mu.detach().cpu().double().requires_grad_(True)
    target64 = tgt.detach().to(vec_dtype).cpu().double().requires_grad_(target_grad)
    kappa64 = kappa_rows.detach().cpu().double().clone().requires_grad_(family != "none")
    rows64 = _reference_rows(family, mu64, target64, kappa64)
    expected = reference.reduce(rows64, reduction)
    rows = math.prod(case["rows_shape"])
    if rows == 0 and reduction == "mean":  # documented: torch's mean of nothing
        assert out.isnan().all() and out.shape == ()
        return
    assert_close(out, expected, NLL_RTOL[loss_dtype], op_name)

    upstream = _upstream(out.shape, case["seed"] + 1)
    out.backward(upstream.to(out.dtype).to(out.device))
    expected.backward(upstream)
    scales = gradient_term_scales(family, mu64.detach(), target64.detach(), kappa64.detach(), upstream, reduction)
    assert_grad_close(mu.grad, mu64.grad, mu.dtype, f"{op_name} grad mu", scales["mu"])
    if target_grad:
        assert_grad_close(tgt.grad, target64.grad, tgt.dtype, f"{op_name} grad target", scales["target"])
    else:
        assert tgt.grad is None
    if family != "none" and kappa_tensor_arg and kappa_arg.requires_grad:
        assert kappa_arg.grad is not None and kappa_arg.grad.dtype == kappa_arg.dtype
        # a scalar kappa is expanded inside (its gradient is the sum over rows); every other form is
        # read element by element, one element per row
        grad64 = kappa64.grad
        if case["kappa_form"] == "scalar":
            grad64 = grad64.sum().reshape(())
        elif case["kappa_form"] == "rows1":
            grad64 = grad64.unsqueeze(-1)
        assert_grad_close(kappa_arg.grad, grad64, kappa_arg.dtype, f"{op_name} grad kappa", scales["kappa"])


def check_vi_simsiam_loss(case, target: Target):
    gen_case = dict(case)
    p1, z2, k1_arg, k1_rows = build_nll_inputs(gen_case, target.device)
    gen_case["seed"] = case["seed"] + 7
    p2, z1, k2_arg, k2_rows = build_nll_inputs(gen_case, target.device)
    distribution, kl_weight, reduction = case["distribution"], case["kl_weight"], case["reduction"]
    p1.requires_grad_(True)
    p2.requires_grad_(True)
    if distribution == "none":
        k1_arg = k2_arg = None

    def call():
        return vk.vi_simsiam_loss(p1, p2, z1, z2, k1_arg, k2_arg, distribution=distribution, kl_weight=kl_weight,
                                  reduction=reduction)

    if distribution != "none" and (invalid_kappa(k1_rows) or invalid_kappa(k2_rows)):
        _expect_invalid_kappa_error(target, call)
        return
    out = call()
    target.ran()
    vec = torch.promote_types(p1.dtype, z2.dtype)
    p1_64, p2_64 = (p.detach().cpu().double().requires_grad_(True) for p in (p1, p2))
    z1_64, z2_64 = z1.to(vec).cpu().double(), z2.to(vec).cpu().double()
    k1_64, k2_64 = (None, None) if distribution == "none" else (k1_rows.cpu().double(), k2_rows.cpu().double())
    expected = reference.vi_simsiam_loss(p1_64, p2_64, z1_64, z2_64, k1_64, k2_64, distribution=distribution,
                                         kl_weight=kl_weight, reduction=reduction)
    if math.prod(case["rows_shape"]) == 0 and reduction == "mean":
        assert out.isnan().all()
        return
    dtypes = [vec] + ([] if distribution == "none" else [k1_rows.dtype, k2_rows.dtype])
    loss_dtype = torch.float64 if torch.float64 in dtypes else torch.float32
    assert out.dtype == loss_dtype
    # with a KL term the float32 path adds kl_weight * KL computed by the float32 normalizer op
    rtol = NLL_RTOL[loss_dtype] if not kl_weight else NORMALIZER_RTOL[loss_dtype]
    assert_close(out, expected, rtol, "vi_simsiam_loss")
    upstream = _upstream(out.shape, case["seed"])
    out.backward(upstream.to(out.dtype).to(out.device))
    expected.backward(upstream)
    zero = torch.zeros(())
    s1 = gradient_term_scales(distribution, p1_64.detach(), z2_64, zero if k1_64 is None else k1_64, upstream * 0.5, reduction)
    s2 = gradient_term_scales(distribution, p2_64.detach(), z1_64, zero if k2_64 is None else k2_64, upstream * 0.5, reduction)
    assert_grad_close(p1.grad, p1_64.grad, p1.dtype, "vi_simsiam_loss grad p1", s1["mu"])
    assert_grad_close(p2.grad, p2_64.grad, p2.dtype, "vi_simsiam_loss grad p2", s2["mu"])


def check_normalizer(name, case, target: Target):
    gen = torch.Generator().manual_seed(case["seed"])
    shape, dtype = case["shape"], case["dtype"]
    values = kappa_values(shape, dtype, gen, case["kinds"]).to(target.device)
    kappa = lay_out(values, shape, case["layout"], gen) if shape else values
    dim = case["dim"]
    fn, ref = getattr(vk, name), getattr(reference, name)
    if invalid_kappa(kappa):
        _expect_invalid_kappa_error(target, lambda: fn(kappa, dim))
        return
    leaf = kappa.detach().clone().requires_grad_(True) if case["layout"] != "expanded" else kappa.requires_grad_(True)
    out = fn(leaf, dim)
    target.ran()
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == out_dtype and out.shape == kappa.shape and out.device == kappa.device
    k64 = kappa.detach().cpu().double().clone().requires_grad_(True)
    expected = ref(k64, dim)
    assert_close(out, expected, NORMALIZER_RTOL[out_dtype], f"{name}(d={dim})")
    if out.numel() and case["layout"] != "expanded":
        out.sum().backward()
        expected.sum().backward()
        # d/dkappa is checked against the golden table elsewhere; here: finite, no NaN, close to the reference
        # measured like the values: relative to max(1, |exact|) (term_scale 1)
        assert_grad_close(leaf.grad, k64.grad, dtype, f"{name}(d={dim}) grad", term_scale=1.0)


def _call_op(op, mu, target, kappa):
    if op == "power_spherical_nll":
        return vk.power_spherical_nll(mu, target, kappa)
    if op == "vmf_nll":
        return vk.vmf_nll(mu, target, kappa)
    if op == "vmf_loss":
        return vk.vmf_loss(mu, target, kappa)
    if op == "power_spherical_loss":
        return vk.power_spherical_loss(mu, target, kappa)
    return vk.vi_simsiam_loss(mu, mu, target, target, kappa, kappa, distribution="vmf")


def _holding_bad_value(kappa, bad):
    """``kappa`` in a dtype where ``bad`` stays invalid (-1e-30 in float16 rounds to -0.0, a valid kappa)."""
    return kappa if invalid_kappa(torch.tensor(bad, dtype=kappa.dtype)) else kappa.double()


def check_invalid_input_raises(case, device="cpu"):
    """Each kind of bad argument raises the documented ValueError/TypeError, naming the argument."""
    gen = torch.Generator().manual_seed(case["seed"])
    b, d, dtype, op = case["b"], case["d"], case["dtype"], case["op"]
    mu = torch.randn(b, d, generator=gen).to(dtype).to(device)
    target = torch.randn(b, d, generator=gen).to(dtype).to(device)
    kappa = (10 * torch.rand(b, generator=gen)).to(dtype).to(device)
    kind = case["kind"]
    if kind == "bad_kappa_value":
        kappa = _holding_bad_value(kappa, case["bad"])
        kappa[case["row"] % b] = case["bad"]
        error = ValueError
    elif kind == "kappa_shape":
        shape = (b + 1,) if case["row"] % 2 else (1, b) if b > 1 else (b, 2)
        kappa = torch.rand(shape, dtype=dtype).to(device)
        error = ValueError
    elif kind == "vector_shape":
        target = torch.randn(b, d + 1).to(dtype).to(device)
        error = ValueError
    elif kind == "dim_one":
        mu, target = mu[:, :1], target[:, :1]
        error = ValueError
    elif kind == "zero_dim":
        mu, target, kappa = mu[0, 0], target[0, 0], kappa[0]
        error = ValueError
    elif kind == "int_vector":
        mu = (mu * 10).to(case["int_dtype"])
        error = TypeError
    elif kind == "int_kappa":
        kappa = kappa.to(case["int_dtype"])
        error = TypeError
    elif kind == "bad_dim":
        dim = (1, 0, -3, 2.5, "8", None, True)[case["row"] % 7]
        with pytest.raises((ValueError, TypeError), match="dim must be"):
            getattr(vk, case["normalizer"])(kappa, dim)
        return
    elif kind == "normalizer_bad_kappa":
        kappa = _holding_bad_value(kappa, case["bad"])
        kappa[case["row"] % b] = case["bad"]
        with pytest.raises(ValueError, match="kappa must be finite and >= 0"):
            getattr(vk, case["normalizer"])(kappa, d)
        return
    else:  # normalizer_int
        with pytest.raises(TypeError, match="kappa must have a floating dtype"):
            getattr(vk, case["normalizer"])(kappa.to(case["int_dtype"]), d)
        return
    with pytest.raises(error):
        _call_op(op, mu, target, kappa)
