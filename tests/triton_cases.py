"""The Triton backend's correctness suite, on whatever device its kernels can run.

Not collected by a plain ``pytest`` run (the name has no ``test_`` prefix): TRITON_INTERPRET
must be set before triton is imported, which other test modules do first. It runs

- on CPU tensors through the Triton interpreter, in a fresh process started by
  tests/test_triton_interpreter.py (TRITON_INTERPRET=1, VISSIAM_BACKEND=triton) — in CI;
- on CUDA tensors, collected by tests/test_triton_gpu.py (``gpu`` marker) when a GPU is present.

Shapes are small: the interpreter executes every tl operation in numpy.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

import vissiam_kernels as vk
from vissiam_kernels import _dispatch, _ops, reference

from conftest import first_mismatch, load_golden_rows, relative_to_scale

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("Triton cases need TRITON_INTERPRET=1 or a CUDA device", allow_module_level=True)

triton_ops = pytest.importorskip("vissiam_kernels.triton_ops")
if triton_ops._IMPORT_ERROR is not None:
    pytest.skip(f"triton cannot be imported: {triton_ops._IMPORT_ERROR!r}", allow_module_level=True)

import triton  # noqa: E402  (importable: triton_ops imported it)
import triton.language as tl  # noqa: E402

from vissiam_kernels.triton_kernels import _bfloat16_to_float32, _float32_to_bfloat16  # noqa: E402

OPS = torch.ops.vissiam_triton
FAMILIES = ("power_spherical", "vmf")
NLL = {"power_spherical": vk.power_spherical_nll, "vmf": vk.vmf_nll}
REFERENCE_NLL = {"power_spherical": reference.power_spherical_nll, "vmf": reference.vmf_nll}
CODES = _ops.FAMILY_CODES

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy warnings from masked interpreter lanes

# gradcheck's fast mode (random projections of the Jacobian) under the interpreter, where every
# forward call costs tens of milliseconds; the full Jacobian on a GPU.
GRADCHECK = {"fast_mode": INTERPRETED}


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    """Every case runs with VISSIAM_BACKEND=triton and the default launch table."""
    monkeypatch.setenv("VISSIAM_BACKEND", "triton")
    triton_ops.load()


def ran_triton():
    assert vk.last_backend() == "triton", f"expected the triton backend, ran {vk.last_backend()!r}"


def make_inputs(shape, dim, dtype=torch.float32, kappa_scale=1e3, seed=0, correlation=0.7):
    generator = torch.Generator().manual_seed(seed)
    mu = torch.randn(*shape, dim, generator=generator, dtype=torch.float64)
    target = correlation * mu + (1 - correlation) * torch.randn(*shape, dim, generator=generator, dtype=torch.float64)
    kappa = kappa_scale * torch.rand(*shape, generator=generator, dtype=torch.float64)
    return mu.to(DEVICE, dtype), target.to(DEVICE, dtype), kappa.to(DEVICE, dtype)


def reference_rows(family, mu, target, kappa):
    """float64 reference NLL per row from the same (exactly representable) inputs."""
    mu, target = mu.detach().double().cpu(), target.detach().double().cpu()
    if family == "none":
        return reference.cosine_nll(mu, target, "none")
    return REFERENCE_NLL[family](mu, target, kappa.detach().double().cpu(), "none")


def assert_close(actual, expected, rtol, atol=0.0):
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), first_mismatch(actual, expected, rtol, atol)


def relative_gradient_error(ours, exact):
    ours, exact = ours.detach().double().cpu(), exact.detach().double().cpu()
    return ((ours - exact).norm() / exact.norm().clamp_min(1e-300)).item()


@pytest.fixture
def several_blocks(monkeypatch):
    """D chunks of 16 elements and 4 rows per program: every row spans several blocks."""
    monkeypatch.setattr(triton_ops, "MAX_BLOCK_D", 16)
    monkeypatch.setattr(triton_ops, "BLOCK_ROWS", 4)


# ================================================================ values against the reference
TOLERANCES = [(torch.float64, 1e-12), (torch.float32, 1e-6), (torch.float16, 1e-6), (torch.bfloat16, 1e-6)]
SHAPES = [((1,), 2), ((5,), 3), ((7,), 33), ((2, 3), 17), ((3,), 2048), ((2,), 4097)]


@pytest.mark.parametrize("family", FAMILIES + ("none",))
@pytest.mark.parametrize("dtype, rtol", TOLERANCES, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("shape, dim", SHAPES, ids=str)
def test_nll_matches_float64_reference(family, dtype, rtol, shape, dim):
    """Half inputs are compared with the float64 reference of the same rounded values."""
    mu, target, kappa = make_inputs(shape, dim, dtype)
    if family == "none":
        out = vk.vmf_loss(mu, target, reduction="none")
    else:
        out = NLL[family](mu, target, kappa, reduction="none")
    ran_triton()
    assert out.shape == shape and out.device.type == DEVICE
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(out, reference_rows(family, mu, target, kappa), rtol, atol=1e-6 if family != "none" else 1e-7)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dim", [37, 100])
def test_rows_spanning_several_blocks(several_blocks, family, dim):
    mu, target, kappa = make_inputs((7,), dim, torch.float32, seed=dim)
    assert triton_ops.row_config(dim)[1] == 16
    out = NLL[family](mu, target, kappa, reduction="none")
    assert_close(out, reference_rows(family, mu, target, kappa), 1e-6, atol=1e-6)
    mu.requires_grad_()
    NLL[family](mu, target, kappa).backward()
    mu64 = mu.detach().double().cpu().requires_grad_()
    REFERENCE_NLL[family](mu64, target.double().cpu(), kappa.double().cpu()).backward()
    assert relative_gradient_error(mu.grad, mu64.grad) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_float32_accumulation_option(monkeypatch, family):
    """VISSIAM_TRITON_ACCUMULATE=float32 (GPUs with little FP64): c carries ~1e-7 relative error,
    which kappa * log1p(c) amplifies, so only ~1e-4 relative on the NLL; gradients stay at 1e-5."""
    monkeypatch.setattr(triton_ops, "ACCUMULATE_FLOAT64", False)
    mu, target, kappa = make_inputs((6,), 2048, torch.float32, kappa_scale=5e3, seed=11)
    mu.requires_grad_()
    out = NLL[family](mu, target, kappa, reduction="none")
    assert_close(out, reference_rows(family, mu, target, kappa), 1e-4)
    out.sum().backward()
    mu64 = mu.detach().double().cpu().requires_grad_()
    REFERENCE_NLL[family](mu64, target.double().cpu(), kappa.double().cpu(), "none").sum().backward()
    assert relative_gradient_error(mu.grad, mu64.grad) <= 1e-5


@pytest.mark.parametrize("family", ["none"] + list(FAMILIES))
def test_row_state_matches_the_cpu_kernels(family):
    """The per-row outputs of one op schema agree across backends (float64: to rounding)."""
    if _dispatch.availability_error("cpu") is not None:
        pytest.skip("CPU kernels unavailable")
    mu, target, kappa = make_inputs((9,), 33, torch.float64, seed=4)
    mu[3] = 0.0
    kappas = [] if family == "none" else [kappa]
    nll, state = OPS.spherical_nll([mu], [target], kappas, CODES[family])
    cpu_kappas = [k.cpu() for k in kappas]
    nll_cpu, state_cpu = torch.ops.vissiam_kernels.spherical_nll([mu.cpu()], [target.cpu()], cpu_kappas, CODES[family])
    assert nll.dtype == nll_cpu.dtype and state.dtype == state_cpu.dtype == torch.float64
    assert_close(nll, nll_cpu, 1e-12, 1e-12)
    assert_close(state, state_cpu, 1e-10, 1e-12)


def test_two_views_in_one_launch_match_single_views(monkeypatch):
    launches = []
    real_launch = triton_ops._launch
    monkeypatch.setattr(triton_ops, "_launch", lambda name, *a, **k: (launches.append(name), real_launch(name, *a, **k)))
    p1, z2, k1 = make_inputs((5,), 40, seed=1)
    p2, z1, k2 = make_inputs((3,), 40, seed=2)  # unequal view sizes at the op level
    nll, _ = OPS.spherical_nll([p1, p2], [z2, z1], [k1, k2], CODES["power_spherical"])
    assert launches == ["spherical_nll_kernel"]
    first, _ = OPS.spherical_nll([p1], [z2], [k1], CODES["power_spherical"])
    second, _ = OPS.spherical_nll([p2], [z1], [k2], CODES["power_spherical"])
    assert torch.equal(nll, torch.cat([first, second]))
    # views of different dtypes fall back to one launch each
    launches.clear()
    mixed, _ = OPS.spherical_nll([p1, p2.double()], [z2, z1.double()], [k1, k2], CODES["power_spherical"])
    assert launches == ["spherical_nll_kernel", "spherical_nll_kernel"]
    assert mixed.dtype == torch.float64
    assert_close(mixed[:5], first, 1e-6)  # first: float32 output


@pytest.mark.parametrize("distribution", ["power_spherical", "vmf", "none"])
def test_vi_simsiam_loss_matches_reference(distribution):
    p1, z2, k1 = make_inputs((6,), 48, seed=1)
    p2, z1, k2 = make_inputs((6,), 48, seed=2)
    kappas = (None, None) if distribution == "none" else (k1, k2)
    kl_weight = 0.0 if distribution == "none" else 0.1
    out = vk.vi_simsiam_loss(p1, p2, z1, z2, *kappas, distribution=distribution, kl_weight=kl_weight)
    ran_triton()
    cpu = [x.double().cpu() if x is not None else None for x in (p1, p2, z1, z2, *kappas)]
    expected = reference.vi_simsiam_loss(*cpu, distribution=distribution, kl_weight=kl_weight)
    assert_close(out, expected, 1e-6)


# ================================================================ golden table
# The CPU kernels' standard (tests/test_golden_table.py), one source of truth.
from test_golden_table import FLOAT32_TOLERANCE, FLOAT64_TOLERANCE  # noqa: E402
from test_golden_table import QUANTITY as GOLDEN_QUANTITY  # noqa: E402


@pytest.fixture(scope="module")
def golden_groups():
    groups = {}
    for row in load_golden_rows():
        groups.setdefault((row["family"], row["dim"]), []).append(row)
    return groups


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("column", list(GOLDEN_QUANTITY))
def test_normalizer_quantity_against_golden_table(golden_groups, column, dtype):
    """float32: within 2e-6 max(1, |exact|) (the issue's target); float64: the CPU kernels' tolerances."""
    tolerance = FLOAT32_TOLERANCE if dtype == torch.float32 else FLOAT64_TOLERANCE[column]
    worst = 0.0
    for (family, dim), rows in golden_groups.items():
        kappa = torch.tensor([row["kappa"] for row in rows], dtype=torch.float64).to(DEVICE, dtype)
        exact = torch.tensor([row[column] for row in rows], dtype=torch.float64)
        ours = OPS.normalizer_quantity(kappa, dim, CODES[family], GOLDEN_QUANTITY[column])
        assert ours.dtype == dtype
        error = relative_to_scale(ours.double().cpu() - exact, exact)
        i = int(error.argmax())
        assert error[i] <= tolerance, f"{family} d={dim} kappa={rows[i]['kappa']}: {ours[i].item()!r} vs {exact[i].item()!r}"
        worst = max(worst, error.max().item())
    print(f"worst {column} ({dtype}) error vs mpmath: {worst:.2e}")


def test_kl_uniform_and_public_normalizers(golden_groups):
    """KL = log|S^{d-1}| - H, and the public functions dispatch to the Triton op."""
    from conftest import log_sphere_area

    functions = {"power_spherical": (vk.power_spherical_log_normalizer, vk.power_spherical_kl_uniform),
                 "vmf": (vk.vmf_log_normalizer, vk.vmf_kl_uniform)}
    for (family, dim), rows in golden_groups.items():
        kappa = torch.tensor([row["kappa"] for row in rows], dtype=torch.float64, device=DEVICE)
        log_normalizer, kl = functions[family]
        exact = torch.tensor([row["log_normalizer"] for row in rows], dtype=torch.float64)
        assert_close(log_normalizer(kappa, dim), exact, FLOAT64_TOLERANCE["log_normalizer"], 1e-10)
        ran_triton()
        expected_kl = log_sphere_area(dim) - torch.tensor([row["entropy"] for row in rows], dtype=torch.float64)
        assert (relative_to_scale(kl(kappa, dim).cpu() - expected_kl, expected_kl) <= FLOAT64_TOLERANCE["entropy"]).all()


def test_special_functions_match_the_cpu_header():
    """The tl port against the C++ header, function by function (float64)."""
    if _dispatch.availability_error("cpu") is not None:
        pytest.skip("CPU kernels unavailable")
    grid = torch.cat([torch.logspace(-6, 6, 25, dtype=torch.float64), torch.tensor([0.5, 1.0, 9.99, 10.0, 1023.5])])
    a, b = (t.reshape(-1) for t in torch.meshgrid(grid, grid, indexing="ij"))
    for name in triton_ops.SPECIAL_FUNCTIONS[:3]:
        ours = triton_ops.special_function(name, a.to(DEVICE), b.to(DEVICE)).cpu()
        exact = torch.ops.vissiam_kernels.special_function(name, a, b)
        assert (relative_to_scale(ours - exact, exact) <= 1e-13).all(), name
    x = torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(-6, 7, 40, dtype=torch.float64)])
    for nu in (0.0, 0.5, 2.5, 29.5, 30.0, 1023.0, 32767.0):
        nus = torch.full_like(x, nu)
        for name in triton_ops.SPECIAL_FUNCTIONS[3:]:
            ours = triton_ops.special_function(name, nus.to(DEVICE), x.to(DEVICE)).cpu()
            exact = torch.ops.vissiam_kernels.special_function(name, nus, x)
            assert (relative_to_scale(ours - exact, exact) <= 1e-12).all(), (name, nu)


# ================================================================ gradients
@pytest.mark.parametrize("family", FAMILIES)
def test_gradcheck_nll_all_inputs(family):
    mu, target, kappa = make_inputs((3,), 5, torch.float64, kappa_scale=20.0)
    inputs = tuple(x.clone().requires_grad_() for x in (mu, target, kappa + 0.5))
    assert torch.autograd.gradcheck(lambda m, t, k: NLL[family](m, t, k, reduction="none"), inputs, **GRADCHECK)
    ran_triton()


@pytest.mark.parametrize("distribution, kl_weight", [("power_spherical", 0.1), ("vmf", 0.0), ("none", 0.0)])
def test_gradcheck_vi_simsiam_loss(distribution, kl_weight):
    p1, z2, k1 = make_inputs((3,), 6, torch.float64, kappa_scale=30.0, seed=1)
    p2, z1, k2 = make_inputs((3,), 6, torch.float64, kappa_scale=30.0, seed=2)
    p1, p2, k1, k2 = (x.clone().requires_grad_() for x in (p1, p2, k1 + 0.1, k2 + 0.1))
    if distribution == "none":
        assert torch.autograd.gradcheck(lambda a, b: vk.vi_simsiam_loss(a, b, z1, z2, distribution="none"), (p1, p2), **GRADCHECK)
    else:
        fn = lambda a, b, c, d: vk.vi_simsiam_loss(a, b, z1, z2, c, d, distribution=distribution, kl_weight=kl_weight)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (p1, p2, k1, k2), **GRADCHECK)


@pytest.mark.parametrize("fn", [vk.power_spherical_log_normalizer, vk.vmf_log_normalizer, vk.power_spherical_entropy,
                                vk.vmf_kl_uniform])
@pytest.mark.parametrize("dim", [3, 64])
def test_gradcheck_normalizer_functions(fn, dim):
    kappa = torch.tensor([1e-3, 0.7, 12.0, 350.0], dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda k: fn(k, dim), (kappa,), eps=1e-6, atol=1e-6, rtol=1e-5, **GRADCHECK)
    ran_triton()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dim", [3, 2048])
def test_float32_gradients_match_float64_reference(family, dim):
    mu, target, kappa = make_inputs((4,), dim, torch.float32, kappa_scale=5e3, seed=dim)
    mu.requires_grad_(), target.requires_grad_(), kappa.requires_grad_()
    NLL[family](mu, target, kappa).backward()
    mu64, target64, kappa64 = (x.detach().double().cpu().requires_grad_() for x in (mu, target, kappa))
    REFERENCE_NLL[family](mu64, target64, kappa64).backward()
    for ours, exact in ((mu.grad, mu64.grad), (target.grad, target64.grad), (kappa.grad, kappa64.grad)):
        assert ours.dtype == torch.float32
        assert relative_gradient_error(ours, exact) <= 1e-5


# ---------------------------------------------------------------- the minimum-traffic training path
def fused_nll(mu, target, kappa, family, weight):
    return triton_ops.spherical_nll_training(mu, target, kappa, CODES[family], weight)


@pytest.fixture(params=["function", "op"])
def fused_wrapper(request, monkeypatch):
    """Both autograd wrappers of the fused path: the eager autograd.Function and the op (compile's)."""
    monkeypatch.setattr(triton_ops, "EAGER_FUNCTION", request.param == "function")
    return request.param


@pytest.mark.parametrize("family", FAMILIES + ("none",))
def test_gradcheck_fused_training_path(fused_wrapper, family):
    """gradcheck retains the graph: this covers the out-of-place rescale with arbitrary upstream gradients."""
    p1, z2, k1 = make_inputs((3,), 5, torch.float64, kappa_scale=20.0, seed=1)
    p2, z1, k2 = make_inputs((2,), 5, torch.float64, kappa_scale=20.0, seed=2)
    p1, p2, z1, k1, k2 = (x.clone().requires_grad_() for x in (p1, p2, z1, k1 + 0.5, k2 + 0.5))
    if family == "none":
        fn = lambda a, b, t: fused_nll([a, b], [z2, t], [], family, 0.25)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (p1, p2, z1), **GRADCHECK)
    else:
        fn = lambda a, b, t, c, d: fused_nll([a, b], [z2, t], [c, d], family, 0.25)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (p1, p2, z1, k1, k2), **GRADCHECK)


