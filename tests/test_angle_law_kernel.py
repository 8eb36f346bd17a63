"""The fused CPU op of d theta / d kappa (csrc/include/vissiam/angle_law.h, csrc/cpu/angle_law_cpu.cpp)
against its float64 reference (vissiam_kernels/distributions/_angle_law.py, itself checked against
scipy.integrate.quad in tests/test_distributions_gradients.py): the same quadrature with the panels
that cannot matter skipped, so the two agree to rounding wherever the sampler puts its angles, and
to 1e-6 far out in the tails (r ~ e^{+-1e7}, where both round log r of size 1e7). Both lane widths
(AVX2 and one node at a time), the end points, determinism, the dispatch, bad arguments.
"""

from __future__ import annotations

import math

import pytest
import torch

from vissiam_kernels import _codes, _dispatch, _extension
from vissiam_kernels.distributions import PowerSpherical, VonMisesFisher, _angle_draws, _angle_law
from vissiam_kernels.distributions._spherical import _AngleCosSin

FAMILIES = ("vmf", "power_spherical")
DIMS = (2, 3, 4, 17, 128, 2049, 65536)
KAPPAS = (0.0, 1e-3, 0.3, 1.0, 10.0, 1e3, 1e6, 1e7)


@pytest.fixture(scope="module")
def op():
    _extension.load_cpu_library()
    return torch.ops.vissiam_kernels.angle_kappa_derivative.default


def _sampled_angles(family: str, dim: int, kappa: float, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.full((n,), kappa, dtype=torch.float64)
    theta = _angle_draws.vmf_angles(k, dim) if family == "vmf" else _angle_draws.power_spherical_angles(k, dim)
    return theta, k


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs() / want.abs().clamp_min(1e-300)).max().item()


@pytest.mark.parametrize("vectorized", [True, False], ids=["lanes", "scalar"])
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_the_reference_on_sampled_angles(op, family, vectorized):
    torch.manual_seed(1)
    for dim in DIMS:
        for kappa in KAPPAS:
            theta, k = _sampled_angles(family, dim, kappa, 64)
            got = op(theta, k, dim, _codes.FAMILY_CODES[family], vectorized)
            want = _angle_law.angle_kappa_derivative_reference(theta, k, dim, family)
            assert torch.isfinite(got).all() and (got <= 0).all(), (family, dim, kappa)
            assert _relative_error(got, want) < 1e-12, (family, dim, kappa)


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_the_reference_across_the_whole_range(op, family):
    """Angles on a grid over [0, pi]: far in the tails r spans e^{+-1e7}; there both are exact to the
    rounding of log r (about 1e-16 of its size), measured 4.5e-8 relative at kappa = 1e7."""
    theta = torch.linspace(0, math.pi, 61, dtype=torch.float64)[1:-1]
    for dim in (2, 3, 5, 128, 65536):
        for kappa in (0.0, 1.0, 1e3, 1e7):
            k = torch.full_like(theta, kappa)
            want = _angle_law.angle_kappa_derivative_reference(theta, k, dim, family)
            for vectorized in (True, False):
                got = op(theta, k, dim, _codes.FAMILY_CODES[family], vectorized)
                assert torch.isfinite(got).all(), (dim, kappa)
                assert _relative_error(got, want) < (1e-6 if kappa >= 1e6 else 1e-9), (dim, kappa, vectorized)


@pytest.mark.parametrize("family", FAMILIES)
def test_end_points_and_nan(op, family):
    """F(0) = 0 and F(pi) = 1 whatever kappa: d theta / d kappa = 0 there (the reference agrees); NaN
    stays NaN."""
    theta = torch.tensor([0.0, math.pi, float("nan")], dtype=torch.float64)
    for dim in (2, 3, 50):
        k = torch.full_like(theta, 5.0)
        got = op(theta, k, dim, _codes.FAMILY_CODES[family])
        assert got[:2].tolist() == [0.0, 0.0] and math.isnan(got[2].item())
        want = _angle_law.angle_kappa_derivative_reference(theta, k, dim, family)
        assert want[:2].tolist() == [0.0, 0.0] and math.isnan(want[2].item())


def test_bitwise_the_same_on_one_and_two_threads(op):
    theta, k = _sampled_angles("vmf", 64, 30.0, 1000)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = op(theta, k, 64, _codes.FAMILY_CODES["vmf"])
        torch.set_num_threads(2)
        two = op(theta, k, 64, _codes.FAMILY_CODES["vmf"])
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_non_contiguous_and_empty(op):
    theta, k = _sampled_angles("power_spherical", 10, 3.0, 20)
    code = _codes.FAMILY_CODES["power_spherical"]
    assert torch.equal(op(theta[::2], k[::2], 10, code), op(theta[::2].contiguous(), k[::2].contiguous(), 10, code))
    assert op(theta[:0], k[:0], 10, code).shape == (0,)


