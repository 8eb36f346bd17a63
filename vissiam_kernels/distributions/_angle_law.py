"""The law of the angle theta in [0, pi] between a sample and the mean direction, and the exact
(implicit) gradient of a sampled angle with respect to the concentration kappa.

Both families put, on the angle theta = arccos(mu . x), the density

    q(theta) = q~(theta) / Z(kappa),   q~(theta) = exp(kappa T(theta)) h(theta),

    vMF:   T = cos(theta),           h = sin^{d-2}(theta)
    PS:    T = log(1 + cos(theta)),  h = sin^{d-2}(theta)       ((1 + t)^kappa (1 - t^2)^{(d-3)/2} dt)

(for PS, q~ = 2^kappa cos^{2 kappa + d - 2}(theta/2) sin^{d-2}(theta/2) 2^{d-2}: the angle of a Beta law).

Implicit reparameterization (Figurnov et al., 2018): a draw theta = F^{-1}(U; kappa) at fixed U has

    d theta / d kappa = -(dF/dkappa)(theta) / q(theta),   dF/dkappa = int_0^theta (T - E T) q.

E T = F E_< + (1 - F) E_> with E_< and E_> the means of T below and above theta, so
int_0^theta (T - E T) q = F (1 - F) (E_< - E_>), and since T decreases in theta,
E_< - E_> = (E_< - T(theta)) + (T(theta) - E_>) is a sum of two positive terms. With
r(phi) = q~(phi) / q~(theta) (the normalizer cancels) and

    J0_< = int_0^theta r,   J1_< = int_0^theta (T(phi) - T(theta)) r      (both > 0)
    J0_> = int_theta^pi r,  J1_> = int_theta^pi (T(theta) - T(phi)) r     (both > 0)

this is

    d theta / d kappa = -(J0_> J1_< + J0_< J1_>) / (J0_< + J0_>)

a combination of positive integrals: no E T (a Bessel ratio or digamma difference whose
subtraction from T loses digits at large kappa), no normalizer, no cancellation. T(phi) - T(theta)
is formed from products of sines (cos phi - cos theta = 2 sin((theta+phi)/2) sin((theta-phi)/2)),
log r from log1p of such ratios. The same integrals give the CDF F(theta) = J0_< / (J0_< + J0_>),
which the samplers' inverse-CDF fallback solves.

Quadrature: Gauss-Legendre on panels whose breakpoints are 0, pi, theta, the mode m +- sigma x_j
(sigma = 1/sqrt(-d^2 log q~/dtheta^2) at the mode) and theta +- h x_j, h = min(sigma, 1/|d log q~/dtheta
(theta)|) (the integrand's decay length at theta; only when h < STEEP_THETA sigma, theta out in a
tail), x_j geometric, clipped
to [0, pi]; for PS also a grading towards pi, where (1 + cos)^kappa log(1 + cos) is not analytic.
Panels never straddle theta, so each lies on one side. Per-side sums are formed around their own
maximum of log r and combined in log space, so a theta far in a tail (r ~ e^{+-1000}) stays finite.
All of it in float64, vectorized over rows. Checked against scipy.integrate.quad of the density
(CDF) and a central difference of that CDF in kappa (d theta/d kappa) in
tests/test_distributions_gradients.py. This is the reference (and the GPU path); CPU tensors go
through the fused op of csrc/include/vissiam/angle_law.h, the same quadrature with the panels that
cannot matter skipped (tests/test_angle_law_kernel.py).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .. import _codes, _dispatch

FAMILIES = ("power_spherical", "vmf")

GAUSS_NODES = 8
"""Gauss-Legendre nodes per panel. With breakpoints 2^j (j < 9) widths from the mode and (where the
integrand is steep at theta, STEEP_THETA) from theta: within 3.9e-9 relative of a 12-node,
0.25 * 1.5^j (j < 17) rule over d in [2, 65536], kappa in [0, 1e7] (200 draws each). Offsets from
0.25 and theta's grading everywhere gave 1.2e-9 with 40% more panels."""

STEEP_THETA = 0.5
"""theta gets its own graded breakpoints when h, the decay length of q~ there, is under this many
sigma (theta out in a tail); nearer the mode, the mode's grading resolves the integrand around theta."""

