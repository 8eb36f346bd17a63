"""Random draws of the angle theta in [0, pi] between a sample and the mean direction, and of the
seed of the tangent noise, as one opaque op: ``torch.ops.vissiam_distributions.draw_angles``.

Everything random happens inside this op, from torch's default generator of the tensors' device,
so ``torch.manual_seed`` reproduces a draw bit for bit, eagerly and under ``torch.compile`` alike
(Inductor would otherwise replace ``torch.randn`` with its own generator), and the data-dependent
rejection loop of the vMF sampler stays out of the traced graph (the fake kernel gives the shapes).
The angle is returned rather than its cosine t: t = cos(theta) and s = sin(theta) are then both
exact to float64 rounding, where s = sqrt(1 - t^2) would lose everything near the mode.

Power spherical, a = (d-1)/2 + kappa, b = (d-1)/2:
    (1 + t)/2 = B ~ Beta(a, b),  B = X/(X+Y), 1 - B = Y/(X+Y) with X ~ Gamma(a), Y ~ Gamma(b)
    B = cos^2(theta/2)  =>  theta = 2 atan2(sqrt(Y), sqrt(X))           (no 1 - B formed)

von Mises-Fisher: Wood (1994), with m = d - 1, in a form without cancellation:
    b = m / (2 kappa + sqrt(4 kappa^2 + m^2)),  x0 = (1-b)/(1+b)
    z = G1/(G1+G2) ~ Beta(m/2, m/2)  (G1, G2 ~ Gamma(m/2)),  w = (1 - (1+b) z)/(1 - (1-b) z)
    1 - w = 2 b G1 / (G2 + b G1),  1 + w = 2 G2 / (G2 + b G1)  =>  theta = 2 atan2(sqrt(b G1), sqrt(G2))
    accept when kappa w + m log(1 - x0 w) - kappa x0 - m log(1 - x0^2) >= log U, U ~ U(0,1); with
    delta = (1 - 2z)/(1 - (1-b) z) = (G2 - G1)/(G2 + b G1) the left side is exactly
        kappa (1 - x0) delta + m log1p(-(1-b) delta / 2)
    (kappa (w - x0) = kappa (1 - x0) delta; (1 - x0 w)/(1 - x0^2) = 1 - (1-b) delta/2), which never
    subtracts two numbers of size kappa or m.
    At kappa = 0, b = 1, x0 = 0: every proposal is accepted (the uniform law). d = 3 uses the inverse
    CDF instead (below).

    Rounds: every pending row draws one proposal per round. The acceptance probability of one
    proposal, measured on a grid d in {2, 4, 5, 16, 129, 2048, 65536} x kappa in [0, 1e7] with 20000
    proposals each, is at least 0.65 (lowest at d = 2, large kappa; 1 at kappa = 0); the tests assert
    it stays above WOOD_MIN_ACCEPTANCE. After WOOD_ROUNDS rounds a row is still pending with
    probability <= (1 - 0.5)^64 ~ 5e-20; such rows (none in practice) get an exact deterministic
    inverse-CDF solve of a fresh uniform (``_angle_law.angle_inverse_cdf``). Every row is therefore
    accepted within WOOD_ROUNDS rounds or solved, at every (d, kappa); the expected number of rounds
    for a batch of N rows is about log(N) / log(1 / 0.35) + 1 (9 at N = 4096).

vMF at d = 3: t has density proportional to exp(kappa t) on [-1, 1], so with U ~ U(0,1)
    1 - w = -log(U + (1 - U) e^{-2 kappa}) / kappa,   1 + w = log(U e^{2 kappa} + 1 - U) / kappa
each formed without cancellation (log1p/expm1 at small kappa, logaddexp at large), and
theta = 2 atan2(sqrt(1 - w), sqrt(1 + w)).
"""

from __future__ import annotations

import torch

from .._sampling_ops import SEED_HIGH, SEED_LOW
from . import _angle_law

WOOD_ROUNDS = 64
"""Rejection rounds of the vMF sampler before the inverse-CDF solve of the rows still pending."""

WOOD_MIN_ACCEPTANCE = 0.5
"""A lower bound on the acceptance probability of one Wood proposal, d in [2, 65536], kappa in [0, 1e7]
(measured >= 0.65; asserted in tests/test_distributions_sampling.py)."""