@pytest.mark.parametrize(
    "args, error, words",
    [
        ((torch.zeros(3), torch.zeros(3), 5, 1), TypeError, "float64"),
        ((torch.zeros(3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), 5, 1), ValueError, "one length"),
        ((torch.zeros(3, 1, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64), 5, 1), ValueError, "1-D"),
        ((torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 1, 1), ValueError, "dim"),
        ((torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 5, 0), ValueError, "family"),
    ],
)
def test_bad_arguments(op, args, error, words):
    with pytest.raises(error, match=words):
        op(*args)


def test_fake_kernel(op):
    theta, k = _sampled_angles("vmf", 8, 2.0, 5)
    torch.library.opcheck(op, (theta, k, 8, _codes.FAMILY_CODES["vmf"]), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("cls", [PowerSpherical, VonMisesFisher])
def test_concentration_gradient_runs_the_fused_op_on_cpu(cls, monkeypatch):
    """The concentration's gradient of rsample goes through the op on CPU tensors (the last op that its
    backward runs), through the reference under VISSIAM_BACKEND=reference; the same gradient."""
    loc = torch.randn(6, 16, dtype=torch.float64)
    theta, _ = _sampled_angles(cls.family, 16, 1.0, 6)
    grads = {}
    for backend in ("auto", "reference"):
        monkeypatch.setenv("VISSIAM_BACKEND", backend)
        kappa = torch.linspace(0.5, 40.0, 6, dtype=torch.float64).requires_grad_(True)
        x = cls(loc, kappa).rsample()
        x.sum().backward()
        assert _dispatch.last_backend() == ("cpu" if backend == "auto" else "reference")
        kappa.grad = None
        t, s = _AngleCosSin.apply(theta, kappa, 16, cls.family)
        (t + 2 * s).sum().backward()
        grads[backend] = kappa.grad
    assert torch.allclose(grads["auto"], grads["reference"], rtol=1e-12, atol=0)


def test_the_quadrature_rule_against_a_denser_one(monkeypatch):
    """The rule (8 nodes, panels 2^j sigma from the mode, theta's own grading only in a tail) against
    12 nodes on panels 0.25 * 1.5^j wide around the mode and around theta everywhere: within 1e-8
    relative on sampled angles over d in [2, 65536], kappa in [0, 1e7] (measured 3.9e-9)."""
    torch.manual_seed(4)
    cases = [(family, dim, kappa) for family in FAMILIES for dim in DIMS for kappa in KAPPAS]
    angles = {case: _sampled_angles(*case, 24) for case in cases}
    rule = {case: _angle_law.angle_kappa_derivative_reference(*angles[case], case[1], case[0]) for case in cases}
    dense_offsets = tuple(0.25 * 1.5**j for j in range(17))
    monkeypatch.setattr(_angle_law, "GAUSS_NODES", 12)
    monkeypatch.setattr(_angle_law, "_MODE_OFFSETS", dense_offsets)
    monkeypatch.setattr(_angle_law, "_THETA_OFFSETS", dense_offsets)
    monkeypatch.setattr(_angle_law, "STEEP_THETA", math.inf)
    for (family, dim, kappa), got in rule.items():
        dense = _angle_law.angle_kappa_derivative_reference(*angles[family, dim, kappa], dim, family)
        assert _relative_error(got, dense) < 1e-8, (family, dim, kappa)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", [PowerSpherical, VonMisesFisher])
def test_rsample_and_its_gradients_on_cuda(cls, use_backend):
    """On CUDA tensors: rsample + backward run (the transform by Triton, the kappa gradient by the
    reference quadrature in PyTorch ops on the device), the draw is on the sphere, and d theta / d kappa
    on the device equals the CPU op's for the same angles."""
    use_backend("auto")
    cuda = torch.device("cuda")
    loc = torch.randn(512, 2048, device=cuda)
    kappa = torch.full((512,), 100.0, device=cuda, requires_grad=True)
    x = cls(loc, kappa).rsample()
    x.backward(torch.randn_like(x))
    assert torch.isfinite(kappa.grad).all()
    assert torch.allclose(x.norm(dim=-1), torch.ones(512, device=cuda), atol=1e-5)
    theta, k = _sampled_angles(cls.family, 2048, 100.0, 512)
    on_device = _angle_law.angle_kappa_derivative(theta.to(cuda), k.to(cuda), 2048, cls.family)
    assert _dispatch.last_backend() == "reference"
    on_cpu = _angle_law.angle_kappa_derivative(theta, k, 2048, cls.family)
    assert _relative_error(on_device.cpu(), on_cpu) < 1e-12
