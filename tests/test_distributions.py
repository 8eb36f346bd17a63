"""The distribution classes (issue 13): shapes and API, log_prob against the power_spherical package
and scipy.stats.vonmises_fisher (float64), KL divergences against Monte-Carlo, float32 stability at
d = 2048, kappa = 1e5, torch.compile, reproducibility, bad arguments. Sampling laws and gradients:
test_distributions_sampling.py, test_distributions_gradients.py."""

from __future__ import annotations

import math

import power_spherical
import pytest
import scipy.stats as st
import torch
from torch.distributions import constraints, kl_divergence

from vissiam_kernels import _dispatch
from vissiam_kernels.distributions import HypersphericalUniform, PowerSpherical, VonMisesFisher

CLASSES = [PowerSpherical, VonMisesFisher]


@pytest.mark.parametrize("cls", CLASSES)
def test_shapes_and_properties(cls):
    loc = torch.randn(4, 3, 6)
    kappa = torch.rand(4, 3) * 10
    q = cls(loc, kappa)
    assert q.batch_shape == (4, 3) and q.event_shape == (6,) and q.has_rsample
    assert isinstance(q.support, constraints.Constraint) and set(q.arg_constraints) == {"loc", "concentration"}
    assert q.rsample((2, 5)).shape == (2, 5, 4, 3, 6) and q.sample().shape == (4, 3, 6)
    assert torch.allclose(q.loc, torch.nn.functional.normalize(loc, dim=-1))
    assert torch.equal(q.mode, q.loc) and q.concentration.shape == (4, 3)
    assert q.log_prob(q.sample()).shape == (4, 3) and q.entropy().shape == (4, 3)
    assert q.mean.shape == (4, 3, 6)
    assert q.support.check(q.sample()).all()
    e = q.expand((7, 4, 3))
    assert e.batch_shape == (7, 4, 3) and e.rsample().shape == (7, 4, 3, 6)
    assert torch.allclose(e.log_prob(e.loc), q.log_prob(q.loc).expand(7, 4, 3))


@pytest.mark.parametrize("cls", CLASSES)
def test_column_concentration_is_read_per_row(cls):
    """A (B, 1) concentration is one value per row: batch (B,), samples (B, D), never (B, B, D)."""
    loc, kappa = torch.randn(5, 4), torch.rand(5, 1) * 3
    q = cls(loc, kappa)
    assert q.batch_shape == (5,) and q.rsample().shape == (5, 4)
    assert torch.equal(q.concentration, kappa[:, 0])
    assert cls(loc, 2.0).concentration.shape == (5,)


@pytest.mark.parametrize("cls", CLASSES)
def test_mean_matches_monte_carlo(cls):
    torch.manual_seed(4)
    q = cls(torch.randn(3, 7, dtype=torch.float64), torch.tensor([0.0, 2.0, 50.0], dtype=torch.float64))
    x = q.sample((20000,))
    # each coordinate of a unit vector has variance <= 1: 5 standard errors is 0.035
    assert (x.mean(0) - q.mean).abs().max() < 0.035


@pytest.mark.parametrize("dim", [3, 16, 128, 2048])
@pytest.mark.parametrize("kappa", [1e-3, 1.0, 100.0, 1e4])  # the package rejects kappa = 0
def test_log_prob_against_power_spherical_package(dim, kappa):
    torch.manual_seed(dim)
    loc = torch.nn.functional.normalize(torch.randn(8, dim, dtype=torch.float64), dim=-1)
    k = torch.full((8,), kappa, dtype=torch.float64)
    x = PowerSpherical(loc, k).sample()
    ours = PowerSpherical(loc, k).log_prob(x)
    assert _dispatch.last_backend() == "cpu"
    theirs = power_spherical.PowerSpherical(loc, k).log_prob(x)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("dim", [3, 16, 128])
@pytest.mark.parametrize("kappa", [0.1, 10.0, 700.0])
def test_log_prob_against_scipy_vonmises_fisher(dim, kappa):
    torch.manual_seed(dim)
    loc = torch.nn.functional.normalize(torch.randn(dim, dtype=torch.float64), dim=0)
    x = VonMisesFisher(loc.expand(8, dim), torch.full((8,), kappa, dtype=torch.float64)).sample()
    ours = VonMisesFisher(loc, torch.tensor(kappa, dtype=torch.float64)).log_prob(x)
    theirs = torch.tensor(st.vonmises_fisher(loc.numpy(), kappa).logpdf(x.numpy()))
    assert torch.isfinite(theirs).all()
    assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-9)