def power_spherical_angles(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """theta (N,) float64 of PS(kappa, d); kappa (N,) float64. (Its kappa gradient is the implicit one
    of the angle's law, ``_angle_law``, not torch's Gamma reparameterization gradient of X: see
    ``_spherical._AngleCosSin``.)"""
    half = 0.5 * (dim - 1)
    x = torch._standard_gamma(kappa + half)
    y = torch._standard_gamma(torch.full_like(kappa, half))
    return 2 * torch.atan2(y.sqrt(), x.sqrt())


def _vmf_angles_3d(kappa: torch.Tensor) -> torch.Tensor:
    u = torch.rand_like(kappa)
    small = kappa <= 1.0
    # small kappa: 1 - w = (1 - U) [log1p(x)/x] [(1 - e^{-2k})/k], x = -(1 - U)(1 - e^{-2k});
    #              1 + w = U [log1p(y)/y] [(e^{2k} - 1)/k],      y = U (e^{2k} - 1)
    k_small = torch.where(small, kappa, torch.ones_like(kappa))
    down = -torch.expm1(-2 * k_small)
    up = torch.expm1(2 * k_small)
    x = -(1 - u) * down
    y = u * up
    log1p_ratio_x = torch.where(x == 0, torch.ones_like(x), torch.log1p(x) / torch.where(x == 0, torch.ones_like(x), x))
    log1p_ratio_y = torch.where(y == 0, torch.ones_like(y), torch.log1p(y) / torch.where(y == 0, torch.ones_like(y), y))
    zero = k_small == 0
    one_minus_w_small = (1 - u) * log1p_ratio_x * torch.where(zero, torch.full_like(down, 2.0), down / k_small)
    one_plus_w_small = u * log1p_ratio_y * torch.where(zero, torch.full_like(up, 2.0), up / k_small)
    # large kappa: log(U + (1-U) e^{-2k}) and log(U e^{2k} + 1 - U) by logaddexp
    k_large = torch.where(small, torch.ones_like(kappa), kappa)
    log_u, log_1mu = torch.log(u), torch.log1p(-u)
    one_minus_w_large = -torch.logaddexp(log_u, log_1mu - 2 * k_large) / k_large
    one_plus_w_large = torch.logaddexp(log_u + 2 * k_large, log_1mu) / k_large
    one_minus_w = torch.where(small, one_minus_w_small, one_minus_w_large)
    one_plus_w = torch.where(small, one_plus_w_small, one_plus_w_large)
    return 2 * torch.atan2(one_minus_w.clamp_min(0).sqrt(), one_plus_w.clamp_min(0).sqrt())


def wood_proposal(kappa: torch.Tensor, b: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One Wood proposal per row: (theta, accepted), each (N,); kappa, b (N,) float64."""
    m = float(dim - 1)
    g = torch._standard_gamma(torch.full((2, kappa.shape[0]), 0.5 * m, dtype=kappa.dtype, device=kappa.device))
    g1, g2 = g[0], g[1]
    u = torch.rand_like(kappa)
    delta = (g2 - g1) / (g2 + b * g1)
    one_minus_x0 = 2 * b / (1 + b)
    log_acceptance = kappa * one_minus_x0 * delta + m * torch.log1p(-0.5 * (1 - b) * delta)
    return 2 * torch.atan2(torch.sqrt(b * g1), torch.sqrt(g2)), torch.log(u) <= log_acceptance


def wood_b(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """b = (d-1) / (2 kappa + sqrt(4 kappa^2 + (d-1)^2)), without cancellation at large kappa."""
    m = float(dim - 1)
    return m / (2 * kappa + torch.sqrt(4 * kappa * kappa + m * m))


def _wood_angles(kappa: torch.Tensor, dim: int, rounds: int) -> torch.Tensor:
    b = wood_b(kappa, dim)
    theta = torch.empty_like(kappa)
    pending = torch.arange(kappa.shape[0], device=kappa.device)
    for _ in range(rounds):
        if pending.numel() == 0:
            break
        proposal, accept = wood_proposal(kappa[pending], b[pending], dim)
        theta[pending[accept]] = proposal[accept]
        pending = pending[~accept]
    if pending.numel():
        u = torch.rand(pending.shape, dtype=kappa.dtype, device=kappa.device)
        theta[pending] = _angle_law.angle_inverse_cdf(u, kappa[pending], dim, "vmf")
    return theta


def vmf_angles(kappa: torch.Tensor, dim: int, rounds: int = WOOD_ROUNDS) -> torch.Tensor:
    """theta (N,) float64 of vMF(kappa, d); kappa (N,) float64."""
    if dim == 3:
        return _vmf_angles_3d(kappa)
    return _wood_angles(kappa, dim, rounds)


@torch.library.custom_op("vissiam_distributions::draw_angles", mutates_args=())
def draw_angles(kappa: torch.Tensor, dim: int, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The angles theta (N,) float64 of ``family`` at concentrations kappa (N,) float64, then the seed
    (2,) int64 of the tangent noise, which the transform kernel draws itself
    (``_sampling_ops.sphere_sample_seeded``: torch.randn of (N, dim - 1) on the CPU cost 10x the
    memory floor); all from the default generator."""
    if family == "power_spherical":
        theta = power_spherical_angles(kappa, dim)
    elif family == "vmf":
        theta = vmf_angles(kappa, dim)
    else:
        raise ValueError(f"family must be 'power_spherical' or 'vmf'; got {family!r}")
    seed = torch.randint(SEED_LOW, SEED_HIGH, (2,), dtype=torch.int64, device=kappa.device)
    return theta, seed


@draw_angles.register_fake
def _draw_angles_fake(kappa, dim, family):
    return kappa.new_empty(kappa.shape, dtype=torch.float64), kappa.new_empty((2,), dtype=torch.int64)


__all__ = ["WOOD_MIN_ACCEPTANCE", "WOOD_ROUNDS", "draw_angles", "power_spherical_angles", "vmf_angles", "wood_b", "wood_proposal"]