def test_gradcheck_fused_training_path_full_jacobian(fused_wrapper):
    """The full Jacobian: one-hot upstream gradients through a retained graph, rows with upstream exactly 0."""
    p, z, kappa = make_inputs((2,), 4, torch.float64, kappa_scale=20.0, seed=5)
    p, kappa = p.requires_grad_(), (kappa + 0.5).requires_grad_()
    fn = lambda a, k: fused_nll([a], [z], [k], "power_spherical", 0.5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (p, kappa), fast_mode=False)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("upstream", ["predicted", "scaled", "per_row"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_fused_training_path_backward(family, upstream, dtype):
    """loss.backward() through spherical_nll_with_grad: exact for any upstream gradient; the
    gradient buffer is rescaled in place only where the forward's prediction was wrong."""
    rows, dim = 6, 40
    p, z, kappa = make_inputs((rows,), dim, dtype, seed=7)
    kappa = kappa.float().requires_grad_()
    p.requires_grad_()
    weight = triton_ops.predicted_upstream_weight("mean", rows)
    nll, _, grad_bufs, _, applied = OPS.spherical_nll_with_grad([p], [z], [kappa], CODES[family], weight, True, False)
    buffer_before = grad_bufs[0].clone()
    per_row = torch.linspace(-1.0, 2.0, rows, device=DEVICE)
    if upstream == "predicted":
        nll.mean().backward()
    elif upstream == "scaled":
        (1024.0 * nll.mean()).backward()  # a loss scale, as GradScaler applies
    else:
        nll.backward(per_row)
    assert p.grad.dtype == dtype and kappa.grad.dtype == torch.float32
    if upstream == "predicted":  # nothing to rescale: the buffer was not touched
        assert torch.equal(grad_bufs[0], buffer_before) and (applied == weight).all()
    else:
        assert not (applied == weight).all()
    p64, k64 = p.detach().double().cpu().requires_grad_(), kappa.detach().double().cpu().requires_grad_()
    ref = REFERENCE_NLL[family](p64, z.double().cpu(), k64, "none")
    if upstream == "predicted":
        ref.mean().backward()
    elif upstream == "scaled":
        (1024.0 * ref.mean()).backward()
    else:
        ref.backward(per_row.double().cpu())
    limit = 1e-5 if dtype == torch.float32 else 2.0 ** -7
    assert relative_gradient_error(p.grad, p64.grad) <= limit
    assert relative_gradient_error(kappa.grad, k64.grad) <= 1e-5


@pytest.mark.parametrize("upstream", ["predicted", "scaled"])
def test_fused_gradient_is_the_forward_buffer(fused_wrapper, monkeypatch, upstream):
    """After loss.backward(), p.grad is the very buffer the forward wrote: no copy, no zero-fill;
    with the predicted upstream gradient its rows were not rescaled."""
    written = {}
    forward = triton_ops.spherical_nll_forward

    def recording_forward(*args, **kwargs):
        outputs = forward(*args, **kwargs)
        written["grad"], written["applied"] = outputs[2][0], outputs[4]
        written["copy"] = outputs[2][0].clone()
        return outputs

    monkeypatch.setattr(triton_ops, "spherical_nll_forward", recording_forward)
    p, z, kappa = make_inputs((5,), 24, seed=8)
    p.requires_grad_()
    weight = triton_ops.predicted_upstream_weight("mean", 5)
    nll = fused_nll([p], [z], [kappa], "power_spherical", weight)
    loss = nll.mean() if upstream == "predicted" else 4.0 * nll.mean()
    grad, applied, copy = written.pop("grad"), written.pop("applied"), written.pop("copy")
    buffer_address = grad.data_ptr()
    del grad
    loss.backward()
    assert p.grad.data_ptr() == buffer_address
    if upstream == "predicted":
        assert torch.equal(p.grad, copy) and (applied == weight).all()
    else:
        assert_close(p.grad, 4.0 * copy, 1e-6) and (applied == 4.0 * weight).all()


def test_fused_training_path_with_retained_graph_never_modifies_a_returned_gradient(fused_wrapper):
    p, z, kappa = make_inputs((4,), 24, torch.float64, seed=3)
    p.requires_grad_()
    nll = fused_nll([p], [z], [kappa], "power_spherical", triton_ops.predicted_upstream_weight("mean", 4, 1.0, torch.float64))
    (first,) = torch.autograd.grad(nll.mean(), p, retain_graph=True)
    kept = first.clone()
    (second,) = torch.autograd.grad(3.0 * nll.mean(), p, retain_graph=True)
    (third,) = torch.autograd.grad(nll, p, torch.tensor([1.0, 0.0, 0.0, 2.0], dtype=torch.float64, device=DEVICE))
    assert torch.equal(first, kept)
    assert torch.allclose(second, 3.0 * first, rtol=1e-14)
    p64 = p.detach().cpu().requires_grad_()
    ref = reference.power_spherical_nll(p64, z.cpu(), kappa.cpu(), "none")
    (expected,) = torch.autograd.grad(ref, p64, torch.tensor([1.0, 0.0, 0.0, 2.0], dtype=torch.float64))
    assert torch.allclose(third.cpu(), expected, rtol=1e-10, atol=1e-14)


def test_fused_training_path_without_grad_is_the_plain_op():
    p, z, kappa = make_inputs((3,), 10)
    with torch.no_grad():
        out = fused_nll([p.requires_grad_()], [z], [kappa], "vmf", 1.0)
    expected, _ = OPS.spherical_nll([p.detach()], [z], [kappa], CODES["vmf"])
    assert torch.equal(out, expected)


def test_predicted_upstream_weight_is_what_autograd_delivers():
    for rows in (1, 3, 512, 1000, 65536):
        for factor in (1.0, 0.5):
            x = torch.zeros(rows, device=DEVICE, requires_grad=True)  # CUDA divides by a reciprocal: same value
            (factor * x).mean().backward()
            assert (x.grad == triton_ops.predicted_upstream_weight("mean", rows, factor)).all()
    assert triton_ops.predicted_upstream_weight("sum", 7, 0.5) == 0.5


# ================================================================ extremes
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kappa_value", [0.0, 1e-30, 1e-6, 1e7])
@pytest.mark.parametrize("dim", [2, 3, 2048])
def test_extreme_kappa_and_dimension(family, kappa_value, dim):
    mu, target, _ = make_inputs((2,), dim, torch.float32, seed=3)
    kappa = torch.full((2,), kappa_value, device=DEVICE, requires_grad=True)
    mu.requires_grad_()
    out = NLL[family](mu, target, kappa, reduction="none")
    assert torch.isfinite(out).all()
    assert_close(out, reference_rows(family, mu, target, kappa), 1e-6, 1e-6)
    out.sum().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(kappa.grad).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_antipodal_and_identical_targets(family):
    mu = torch.randn(3, 64, dtype=torch.float64).to(DEVICE)
    kappa = torch.tensor([0.0, 5.0, 1e4], dtype=torch.float64, device=DEVICE)
    for target in (-mu, mu.clone(), 3.0 * mu):
        m = mu.clone().requires_grad_()
        out = NLL[family](m, target, kappa, reduction="none")
        assert torch.isfinite(out).all()
        out.sum().backward()
        assert torch.isfinite(m.grad).all()
    if family == "power_spherical":  # 1 + c floored at 1e-12: NLL = -log C + 27.63 kappa, no gradient to mu
        m = mu.clone().requires_grad_()
        out = vk.power_spherical_nll(m, -mu, kappa, reduction="none")
        floor_term = -kappa * math.log(reference.POWER_SPHERICAL_ONE_PLUS_COS_FLOOR)
        assert_close(out, -vk.power_spherical_log_normalizer(kappa, 64) + floor_term, 1e-9)
        out.sum().backward()
        assert (m.grad == 0).all()
    else:
        out = vk.vmf_nll(mu, -mu, kappa, reduction="none")
        assert_close(out, -vk.vmf_log_normalizer(kappa, 64) + kappa, 1e-12)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fused", [False, True], ids=["op_schema", "fused"])
def test_zero_vectors_follow_f_normalize(fused_wrapper, family, fused):
    mu = torch.randn(3, 8, dtype=torch.float64)
    mu[1] = 0.0
    target = torch.randn(3, 8, dtype=torch.float64)
    target[2] = 0.0
    kappa = torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)
    inputs = [x.clone().to(DEVICE).requires_grad_() for x in (mu, target, kappa)]
    if fused:
        ours = fused_nll([inputs[0]], [inputs[1]], [inputs[2]], family, 1.0)
    else:
        ours = NLL[family](*inputs, reduction="none")
    ours.sum().backward()
    inputs64 = [x.clone().requires_grad_() for x in (mu, target, kappa)]
    expected = REFERENCE_NLL[family](*inputs64, "none")
    expected.sum().backward()
    assert_close(ours, expected, 1e-12)
    for a, b in zip(inputs, inputs64):
        assert_close(a.grad, b.grad, 1e-9, 1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_non_contiguous_and_broadcast_inputs(family):
    base = torch.randn(6, 2 * 40, dtype=torch.float64, device=DEVICE)
    mu = base[:, ::2]  # inner stride 2
    target = torch.randn(40, 6, dtype=torch.float64, device=DEVICE).t()  # transposed
    kappa = torch.rand(12, dtype=torch.float64, device=DEVICE)[::2] * 50  # strided kappa
    expanded = torch.randn(1, 40, dtype=torch.float64, device=DEVICE).expand(6, 40)  # row stride 0
    for t in (target, expanded):
        out = NLL[family](mu, t, kappa, reduction="none")
        expected = REFERENCE_NLL[family](mu.cpu(), t.cpu(), kappa.cpu(), "none")
        assert_close(out, expected, 1e-12)
    scalar_kappa = torch.tensor(7.0, dtype=torch.float64, device=DEVICE)  # expanded: kappa stride 0
    assert_close(NLL[family](mu, target, scalar_kappa, reduction="none"),
                 REFERENCE_NLL[family](mu.cpu(), target.cpu(), torch.full((6,), 7.0, dtype=torch.float64), "none"), 1e-12)
    m = mu.clone().t().contiguous().t().requires_grad_()  # column-major leaf
    NLL[family](m, target, kappa).backward()
    m64 = mu.cpu().clone().requires_grad_()
    REFERENCE_NLL[family](m64, target.cpu(), kappa.cpu()).backward()
    assert_close(m.grad, m64.grad, 1e-10, 1e-12)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_inputs(family, dtype):
    """Half inputs: loss in float32, gradients in the input dtype."""
    mu, target, kappa = make_inputs((4,), 2048, dtype, kappa_scale=2e4)
    mu.requires_grad_(), kappa.requires_grad_()
    out = NLL[family](mu, target, kappa, reduction="none")
    assert out.dtype == torch.float32
    assert_close(out, reference_rows(family, mu, target, kappa), 1e-6, 1e-6)
    out.sum().backward()
    assert mu.grad.dtype == dtype and kappa.grad.dtype == dtype
    mu64, kappa64 = mu.detach().double().cpu().requires_grad_(), kappa.detach().double().cpu().requires_grad_()
    REFERENCE_NLL[family](mu64, target.double().cpu(), kappa64, "none").sum().backward()
    resolution = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    assert_close(mu.grad, mu64.grad, resolution, resolution * mu64.grad.abs().max().item())


@triton.jit
def _bfloat16_round_trip_kernel(x, as_bf16, back, N: tl.constexpr):
    i = tl.arange(0, N)
    b = _float32_to_bfloat16(tl.load(x + i))
    tl.store(as_bf16 + i, b)
    tl.store(back + i, _bfloat16_to_float32(b))


def test_bfloat16_conversions_are_bitwise_torchs():
    """float32 <-> bfloat16 in the kernels (by bits) equals torch's conversion for every kind of value:
    subnormals, the rounding ties, overflow to inf, NaN. Found by the interpreter fuzz run: the
    interpreter's own converter truncated, and turned the subnormal 3.45e-40 into 1.03e-38."""
    generator = torch.Generator().manual_seed(0)
    special = [0.0, -0.0, math.inf, -math.inf, math.nan, 3.3895e38, -3.3895e38, 3.4e38, 1.401298464324817e-45,
               -3.45e-40, 1e-38, 2e-38] + [1.0 + k / 256 for k in range(512)]  # every tie of [1, 3)
    x = torch.cat([torch.randn(3000, generator=generator) * torch.logspace(-45, 38, 3000), torch.tensor(special)])
    x = torch.cat([x, torch.randn(4096 - x.numel(), generator=generator)]).float().to(DEVICE)
    as_bf16 = torch.empty(x.numel(), dtype=torch.bfloat16, device=DEVICE)
    back = torch.empty_like(x)
    _bfloat16_round_trip_kernel[(1,)](x, as_bf16, back, x.numel())
    expected = x.to(torch.bfloat16)
    same = (as_bf16.view(torch.int16) == expected.view(torch.int16)) | (as_bf16.isnan() & expected.isnan())
    assert bool(same.all()), first_mismatch(as_bf16.float().cpu(), expected.float().cpu(), 0.0)
    assert torch.equal(back.nan_to_num(), expected.float().nan_to_num())


def test_bfloat16_gradient_of_a_subnormal_kappa():
    """Fuzz regression (tests/accelerated_fuzz_cases.py): bfloat16 vectors with a subnormal kappa give
    subnormal bfloat16 gradients, which came back up to 17x off before the kernels converted by bits."""
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(10, 2, generator=generator).to(torch.bfloat16).to(DEVICE).requires_grad_()
    target = torch.randn(10, 2, generator=generator).to(torch.bfloat16).to(DEVICE).requires_grad_()
    kappa = torch.full((10,), torch.finfo(torch.float32).smallest_normal / 4, device=DEVICE)
    vk.vmf_nll(mu, target, kappa, reduction="sum").backward()
    ran_triton()
    mu64, target64 = mu.detach().cpu().double().requires_grad_(), target.detach().cpu().double().requires_grad_()
    reference.vmf_nll(mu64, target64, kappa.cpu().double(), reduction="sum").backward()
    for ours, exact in ((mu.grad, mu64.grad), (target.grad, target64.grad)):
        assert ours.dtype == torch.bfloat16
        # one bfloat16 rounding of the exact gradient, in bfloat16's subnormal range: within one unit
        # of the last place there, 2**-133
        error = (ours.cpu().double() - exact).abs().max().item()
        assert error <= 2.0 ** -133 + 2.0 ** -8 * exact.abs().max().item(), error


def test_batch_of_one_leading_dimensions_and_empty_batch():
    mu, target, kappa = make_inputs((1,), 5, torch.float64)
    assert vk.power_spherical_nll(mu, target, kappa, reduction="none").shape == (1,)
    mu, target, kappa = make_inputs((2, 3, 4), 5, torch.float64)
    out = vk.vmf_nll(mu, target, kappa, reduction="none")
    assert out.shape == (2, 3, 4)
    assert_close(out, reference_rows("vmf", mu, target, kappa), 1e-12)
    empty = torch.empty(0, 8, device=DEVICE)
    assert torch.isnan(vk.power_spherical_nll(empty, empty, torch.empty(0, device=DEVICE)))
    assert vk.vmf_loss(empty, empty, reduction="sum").item() == 0.0
    assert vk.vmf_log_normalizer(torch.empty(0, 3, device=DEVICE), 8).shape == (0, 3)


def test_scaled_row_combination_matches_its_definition(several_blocks):
    x = [torch.randn(5, 37, device=DEVICE), torch.randn(3, 37, device=DEVICE)[:, :].t().contiguous().t()]
    y = [torch.randn(5, 37, device=DEVICE), torch.randn(3, 37, device=DEVICE)]
    scale = torch.rand(8, device=DEVICE).expand(8)
    state = torch.randn(8, 4, dtype=torch.float64, device=DEVICE)
    out = OPS.scaled_row_combination(scale, state[:, 0], state[:, 2], x, y)
    s, cx, cy = scale.double(), state[:, 0], state[:, 2]
    rows = [0, 5, 8]
    for v in range(2):
        r = slice(rows[v], rows[v + 1])
        expected = s[r, None] * (cx[r, None] * x[v].double() + cy[r, None] * y[v].double())
        assert out[v].dtype == x[v].dtype and out[v].is_contiguous()
        assert_close(out[v], expected, 1e-6, 1e-6)


# ================================================================ bad input, determinism, dispatch
@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), -1e-30])
def test_negative_nan_or_infinite_kappa(bad):
    if DEVICE != "cpu":
        pytest.skip("on CUDA tensors bad kappa is an asynchronous device assert (see test_bad_kappa_rows_are_nan)")
    mu, target, _ = make_inputs((4,), 8)
    kappa = torch.rand(4)
    kappa[2] = bad
    with pytest.raises(ValueError, match="kappa must be finite and >= 0"):
        vk.power_spherical_nll(mu, target, kappa)
    with pytest.raises(ValueError, match="kappa must be finite and >= 0"):
        vk.vmf_log_normalizer(kappa, 8)
    with pytest.raises(ValueError, match="kappa must be finite and >= 0"):
        fused_nll([mu.requires_grad_()], [target], [kappa], "vmf", 1.0)
    assert torch.isfinite(vk.vmf_nll(mu, target, torch.ones(4)))  # the process stays usable