def _monte_carlo_kl(p, q, n=20000):
    x = p.sample((n,))
    diff = (p.log_prob(x) - q.log_prob(x)).double()
    return diff.mean(0), diff.std(0) / math.sqrt(n)


@pytest.mark.parametrize("dim", [3, 64, 512])
def test_kl_against_monte_carlo(dim):
    """Every registered pair, closed form within 5 Monte-Carlo standard errors (plus 1e-9)."""
    torch.manual_seed(dim)
    f64 = {"dtype": torch.float64}
    loc1, loc2 = torch.randn(2, dim, **f64), torch.randn(2, dim, **f64)
    loc2[1] = loc1[1] + 0.1 * loc2[1]
    k1, k2 = torch.tensor([3.0, 0.2 * dim], **f64), torch.tensor([0.5, 0.1 * dim], **f64)
    uniform = HypersphericalUniform(dim, dtype=torch.float64)
    pairs = [
        (PowerSpherical(loc1, k1), uniform),
        (VonMisesFisher(loc1, k1), uniform),
        (VonMisesFisher(loc1, k1), VonMisesFisher(loc2, k2)),
        (PowerSpherical(loc1, k1), VonMisesFisher(loc2, k2)),
    ]
    for p, q in pairs:
        closed = kl_divergence(p, q)
        estimate, standard_error = _monte_carlo_kl(p, q)
        assert closed.shape == (2,)
        assert ((closed - estimate).abs() <= 5 * standard_error + 1e-9).all(), (type(p), type(q), closed, estimate)
    assert torch.equal(kl_divergence(uniform, uniform), torch.zeros(()))


def test_kl_to_uniform_is_zero_at_zero_concentration_and_differentiable():
    k = torch.tensor([0.0, 5.0], dtype=torch.float64, requires_grad=True)
    loc = torch.randn(2, 10, dtype=torch.float64)
    for cls in CLASSES:
        kl = kl_divergence(cls(loc, k), HypersphericalUniform(10, dtype=torch.float64))
        assert abs(kl[0].item()) < 1e-12 and kl[1] > 0
        (grad,) = torch.autograd.grad(kl.sum(), k)
        assert torch.isfinite(grad).all() and grad[1] > 0


@pytest.mark.parametrize("cls", CLASSES)
def test_float32_stable_at_d2048_kappa1e5(cls):
    torch.manual_seed(0)
    loc = torch.randn(16, 2048)
    kappa = torch.full((16,), 1e5, requires_grad=True)
    q32, q64 = cls(loc, kappa), cls(loc.double(), kappa.detach().double())
    x = q32.rsample()
    lp32, lp64 = q32.log_prob(x), q64.log_prob(x.double())
    assert torch.isfinite(x).all() and torch.isfinite(lp32).all()
    assert torch.allclose(lp32.double(), lp64, rtol=1e-6)
    assert torch.allclose(q32.entropy().double(), q64.entropy(), rtol=1e-6)
    kl = kl_divergence(q32, HypersphericalUniform(2048))
    assert torch.allclose(kl.double(), kl_divergence(q64, HypersphericalUniform(2048, dtype=torch.float64)), rtol=1e-6)
    (x[:, 0].sum() + lp32.sum()).backward()
    assert torch.isfinite(kappa.grad).all()


@pytest.mark.parametrize("cls", CLASSES)
def test_reproducible_under_manual_seed(cls):
    loc, kappa = torch.randn(32, 50), torch.rand(32) * 100
    torch.manual_seed(123)
    a = cls(loc, kappa).rsample((3,))
    torch.manual_seed(123)
    b = cls(loc, kappa).rsample((3,))
    assert torch.equal(a, b)


