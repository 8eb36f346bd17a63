"""The samplers' laws (issue 13): Kolmogorov-Smirnov tests of the marginal t = loc . x against its
exact CDF, of the tangent part near the mode, and of the tangent direction; samples on the sphere;
Wood's acceptance rate.

Power: every KS test uses N = 3000 draws and fails below p = 1e-3, i.e. at a KS distance above
~1.95/sqrt(N) = 0.036. Getting kappa wrong by 10% moves the CDF of t by more than 0.05 at every
(d, kappa > 0) here (the law's spread in t is of the order of its mean shift), as does a wrong
dimension, a missing factor (1 - t^2)^{(d-3)/2}, or drawing t from the wrong family (vMF and PS
differ by > 0.1 in KS distance at kappa ~ d). Seeds are fixed, so the outcome is deterministic; with
a correct sampler each test would fail by chance with probability 1e-3 for a fresh seed.

Oracles: power spherical, (1 + t)/2 ~ Beta(a, b) (scipy.stats.beta), and in angle form
sin^2(theta/2) ~ Beta(b, a), exact near the mode; vMF, the closed form at d = 3 and otherwise the
CDF by quadrature (``_angle_law.angle_cdf``, itself checked against scipy.integrate.quad in
test_distributions_gradients.py), independent of the rejection sampler.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st
import torch

from vissiam_kernels import _dispatch
from vissiam_kernels.distributions import PowerSpherical, VonMisesFisher, _angle_draws, _angle_law

N = 3000
P_MIN = 1e-3
DIMS = (2, 3, 4, 17, 128, 2049, 65536)
KAPPAS = (0.0, 0.3, 10.0, 1e3, 1e6)


def _theta_cdf(theta: np.ndarray, kappa: float, dim: int, family: str) -> np.ndarray:
    """P(angle <= theta), exact in the tails: PS by Beta(b, a) of sin^2(theta/2); vMF at d = 3 in
    closed form; vMF otherwise by quadrature."""
    if family == "power_spherical" or kappa == 0:  # at kappa = 0 both are uniform: the Beta form
        b = 0.5 * (dim - 1)
        return st.beta.cdf(np.sin(0.5 * theta) ** 2, b, b + kappa)
    if dim == 3 and kappa > 0:
        # t has density ~ exp(kappa t): P(t >= cos theta) = -expm1(-kappa (1 - cos theta)) / -expm1(-2 kappa)
        one_minus_t = 2 * np.sin(0.5 * theta) ** 2
        return np.expm1(-kappa * one_minus_t) / np.expm1(-2 * kappa)
    th = torch.tensor(theta, dtype=torch.float64)
    return _angle_law.angle_cdf(th, torch.full_like(th, kappa), dim, family).numpy()


def _draw_theta(family: str, kappa: float, dim: int, n: int = N) -> np.ndarray:
    k = torch.full((n,), kappa, dtype=torch.float64)
    if family == "power_spherical":
        return _angle_draws.power_spherical_angles(k, dim).numpy()
    return _angle_draws.vmf_angles(k, dim).numpy()


@pytest.mark.parametrize("family", ["power_spherical", "vmf"])
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("kappa", KAPPAS)
def test_angle_law_ks(family, dim, kappa):
    """The drawn angle (hence t = cos theta and the tangent part sin theta, both formed from it) has
    the exact law, d from 2 to 65536 (odd and even), kappa from 0 to 1e6."""
    torch.manual_seed(1000 * dim + int(kappa) % 997)
    theta = _draw_theta(family, kappa, dim)
    assert np.all((theta >= 0) & (theta <= math.pi))
    result = st.kstest(theta, lambda th: _theta_cdf(th, kappa, dim, family))
    assert result.pvalue > P_MIN, (family, dim, kappa, result)


@pytest.mark.parametrize("cls", [PowerSpherical, VonMisesFisher])
@pytest.mark.parametrize("dim,kappa", [(2, 3.0), (3, 0.0), (3, 5.0), (16, 40.0), (129, 300.0)])
def test_rsample_marginal_and_tangent_direction(cls, dim, kappa):
    """Through the full rsample (random loc): t = loc . x has the exact law, and the tangent direction
    v = (x - t loc)/|x - t loc| is uniform on S^{d-2}: its component along a fixed unit vector e
    orthogonal to loc satisfies (1 + v.e)/2 ~ Beta((d-2)/2, (d-2)/2) (d >= 4; at d = 3 v.e = cos of a
    uniform angle; at d = 2 v = +-e with probability 1/2 each)."""
    torch.manual_seed(dim)
    loc = torch.nn.functional.normalize(torch.randn(dim, dtype=torch.float64), dim=0)
    x = cls(loc.expand(N, dim), torch.full((N,), kappa, dtype=torch.float64)).sample()
    assert _dispatch.last_backend() == "cpu"
    t = (x @ loc).clamp(-1, 1)
    family = "power_spherical" if cls is PowerSpherical else "vmf"
    assert st.kstest(np.arccos(t.numpy()), lambda th: _theta_cdf(th, kappa, dim, family)).pvalue > P_MIN
    tangent = x - t[:, None] * loc
    v = tangent / tangent.norm(dim=-1, keepdim=True)
    e = torch.randn(dim, dtype=torch.float64)
    e = e - (e @ loc) * loc
    ve = (v @ (e / e.norm())).numpy()
    if dim == 2:
        assert np.allclose(np.abs(ve), 1.0)
        assert st.binomtest(int((ve > 0).sum()), N).pvalue > P_MIN
    elif dim == 3:
        assert st.kstest(ve, lambda c: 1 - np.arccos(np.clip(c, -1, 1)) / math.pi).pvalue > P_MIN
    else:
        half = 0.5 * (dim - 2)
        assert st.kstest(0.5 * (1 + ve), st.beta(half, half).cdf).pvalue > P_MIN


@pytest.mark.parametrize("cls", [PowerSpherical, VonMisesFisher])
@pytest.mark.parametrize("dim", [16, 2048])
def test_tangent_part_near_the_mode_float32(cls, dim):
    """At kappa = 1e7 a float32 t cannot resolve 1 - t (~1e-6 at d = 16): the law of the tangent part
    |x - (loc . x) loc| is tested instead, exact in float32 (loc = e1: the tangent part is |x[1:]|)."""
    torch.manual_seed(7)
    kappa, n = 1e7, N if dim == 16 else 1000
    loc = torch.zeros(n, dim)
    loc[:, 0] = 1
    x = cls(loc, torch.full((n,), kappa)).rsample()
    assert x.dtype == torch.float32
    tangent = x[:, 1:].double().norm(dim=-1).numpy()
    family = "power_spherical" if cls is PowerSpherical else "vmf"
    result = st.kstest(np.arcsin(tangent), lambda th: _theta_cdf(th, kappa, dim, family))
    assert result.pvalue > P_MIN, result


@pytest.mark.parametrize("cls", [PowerSpherical, VonMisesFisher])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_samples_on_the_sphere(cls, dtype):
    torch.manual_seed(3)
    for dim, kappa in ((2, 0.0), (3, 1.0), (300, 1e4), (2048, 1e6)):
        loc = torch.randn(64, dim, dtype=dtype) * 10
        x = cls(loc, torch.full((64,), kappa, dtype=dtype)).rsample((2,))
        assert x.shape == (2, 64, dim) and x.dtype == dtype
        assert (x.double().norm(dim=-1) - 1).abs().max() <= 8 * torch.finfo(dtype).eps, (dim, kappa)


def test_wood_acceptance_rate():
    """One proposal is accepted with probability >= WOOD_MIN_ACCEPTANCE at every (d, kappa) (measured
    >= 0.65; a binomial rate of 20000 proposals has standard error <= 0.0035)."""
    torch.manual_seed(11)
    for dim in (2, 4, 16, 2048, 65536):
        for kappa in (0.0, 1.0, 30.0, 1e3, 1e5, 1e7):
            k = torch.full((20000,), kappa, dtype=torch.float64)
            _, accepted = _angle_draws.wood_proposal(k, _angle_draws.wood_b(k, dim), dim)
            rate = accepted.double().mean().item()
            assert rate >= _angle_draws.WOOD_MIN_ACCEPTANCE + 0.1, (dim, kappa, rate)
            if kappa == 0:
                assert rate == 1.0


def test_wood_rounds_exhausted_falls_back_to_the_exact_inverse_cdf():
    """With no rejection rounds every row takes the inverse-CDF path, which has the same law (100 rows:
    64 bisection steps of a quadrature CDF each are slow; KS then rejects distances above 0.19,
    e.g. kappa off by a factor 2)."""
    torch.manual_seed(5)
    k = torch.full((100,), 20.0, dtype=torch.float64)
    theta = _angle_draws.vmf_angles(k, 10, rounds=0).numpy()
    assert st.kstest(theta, lambda th: _theta_cdf(th, 20.0, 10, "vmf")).pvalue > P_MIN


@pytest.mark.parametrize("cls", [PowerSpherical, VonMisesFisher])
def test_no_nan_at_the_edges(cls):
    """loc = +-e1 exactly, kappa = 0 and 1e7, d = 2 and 65536: finite unit samples and gradients."""
    torch.manual_seed(0)
    for dim in (2, 3, 65536):
        rows = 4
        loc = torch.zeros(rows, dim)
        loc[0, 0], loc[1, 0], loc[2, 0], loc[3, -1] = 1, -1, 1, 1
        loc.requires_grad_(True)
        kappa = torch.tensor([0.0, 1e7, 1e7, 0.0], requires_grad=True)
        x = cls(loc, kappa).rsample()
        assert torch.isfinite(x).all() and ((x.norm(dim=-1) - 1).abs() < 1e-5).all(), dim
        (x * torch.linspace(-1, 1, dim)).sum().backward()
        assert torch.isfinite(loc.grad).all() and torch.isfinite(kappa.grad).all(), dim
        if dim <= 3:  # at kappa = 1e7 >> d the sample sits on loc (1 - t ~ d / kappa)
            assert torch.allclose(x[1:3], loc[1:3].detach(), atol=2e-3)