# Breakpoint offsets on each side of the mode, in units of sigma, and of theta, in units of h.
_MODE_OFFSETS = tuple(2.0**j for j in range(9))  # 1 ... 256
_THETA_OFFSETS = _MODE_OFFSETS
# Grading towards pi for the power spherical family: panels [pi - pi 4^-(j), pi - pi 4^-(j+1)].
_PI_GRADING = tuple(math.pi * 4.0 ** (-j) for j in range(1, 23))  # down to pi 5.7e-14
_PI_GRADING_MAX_DIM = 1 << 30


@functools.cache
def _gauss_legendre(n: int, device_type: str, device_index) -> tuple[torch.Tensor, torch.Tensor]:
    x, w = np.polynomial.legendre.leggauss(n)
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    return (torch.tensor(x, dtype=torch.float64, device=device), torch.tensor(w, dtype=torch.float64, device=device))


_NEAR_MINUS_ONE = -1.0 + 2.0**-53


def _signed(offsets, device) -> torch.Tensor:
    offsets = torch.tensor(offsets, dtype=torch.float64, device=device)
    return torch.cat([-offsets.flip(0), offsets])


def mode_and_width(kappa: torch.Tensor, dim: int, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The mode m of q~ in [0, pi] and its width sigma = (-d^2 log q~ / dtheta^2 at m)^(-1/2); kappa (N,)
    float64 -> (m, sigma), each (N,). sigma is inf where q~ is flat (d = 2, kappa = 0)."""
    if dim == 2:
        # the mode is at 0: vMF log q~ = kappa cos, curvature kappa; PS 2 kappa log cos(theta/2), kappa/2
        curvature = kappa if family == "vmf" else 0.5 * kappa
        return torch.zeros_like(kappa), curvature.rsqrt()
    dm2 = float(dim - 2)
    if family == "vmf":
        # d log q~/dtheta = -kappa sin + (d-2) cot = 0  <=>  kappa c^2 + (d-2) c - kappa = 0, c = cos m
        root = torch.sqrt(dm2 * dm2 + 4 * kappa * kappa)
        c = 2 * kappa / (dm2 + root)
        # 1 - c without cancellation: root - 2 kappa = (d-2)^2 / (root + 2 kappa)
        one_minus_c = (dm2 + dm2 * dm2 / (root + 2 * kappa)) / (dm2 + root)
        sin_sq = one_minus_c * (1 + c)
        mode = torch.atan2(sin_sq.sqrt(), c)
        curvature = kappa * c + dm2 / sin_sq
        return mode, curvature.rsqrt()
    # PS: log q~ = (2 kappa + d - 2) log cos(theta/2) + (d - 2) log sin(theta/2) + const, concave;
    # tan^2(m/2) = (d-2)/(2 kappa + d - 2); curvature at m: kappa + d - 2
    mode = 2 * torch.atan(torch.sqrt(dm2 / (2 * kappa + dm2)))
    return mode, (kappa + dm2).rsqrt()


def _log_q_slope(theta: torch.Tensor, kappa: torch.Tensor, dim: int, family: str) -> torch.Tensor:
    """d log q~ / dtheta at theta (N,)."""
    dm2 = float(dim - 2)
    if family == "vmf":
        slope = -kappa * torch.sin(theta)
        if dim > 2:
            slope = slope + dm2 / torch.tan(theta)
        return slope
    half = 0.5 * theta
    slope = -(kappa + 0.5 * dm2) * torch.tan(half)
    if dim > 2:
        slope = slope + 0.5 * dm2 / torch.tan(half)
    return slope


def _log_ratio_and_contrast(phi, theta, kappa, dim: int, family: str):
    """log r(phi) = log q~(phi) - log q~(theta) and |T(phi) - T(theta)|; phi (N, K), theta and kappa (N, 1)."""
    dm2 = float(dim - 2)
    if family == "vmf":
        # cos phi - cos theta = 2 sin((theta + phi)/2) sin((theta - phi)/2),
        # sin phi - sin theta = -2 cos((theta + phi)/2) sin((theta - phi)/2)
        half_sum, sin_half_gap = 0.5 * (theta + phi), torch.sin(0.5 * (theta - phi))
        contrast = 2 * torch.sin(half_sum) * sin_half_gap
        log_r = kappa * contrast
        if dim > 2:
            # log(sin phi / sin theta) = log1p((sin phi - sin theta) / sin theta)
            d_sin = -2 * torch.cos(half_sum) * sin_half_gap
            log_r = log_r + dm2 * torch.log1p((d_sin / torch.sin(theta)).clamp_min(-1.0))  # rounding: never < -1
        return log_r, contrast.abs()
    # PS, in half angles u = phi/2: T = 2 log cos(u) + log 2, h = 2^{d-2} sin^{d-2}(u) cos^{d-2}(u);
    # cos u - cos v = 2 sin((v + u)/2) sin((v - u)/2), sin u - sin v = -2 cos((v + u)/2) sin((v - u)/2)
    half_theta = 0.5 * theta
    quarter_sum, sin_quarter_gap = 0.25 * (theta + phi), torch.sin(0.25 * (theta - phi))
    # cos(phi/2) > 0 on [0, pi]: a rounded ratio below -1 is clamped to a finite log (0 * log = 0 at d = 2, kappa = 0)
    log_cos_ratio = torch.log1p((2 * torch.sin(quarter_sum) * sin_quarter_gap / torch.cos(half_theta)).clamp_min(_NEAR_MINUS_ONE))
    log_r = (2 * kappa + dm2) * log_cos_ratio
    if dim > 2:
        d_sin = -2 * torch.cos(quarter_sum) * sin_quarter_gap
        log_r = log_r + dm2 * torch.log1p((d_sin / torch.sin(half_theta)).clamp_min(-1.0))
    return log_r, 2 * log_cos_ratio.abs()


def _breakpoints(theta, kappa, dim: int, family: str) -> torch.Tensor:
    """Sorted panel breakpoints (N, P) in [0, pi], theta among them."""
    n = theta.shape[0]
    mode, sigma = mode_and_width(kappa, dim, family)
    slope = _log_q_slope(theta, kappa, dim, family).abs()
    sigma = sigma.clamp(max=math.pi)
    local = torch.minimum(sigma, 1 / slope)  # 1/0 = inf -> sigma
    local = torch.where(torch.isnan(local), sigma, local)
    # the grading around theta only where the integrand is steep there (else the mode's covers it;
    # unused points collapse onto 0: zero-length panels)
    steep = (local < STEEP_THETA * sigma)[:, None]
    around_theta = torch.where(steep, theta[:, None] + local[:, None] * _signed(_THETA_OFFSETS, theta.device), 0.0)
    parts = [
        theta.new_zeros(n, 1),
        theta.new_full((n, 1), math.pi),
        theta[:, None],
        mode[:, None] + sigma[:, None] * _signed(_MODE_OFFSETS, theta.device),
        around_theta,
    ]
    if family == "power_spherical" and dim <= _PI_GRADING_MAX_DIM:
        parts.append((math.pi - theta.new_tensor(_PI_GRADING)).expand(n, -1))
    points = torch.cat(parts, dim=1).clamp(0.0, math.pi)
    return torch.sort(points, dim=1).values


def _masked_row_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row maxima of x over mask, 0 where a row has no finite entry there: (N, K) -> (N, 1)."""
    peak = torch.where(mask, x, torch.full_like(x, -math.inf)).max(dim=1, keepdim=True).values
    return torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))