def test_bad_kappa_rows_are_nan(monkeypatch):
    """Without the host check (CUDA), the kernels never return a finite value for a bad kappa."""
    monkeypatch.setattr(triton_ops, "CHECK_KAPPA", False)
    monkeypatch.setattr(triton_ops, "_check_kappa_values", lambda kappa, where: None)
    mu, target, _ = make_inputs((4,), 8)
    kappa = torch.tensor([1.0, -1.0, float("nan"), float("inf")], device=DEVICE)
    for family in FAMILIES:
        nll, state = OPS.spherical_nll([mu], [target], [kappa], CODES[family])
        assert torch.isfinite(nll[0]) and torch.isnan(nll[1:]).all() and torch.isnan(state[1:]).all()
        q = OPS.normalizer_quantity(kappa, 8, CODES[family], 0)
        assert torch.isfinite(q[0]) and torch.isnan(q[1:]).all()


def test_op_argument_errors():
    mu, target, kappa = make_inputs((3,), 8)
    with pytest.raises(ValueError, match="family must be"):
        OPS.spherical_nll([mu], [target], [kappa], 5)
    with pytest.raises(ValueError, match="kappa\\[0\\] must have shape"):
        OPS.spherical_nll([mu], [target], [kappa[:2]], 2)
    with pytest.raises(ValueError, match="must be >= 2"):
        OPS.spherical_nll([mu[:, :1]], [target[:, :1]], [kappa], 2)
    with pytest.raises(ValueError, match="dim must be >= 2"):
        OPS.normalizer_quantity(kappa, 1, 2, 0)
    with pytest.raises(ValueError, match="scale and coefficients"):
        OPS.scaled_row_combination(kappa[:2], kappa, kappa, [mu], [target])


