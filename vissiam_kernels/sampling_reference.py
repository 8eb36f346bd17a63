"""Pure-PyTorch reference of the sampling transform shared by the spherical distributions.

Both samplers (power spherical, von Mises-Fisher) draw, per row, the cosine ``t`` and sine ``s`` of the
angle between the sample and the mean direction (``s`` formed without cancellation, never as
sqrt(1 - t^2)), and a tangent direction from standard normal noise. The sample is

    x = H [t, s v],   v = noise / |noise|  (uniform on S^{D-2}),

with H the Householder reflection taking e1 to mu = loc / max(|loc|, eps). With u = e1 - mu and
|u|^2 = 2 u_1 for a unit mu, H y = y - u (u . y) / u_1; u_1 = 1 - mu_1 is formed as
|mu_tail|^2 / (1 + mu_1) when mu_1 > 0, so it stays exact as mu -> e1, and H = I when u_1 = 0
(mu = e1 exactly: no NaN, unlike a sampler that divides by |e1 - mu|). Written out:

    x_1 = mu_1 t + s (mu_tail . v)
    x_j = s v_j + mu_j (t - s (mu_tail . v) / u_1),   j >= 2.

The fused kernels (C++ on CPU, Triton) compute the same; tests and benchmarks import this one.
"""

from __future__ import annotations

import torch

from .reference import NORMALIZE_EPS


def householder_transform(loc: torch.Tensor, t: torch.Tensor, s: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x = H [t, s noise/|noise|]: loc (N, D); t, s (N,) float64; noise (N, D-1) -> x (N, D) in loc's dtype.

    Differentiable in loc, t and s (not in noise). The arithmetic is float64 whatever loc's dtype.
    """
    dtype = loc.dtype
    mu = loc.to(torch.float64)
    mu = mu / mu.norm(dim=-1, keepdim=True).clamp_min(NORMALIZE_EPS)
    z = noise.to(torch.float64)
    v = z / z.norm(dim=-1, keepdim=True)
    mu_1, mu_tail = mu[:, 0], mu[:, 1:]
    tail_sq = (mu_tail * mu_tail).sum(-1)
    # u_1 = 1 - mu_1 without cancellation (mu_1 -> 1): 1 - mu_1 = |mu_tail|^2 / (1 + mu_1) for a unit mu.
    # The branch not taken divides by 1, not by 1 + mu_1: at mu = -e1 exactly 0/0 there made the backward
    # NaN (torch.where passes a zero gradient into the other branch, and 0 * NaN is NaN).
    positive = mu_1 > 0
    u_1 = torch.where(positive, tail_sq / torch.where(positive, 1 + mu_1, torch.ones_like(mu_1)), 1 - mu_1)
    tail_dot_v = (mu_tail * v).sum(-1)
    # (mu_tail . v) / u_1, taken as 0 where mu = e1 exactly (H = I there).
    ratio = torch.where(u_1 > 0, tail_dot_v / torch.where(u_1 > 0, u_1, torch.ones_like(u_1)), torch.zeros_like(u_1))
    x_1 = mu_1 * t + s * tail_dot_v
    x_tail = s[:, None] * v + mu_tail * (t - s * ratio)[:, None]
    return torch.cat([x_1[:, None], x_tail], dim=-1).to(dtype)