@torch.no_grad()
def angle_log_integrals(theta: torch.Tensor, kappa: torch.Tensor, dim: int, family: str):
    """log J0_<, log J0_>, log J1_<, log J1_> of the module docstring; theta, kappa (N,) float64 -> 4 x (N,).

    Each side's terms are scaled by that side's largest r, so the logs stay finite when theta is far
    out in a tail and r reaches e^{+-1000} on one side.
    """
    theta = theta.clamp(0.0, math.pi)
    points = _breakpoints(theta, kappa, dim, family)
    nodes, weights = _gauss_legendre(GAUSS_NODES, theta.device.type, theta.device.index)
    lo, hi = points[:, :-1, None], points[:, 1:, None]
    half = 0.5 * (hi - lo)
    phi = (lo + half * (1 + nodes)).flatten(1)  # (N, panels * nodes)
    w = (half * weights).flatten(1)
    # panels never straddle theta: a panel is below theta when its midpoint is
    below = ((lo + hi) < 2 * theta[:, None, None]).expand(-1, -1, nodes.shape[0]).flatten(1)
    log_r, gap = _log_ratio_and_contrast(phi, theta[:, None], kappa[:, None], dim, family)
    # Zero-length panels (breakpoints clipped to 0 or pi) have w = 0, and there log r may be -inf
    # and the gap inf (PS at pi): their terms are set to 0.
    live = w > 0
    shift_below, shift_above = _masked_row_max(log_r, live & below), _masked_row_max(log_r, live & ~below)
    wr = w * torch.exp(log_r - torch.where(below, shift_below, shift_above))
    terms = torch.stack([wr, torch.where(wr > 0, wr * gap, torch.zeros_like(wr))], dim=1)  # (N, 2, K)
    sides = torch.stack([below, ~below], dim=2).to(terms.dtype)  # (N, K, 2)
    sums = torch.bmm(terms, sides)  # (N, 2, 2): [J0, J1] x [below, above]
    logs = torch.log(sums) + torch.cat([shift_below, shift_above], dim=1)[:, None, :]
    return logs[:, 0, 0], logs[:, 0, 1], logs[:, 1, 0], logs[:, 1, 1]