def test_opcheck_schema_and_autograd_registration():
    """Fake-tensor tracing cannot run the interpreter (the GPU suite runs the full opcheck)."""
    mu, target, kappa = make_inputs((4,), 9)
    mu.requires_grad_(), kappa.requires_grad_()
    utils = ("test_schema", "test_autograd_registration")
    torch.library.opcheck(OPS.spherical_nll.default, ([mu], [target], [kappa], 2), test_utils=utils)
    torch.library.opcheck(OPS.spherical_nll_with_grad.default, ([mu], [target], [kappa], 1, 0.25, True, False),
                          test_utils=utils)
    state = torch.randn(4, 4, dtype=torch.float64, device=DEVICE)
    torch.library.opcheck(OPS.scaled_row_combination.default,
                          (kappa.detach(), state[:, 0], state[:, 2], [mu.detach()], [target]), test_utils=utils)
    torch.library.opcheck(OPS.normalizer_quantity.default, (kappa.detach().double().requires_grad_(), 16, 1, 3),
                          test_utils=utils)


def test_results_are_bitwise_deterministic():
    mu, target, kappa = make_inputs((9,), 300, torch.float32)
    results = []
    for _ in range(2):
        m = mu.clone().requires_grad_()
        out = vk.power_spherical_nll(m, target, kappa, reduction="none")
        out.sum().backward()
        results.append((out.detach(), m.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_load_reports_the_mode():
    assert triton_ops.interpreted() == INTERPRETED
    assert _dispatch.availability_error("triton") is None