@pytest.mark.parametrize("cls", CLASSES)
def test_torch_compile_fullgraph(cls):
    """log_prob and rsample compile without graph breaks and match eager (same seed, same draw, same
    gradients to loc and concentration)."""
    torch._dynamo.reset()
    loc, kappa, x = torch.randn(6, 33), torch.rand(6) * 20, torch.nn.functional.normalize(torch.randn(6, 33), dim=-1)

    def log_prob(loc, kappa, x):
        return cls(loc, kappa).log_prob(x)

    def rsample(loc, kappa):
        return cls(loc, kappa).rsample()

    compiled_lp = torch.compile(log_prob, fullgraph=True)
    assert torch.allclose(compiled_lp(loc, kappa, x), log_prob(loc, kappa, x), rtol=1e-5, atol=1e-4)
    compiled_rs = torch.compile(rsample, fullgraph=True)
    torch.manual_seed(9)
    compiled = compiled_rs(loc, kappa)
    torch.manual_seed(9)
    assert torch.allclose(compiled, rsample(loc, kappa), atol=1e-6)
    # and its backward (the traced graph holds the angle-derivative op through its fake kernel)
    weights = torch.arange(33.0)
    grads = []
    for fn in (compiled_rs, rsample):
        loc_leaf, kappa_leaf = loc.clone().requires_grad_(True), kappa.clone().requires_grad_(True)
        torch.manual_seed(9)
        (fn(loc_leaf, kappa_leaf) * weights).sum().backward()
        grads.append((loc_leaf.grad, kappa_leaf.grad))
    assert _dispatch.last_backend() == "cpu"
    for got, want in zip(grads[0], grads[1]):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_uniform():
    u = HypersphericalUniform(5)
    x = u.sample((1000,))
    assert x.shape == (1000, 5) and torch.allclose(x.norm(dim=-1), torch.ones(1000))
    log_area = math.log(2) + 2.5 * math.log(math.pi) - math.lgamma(2.5)
    assert torch.allclose(u.log_prob(x), torch.full((1000,), -log_area))
    assert u.entropy().item() == pytest.approx(log_area)
    assert u.expand((3,)).sample().shape == (3, 5)


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_arguments(cls):
    loc = torch.randn(4, 3)
    with pytest.raises(TypeError, match="loc"):
        cls(torch.ones(4, 3, dtype=torch.int64), torch.ones(4))
    with pytest.raises(TypeError, match="loc"):
        cls([1.0, 0.0], torch.ones(()))
    with pytest.raises(ValueError, match="D of loc must be >= 2"):
        cls(torch.ones(4, 1), torch.ones(4))
    with pytest.raises(ValueError, match="concentration must hold one value per row"):
        cls(loc, torch.ones(4, 4))
    with pytest.raises(ValueError, match="concentration must hold one value per row"):
        cls(loc, torch.ones(3))
    with pytest.raises(TypeError, match="concentration"):
        cls(loc, torch.ones(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="concentration must be on the same device"):
        cls(loc, torch.ones(4, device="meta"))
    with pytest.raises(ValueError, match="concentration must be finite and >= 0"):
        cls(loc, torch.tensor([1.0, -1.0, 1.0, 1.0]), validate_args=True)
    with pytest.raises(ValueError, match="concentration must be finite and >= 0"):
        cls(loc, torch.tensor([1.0, math.nan, 1.0, 1.0]), validate_args=True)
    with pytest.raises(ValueError, match="loc must be a non-zero vector"):
        cls(torch.zeros(4, 3), torch.ones(4), validate_args=True)
    q = cls(loc, torch.ones(4), validate_args=True)
    with pytest.raises(ValueError, match=r"value must have shape \(\.\.\., 3\)"):
        q.log_prob(torch.ones(4, 5))
    with pytest.raises(ValueError, match="does not broadcast"):
        q.log_prob(torch.ones(3, 3) / math.sqrt(3))
    with pytest.raises(ValueError, match="unit sphere"):
        q.log_prob(torch.ones(4, 3))
    with pytest.raises(ValueError, match="one sphere"):
        kl_divergence(q, HypersphericalUniform(4))


def test_uniform_bad_arguments():
    with pytest.raises(ValueError, match="dim"):
        HypersphericalUniform(1)
    with pytest.raises(TypeError, match="dtype"):
        HypersphericalUniform(3, dtype=torch.int64)