def _chunks(n: int, size: int = 512):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def angle_kappa_derivative(theta: torch.Tensor, kappa: torch.Tensor, dim: int, family: str) -> torch.Tensor:
    """d theta / d kappa at fixed F(theta; kappa): theta, kappa (N,) float64 -> (N,) float64, <= 0.

    On CPU tensors the fused op ``vissiam_kernels::angle_kappa_derivative`` (csrc/include/vissiam/angle_law.h:
    this quadrature, rows in parallel, panels that cannot matter never evaluated; ~15x faster on one
    thread, 2 us per row on an AMD EPYC);
    elsewhere, and under VISSIAM_BACKEND=reference, ``angle_kappa_derivative_reference``.
    ``_dispatch.last_backend()`` says which ran ("cpu" or "reference").
    """
    if _dispatch.select_backend(theta.device) == "cpu":
        return torch.ops.vissiam_kernels.angle_kappa_derivative.default(theta, kappa, dim, _codes.FAMILY_CODES[family])
    if not torch.compiler.is_compiling():
        _dispatch._state["last"] = "reference"  # GPUs have no fused kernel of this quadrature
    return angle_kappa_derivative_reference(theta, kappa, dim, family)


@torch.no_grad()
def angle_kappa_derivative_reference(theta: torch.Tensor, kappa: torch.Tensor, dim: int, family: str) -> torch.Tensor:
    """d theta / d kappa in PyTorch ops: -(J0_> J1_< + J0_< J1_>) / (J0_< + J0_>), evaluated as
    F (1 - F) weights in log space; theta, kappa (N,) float64 -> (N,) float64, <= 0.

    At theta = 0 and pi, F is 0 and 1 whatever kappa: the derivative is 0 there (the integrals would
    give inf / inf).
    """
    out = torch.empty_like(theta)
    for start, stop in _chunks(theta.shape[0]):
        j0_lo, j0_hi, j1_lo, j1_hi = angle_log_integrals(theta[start:stop], kappa[start:stop], dim, family)
        log_j0 = torch.logaddexp(j0_lo, j0_hi)
        out[start:stop] = -(torch.exp(j1_lo + j0_hi - log_j0) + torch.exp(j1_hi + j0_lo - log_j0))
    interior = (theta > 0) & (theta < math.pi)
    return torch.where(interior | torch.isnan(theta), out, torch.zeros_like(out))


@torch.no_grad()
def angle_cdf(theta: torch.Tensor, kappa: torch.Tensor, dim: int, family: str) -> torch.Tensor:
    """F(theta) = P(angle <= theta); theta, kappa (N,) float64 -> (N,) float64."""
    out = torch.empty_like(theta)
    for start, stop in _chunks(theta.shape[0]):
        j0_lo, j0_hi, _, _ = angle_log_integrals(theta[start:stop], kappa[start:stop], dim, family)
        out[start:stop] = torch.exp(j0_lo - torch.logaddexp(j0_lo, j0_hi))
    return out


@torch.no_grad()
def angle_inverse_cdf(u: torch.Tensor, kappa: torch.Tensor, dim: int, family: str, iterations: int = 64):
    """The angle theta with F(theta) = u, by bisection on [0, pi]; u, kappa (N,) float64 -> (N,) float64.

    Deterministic and exact to float64 (64 halvings of [0, pi] leave pi 2^-64 ~ 2e-19); the
    samplers' last resort for rows that a rejection loop has not accepted (rare), and a test oracle.
    """
    lo = torch.zeros_like(u)
    hi = torch.full_like(u, math.pi)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = angle_cdf(mid, kappa, dim, family) < u
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return 0.5 * (lo + hi)
