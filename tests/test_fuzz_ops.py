"""Property-based fuzzing of every public op on the CPU backend (issue 8).

Hypothesis draws shapes (B in [0, 300], D in [2, 5000], extra leading dimensions), memory layouts
(contiguous, transposed, strided, storage offset, expanded/broadcast views), dtypes (float16,
bfloat16, float32, float64) and concentrations (0, subnormals, 1e-30, 1e7, ordinary values). Every
call must either return finite values that match ``vissiam_kernels.reference`` evaluated in float64
on the very same (already rounded) input values, or raise the documented ValueError/TypeError.
Gradients are checked against the float64 reference's autograd too.

Tolerances (|ours - reference| <= tol * max(1, |reference|)):
- NLL / losses: 1e-6 (the kernels compute row sums and per-row math in float64; the result is
  rounded once to float32 for float32/half inputs, 6e-8) and 1e-10 for float64 results.
- normalizers/entropies/KL: 2e-6 for float32 results (tests/test_golden_table.py's target) and
  2e-9 for float64 (the golden table's float64 entropy tolerance 1e-9, plus the reference's own error).
- gradients come back in the input dtype: compared with the float64 reference's gradient rounded
  to that dtype, within a few units of that dtype's precision, scaled by the tensor's largest entry.
Random invalid inputs must raise ValueError/TypeError.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vissiam_kernels as vk
from vissiam_kernels import reference

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LAYOUTS = ("contiguous", "transposed", "strided", "offset", "expanded")
KAPPA_FORMS = ("rows", "rows1", "scalar", "python", "strided", "expanded")
# elements of a kappa tensor are drawn from these kinds, row by row
SPECIAL_KAPPAS = ("zero", "subnormal", "1e-30", "1e7", "uniform", "loguniform")

FUZZ = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NLL_RTOL = {torch.float32: 1e-6, torch.float64: 1e-10}
NORMALIZER_RTOL = {torch.float32: 2e-6, torch.float64: 2e-9}
# relative precision of a gradient delivered in each dtype (a few ulps of the rounded result,
# plus float32 intermediates for half inputs)
GRAD_RTOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 2e-5, torch.float64: 1e-9}

ELEMENT_BUDGET = 1_500_000  # B * D of one view: (300, 5000) is allowed; most draws are far smaller


@pytest.fixture(autouse=True)
def cpu_backend(monkeypatch):
    monkeypatch.setenv("VISSIAM_BACKEND", "cpu")
    yield


# ---------------------------------------------------------------- strategies
@st.composite
def row_shapes(draw, max_rows=300):
    """(rows_shape, D): rows_shape has 0-2 extra leading dims; total rows <= max_rows."""
    dim = draw(st.one_of(st.integers(2, 64), st.integers(65, 5000), st.sampled_from([2, 3, 4096, 4097, 5000])))
    max_b = max(0, min(max_rows, ELEMENT_BUDGET // dim))
    extra = draw(st.integers(0, 2))
    if extra == 0:
        return (draw(st.integers(0, max_b)),), dim
    lead = tuple(draw(st.integers(0, 4)) for _ in range(extra))
    inner = max(1, math.prod(d for d in lead if d) or 1)
    b = draw(st.integers(0, max(0, max_b // inner)))
    return lead + (b,), dim


def _lay_out(base_values: torch.Tensor, shape, layout: str, generator) -> torch.Tensor:
    """A tensor of logical ``shape`` with the values of ``base_values`` (float64, contiguous ``shape``)
    viewed through ``layout``; the dtype is that of ``base_values``."""
    dtype = base_values.dtype
    if layout == "contiguous":
        return base_values.clone()
    if layout == "transposed":
        dims = tuple(range(len(shape)))[::-1]
        return base_values.permute(dims).contiguous().permute(dims)  # same values, reversed strides
    if layout == "strided":
        wide = torch.zeros(*shape[:-1], 2 * shape[-1] + 1, dtype=dtype)
        view = wide[..., 1::2]
        view.copy_(base_values)
        return view
    if layout == "offset":
        offset = int(torch.randint(1, 17, (), generator=generator))
        flat = torch.zeros(base_values.numel() + offset, dtype=dtype)
        view = flat[offset:].view(shape)
        view.copy_(base_values)
        assert view.storage_offset() == offset
        return view
    if layout == "expanded":  # one row broadcast to every row (stride 0 over the rows)
        row = base_values.reshape(-1, shape[-1])[:1].clone() if base_values.numel() else torch.ones(1, shape[-1], dtype=dtype)
        return row.reshape((1,) * (len(shape) - 1) + (shape[-1],)).expand(shape)
    raise AssertionError(layout)


def _vectors(shape, dtype, layout, generator, kind):
    values = torch.randn(*shape, generator=generator, dtype=torch.float64)
    if kind == "tiny":  # norms near and below F.normalize's eps
        values = values * 1e-13
    elif kind == "zero_rows" and values.numel():
        rows = values.reshape(-1, shape[-1])
        rows[:: 3] = 0.0
    elif kind == "huge" and dtype in (torch.float32, torch.float64):
        values = values * 1e30
    return _lay_out(values.to(dtype), shape, layout, generator)


def _kappa_values(rows_shape, dtype, generator, kinds) -> torch.Tensor:
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


def _kappa_argument(values: torch.Tensor, form: str):
    """(argument passed to the op, per-row kappa tensor that the op will see)."""
    rows_shape = values.shape
    if form == "rows":
        return values, values
    if form == "rows1":
        return values.unsqueeze(-1), values
    if form == "strided":
        wide = torch.zeros(*rows_shape[:-1], 2 * rows_shape[-1], dtype=values.dtype)
        wide[..., ::2] = values
        return wide[..., ::2], values
    first = values.reshape(-1)[:1] if values.numel() else torch.ones(1, dtype=values.dtype)
    if form == "scalar":
        return first.reshape(()).clone(), first.reshape(()).expand(rows_shape)
    if form == "expanded":
        return first.reshape((1,) * len(rows_shape)).expand(rows_shape), first.reshape(()).expand(rows_shape)
    if form == "python":  # check_kappa makes a default-dtype tensor of a Python number
        as_tensor = torch.tensor(float(first), dtype=torch.get_default_dtype())
        return float(first), as_tensor.expand(rows_shape)
    raise AssertionError(form)


@st.composite
def nll_cases(draw, max_rows=300):
    rows_shape, dim = draw(row_shapes(max_rows))
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


def build_nll_inputs(case):
    gen = torch.Generator().manual_seed(case["seed"])
    shape, dtype = case["shape"], case["dtype"]
    kind = case["vector_kind"]
    mu = _vectors(shape, dtype, case["mu_layout"], gen, "normal" if kind == "antipodal" else kind)
    if kind == "antipodal":
        target = _lay_out((-mu.double()).to(dtype).contiguous(), shape, case["target_layout"], gen) if mu.numel() else mu.clone()
    else:
        target = _vectors(shape, case["target_dtype"] or dtype, case["target_layout"], gen, kind)
    kappa_vals = _kappa_values(case["rows_shape"], case["kappa_dtype"], gen, case["kappa_kinds"])
    kappa_arg, kappa_rows = _kappa_argument(kappa_vals, case["kappa_form"])
    return mu, target, kappa_arg, kappa_rows


def expected_loss_dtype(*tensors):
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def assert_close(actual, expected, rtol, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    a, e = actual.double(), expected.double()
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
    unit_max = lambda x: (x / x.norm(dim=-1, keepdim=True).clamp_min(reference.NORMALIZE_EPS)).abs().amax(-1)
    shared = weight.abs() * dcos * (unit_max(mu64) + unit_max(target64))
    norm = lambda x: x.norm(dim=-1).clamp_min(reference.NORMALIZE_EPS)
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


def _invalid(kappa_rows) -> bool:
    return bool((~torch.isfinite(kappa_rows)).any() | (kappa_rows < 0).any())


NLL_OPS = {
    "power_spherical_nll": ("power_spherical", lambda m, t, k, r: vk.power_spherical_nll(m, t, k, r), True),
    "vmf_nll": ("vmf", lambda m, t, k, r: vk.vmf_nll(m, t, k, r), True),
    "vmf_loss_vmf": ("vmf", lambda m, t, k, r: vk.vmf_loss(m, t, k, reduction=r), False),
    "vmf_loss_ps": ("power_spherical", lambda m, t, k, r: vk.vmf_loss(m, t, k, distribution="power_spherical", reduction=r), False),
    "power_spherical_loss": ("power_spherical", lambda m, t, k, r: vk.power_spherical_loss(m, t, k, reduction=r), False),
    "vmf_loss_no_kappa": ("none", lambda m, t, k, r: vk.vmf_loss(m, t, reduction=r), False),
}


def check_nll_op(op_name, case):
    family, fn, target_grad = NLL_OPS[op_name]
    mu, target, kappa_arg, kappa_rows = build_nll_inputs(case)
    reduction = case["reduction"]
    mu.requires_grad_(True)
    if target_grad:
        target.requires_grad_(True)
    kappa_tensor_arg = isinstance(kappa_arg, torch.Tensor)
    if family != "none" and kappa_tensor_arg:
        kappa_arg.requires_grad_(True)
    if family != "none" and _invalid(kappa_rows):
        with pytest.raises(ValueError, match="kappa must be finite and >= 0"):
            fn(mu, target, kappa_arg, reduction)
        return
    out = fn(mu, target, kappa_arg, reduction)
    assert vk.last_backend() == "cpu"
    vec_dtype = torch.promote_types(mu.dtype, target.dtype)
    tensors = (mu, target) if family == "none" else (mu, target, kappa_rows)
    loss_dtype = expected_loss_dtype(*[t.to(vec_dtype) if t is not kappa_rows else t for t in tensors])
    assert out.dtype == loss_dtype, f"{op_name}: loss dtype {out.dtype}, expected {loss_dtype}"

    mu64 = mu.detach().double().requires_grad_(True)
    target64 = target.detach().to(vec_dtype).double().requires_grad_(target_grad)
    kappa64 = kappa_rows.detach().double().clone().requires_grad_(family != "none")
    rows64 = _reference_rows(family, mu64, target64, kappa64)
    expected = reference.reduce(rows64, reduction)
    rows = math.prod(case["rows_shape"])
    if rows == 0 and reduction == "mean":  # documented: torch's mean of nothing
        assert out.isnan().all() and out.shape == ()
        return
    assert_close(out, expected, NLL_RTOL[loss_dtype], op_name)

    upstream = torch.rand(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(case["seed"] + 1)) + 0.5
    out.backward(upstream.to(out.dtype))
    expected.backward(upstream)
    scales = gradient_term_scales(family, mu64.detach(), target64.detach(), kappa64.detach(), upstream, reduction)
    assert_grad_close(mu.grad, mu64.grad, mu.dtype, f"{op_name} grad mu", scales["mu"])
    if target_grad:
        assert_grad_close(target.grad, target64.grad, target.dtype, f"{op_name} grad target", scales["target"])
    else:
        assert target.grad is None
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


@pytest.mark.parametrize("op_name", list(NLL_OPS))
@FUZZ
@given(case=nll_cases())
def test_fuzz_nll_ops(op_name, case):
    check_nll_op(op_name, case)


# ---------------------------------------------------------------- vi_simsiam_loss
@st.composite
def vi_cases(draw):
    case = draw(nll_cases(max_rows=150))
    case["distribution"] = draw(st.sampled_from(("power_spherical", "vmf", "none")))
    case["kl_weight"] = draw(st.sampled_from((0.0, 1e-3, 0.5))) if case["distribution"] != "none" else 0.0
    return case


@FUZZ
@given(case=vi_cases())
def test_fuzz_vi_simsiam_loss(case):
    gen_case = dict(case)
    p1, z2, k1_arg, k1_rows = build_nll_inputs(gen_case)
    gen_case["seed"] = case["seed"] + 7
    p2, z1, k2_arg, k2_rows = build_nll_inputs(gen_case)
    distribution, kl_weight, reduction = case["distribution"], case["kl_weight"], case["reduction"]
    p1.requires_grad_(True)
    p2.requires_grad_(True)
    if distribution == "none":
        k1_arg = k2_arg = None
    if distribution != "none" and (_invalid(k1_rows) or _invalid(k2_rows)):
        with pytest.raises(ValueError, match="must be finite and >= 0"):
            vk.vi_simsiam_loss(p1, p2, z1, z2, k1_arg, k2_arg, distribution=distribution, kl_weight=kl_weight,
                               reduction=reduction)
        return
    out = vk.vi_simsiam_loss(p1, p2, z1, z2, k1_arg, k2_arg, distribution=distribution, kl_weight=kl_weight,
                             reduction=reduction)
    assert vk.last_backend() == "cpu"
    vec = torch.promote_types(p1.dtype, z2.dtype)
    p1_64, p2_64 = (p.detach().double().requires_grad_(True) for p in (p1, p2))
    z1_64, z2_64 = z1.to(vec).double(), z2.to(vec).double()
    k1_64, k2_64 = (None, None) if distribution == "none" else (k1_rows.double(), k2_rows.double())
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
    upstream = torch.rand(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(case["seed"])) + 0.5
    out.backward(upstream.to(out.dtype))
    expected.backward(upstream)
    family = distribution
    zero = torch.zeros(())
    s1 = gradient_term_scales(family, p1_64.detach(), z2_64, zero if k1_64 is None else k1_64, upstream * 0.5, reduction)
    s2 = gradient_term_scales(family, p2_64.detach(), z1_64, zero if k2_64 is None else k2_64, upstream * 0.5, reduction)
    assert_grad_close(p1.grad, p1_64.grad, p1.dtype, "vi_simsiam_loss grad p1", s1["mu"])
    assert_grad_close(p2.grad, p2_64.grad, p2.dtype, "vi_simsiam_loss grad p2", s2["mu"])


# ---------------------------------------------------------------- normalizers
NORMALIZERS = (
    "power_spherical_log_normalizer",
    "vmf_log_normalizer",
    "power_spherical_entropy",
    "vmf_entropy",
    "power_spherical_kl_uniform",
    "vmf_kl_uniform",
)


@st.composite
def normalizer_cases(draw):
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.integers(0, 40)) for _ in range(ndim))
    return {
        "shape": shape,
        "dim": draw(st.one_of(st.integers(2, 64), st.integers(65, 5000), st.sampled_from([2, 3, 4, 2048, 4097, 65536]))),
        "dtype": draw(st.sampled_from(DTYPES)),
        "layout": draw(st.sampled_from(("contiguous", "transposed", "strided", "offset", "expanded")) if ndim else st.just("contiguous")),
        "kinds": tuple(draw(st.lists(st.sampled_from(SPECIAL_KAPPAS), min_size=1, max_size=4, unique=True))),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


@pytest.mark.parametrize("name", NORMALIZERS)
@settings(max_examples=40, deadline=None, database=None, derandomize=True)
@given(case=normalizer_cases())
def test_fuzz_normalizers(name, case):
    gen = torch.Generator().manual_seed(case["seed"])
    shape, dtype = case["shape"], case["dtype"]
    values = _kappa_values(shape, dtype, gen, case["kinds"]).double()
    kappa = _lay_out(values.to(dtype), shape, case["layout"], gen) if shape else values.to(dtype)
    dim = case["dim"]
    fn, ref = getattr(vk, name), getattr(reference, name)
    if _invalid(kappa):
        with pytest.raises(ValueError, match="kappa must be finite and >= 0"):
            fn(kappa, dim)
        return
    leaf = kappa.detach().clone().requires_grad_(True) if case["layout"] != "expanded" else kappa.requires_grad_(True)
    out = fn(leaf, dim)
    assert vk.last_backend() == "cpu"
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == out_dtype and out.shape == kappa.shape
    k64 = kappa.detach().double().clone().requires_grad_(True)
    expected = ref(k64, dim)
    assert_close(out, expected, NORMALIZER_RTOL[out_dtype], f"{name}(d={dim})")
    if out.numel() and case["layout"] != "expanded":
        out.sum().backward()
        expected.sum().backward()
        # d/dkappa is checked against the golden table elsewhere; here: finite, no NaN, close to the reference
        # measured like the values: relative to max(1, |exact|) (term_scale 1)
        assert_grad_close(leaf.grad, k64.grad, dtype, f"{name}(d={dim}) grad", term_scale=1.0)


# ---------------------------------------------------------------- invalid input
@st.composite
def invalid_cases(draw):
    b = draw(st.integers(1, 20))
    d = draw(st.integers(2, 40))
    kind = draw(st.sampled_from(("bad_kappa_value", "kappa_shape", "vector_shape", "dim_one", "zero_dim",
                                 "int_vector", "int_kappa", "bad_dim", "normalizer_bad_kappa", "normalizer_int")))
    return {
        "b": b, "d": d, "kind": kind,
        "bad": draw(st.sampled_from((-1.0, -1e-30, -5e-324, float("nan"), float("inf"), float("-inf"), -1e7))),
        "dtype": draw(st.sampled_from(DTYPES)),
        "int_dtype": draw(st.sampled_from((torch.int8, torch.int32, torch.int64, torch.bool, torch.uint8))),
        "op": draw(st.sampled_from(("power_spherical_nll", "vmf_nll", "vmf_loss", "power_spherical_loss", "vi_simsiam_loss"))),
        "normalizer": draw(st.sampled_from(NORMALIZERS)),
        "row": draw(st.integers(0, 19)),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


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


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(case=invalid_cases())
def test_fuzz_invalid_inputs_raise(case):
    gen = torch.Generator().manual_seed(case["seed"])
    b, d, dtype, op = case["b"], case["d"], case["dtype"], case["op"]
    mu = torch.randn(b, d, generator=gen).to(dtype)
    target = torch.randn(b, d, generator=gen).to(dtype)
    kappa = (10 * torch.rand(b, generator=gen)).to(dtype)
    kind = case["kind"]
    if kind == "bad_kappa_value":
        kappa = kappa.double() if dtype != torch.float64 and case["bad"] == -5e-324 else kappa
        kappa[case["row"] % b] = case["bad"]
        error = ValueError
    elif kind == "kappa_shape":
        kappa = torch.rand(b + 1, dtype=dtype) if case["row"] % 2 else torch.rand(1, b, dtype=dtype) if b > 1 else torch.rand(b, 2, dtype=dtype)
        error = ValueError
    elif kind == "vector_shape":
        target = torch.randn(b, d + 1).to(dtype)
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
        kappa = kappa.double() if dtype != torch.float64 and case["bad"] == -5e-324 else kappa
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


# ---------------------------------------------------------------- regression tests from the fuzzing
@pytest.mark.parametrize("upstream", [0.7, 2.0])
def test_regression_rescaled_overflowing_half_gradient_is_inf_not_nan(upstream):
    """Found by test_fuzz_nll_ops: a float16 gradient that overflows (kappa = 1e7) came back NaN, not
    inf, when the upstream gradient differed from the predicted one: rescale_rows_ computed
    factor * g + 0 * g, and 0 * inf = NaN. torch (and the reference) give inf there."""
    mu = torch.tensor([[1.5410, -0.2935]], dtype=torch.float16, requires_grad=True)
    target = torch.tensor([[-0.7192, -0.4033]], dtype=torch.float16)
    out = vk.vmf_nll(mu, target, torch.tensor([1e7]), reduction="none")
    assert vk.last_backend() == "cpu"
    out.backward(torch.full_like(out, upstream))
    mu_ref = mu.detach().clone().requires_grad_(True)
    reference.vmf_nll(mu_ref, target, torch.tensor([1e7]), "none").backward(torch.full((1,), upstream))
    assert torch.isinf(mu_ref.grad).all()
    assert not mu.grad.isnan().any()
    assert torch.equal(mu.grad, mu_ref.grad)  # +-inf with the reference's signs
