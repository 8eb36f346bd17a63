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


# ---------------------------------------------------------------- the seeded sampler's noise
PHILOX_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)
_MASK32 = 0xFFFFFFFF


def _mul_wide(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a * m for uint32 values a held in int64 (a in 16-bit halves so that
    no product leaves int64)."""
    low_part = (a & 0xFFFF) * m  # < 2^48
    high_part = (a >> 16) * m  # < 2^48; a * m = high_part 2^16 + low_part
    middle = ((high_part & 0xFFFF) << 16) + low_part  # < 2^49
    return (high_part >> 16) + (middle >> 32), middle & _MASK32


def philox4x32_10(counter: tuple, key: tuple) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 (Random123) of counters (c0, c1, c2, c3), uint32 values in int64 tensors (or ints),
    under key (k0, k1): the four output words, as int64 tensors."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) for c in counter)
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mul_wide(c0, PHILOX_MULTIPLIERS[0])
        hi1, lo1 = _mul_wide(c2, PHILOX_MULTIPLIERS[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_WEYL[0]) & _MASK32, (k1 + PHILOX_WEYL[1]) & _MASK32
    return c0, c1, c2, c3


def philox_normal(seed: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The seeded sampler's noise (rows, cols) in float64 (csrc/cpu/philox_normal.inc computes it in
    float32): element (i, j) of Box-Muller on Philox4x32-10 at counter (j // 4, i, offset low, offset
    high) under key = seed[0] (64-bit patterns of the two int64 words):

        r = sqrt(-2 log u), u = (x0 >> 1) 2^-31 + 2^-32;  th = 2 pi x1 2^-32;
        z[i, 4k .. 4k+3] = r cos th, r sin th, r' cos th', r' sin th'   ((x2, x3) give r', th').
    """
    key, offset = (int(v) & (2**64 - 1) for v in seed.cpu().tolist())
    blocks = (cols + 3) // 4
    c0 = torch.arange(blocks, dtype=torch.int64)[None, :].expand(rows, blocks)
    c1 = torch.arange(rows, dtype=torch.int64)[:, None].expand(rows, blocks)
    words = philox4x32_10((c0, c1, offset & _MASK32, offset >> 32), (key & _MASK32, key >> 32))
    words = [w.expand(rows, blocks).to(torch.float64) for w in words]

    def pair(x_radius, x_angle):
        u = torch.floor(x_radius / 2) * 2.0**-31 + 2.0**-32
        radius = torch.sqrt(-2 * torch.log(u))
        angle = 2 * torch.pi * x_angle * 2.0**-32
        return radius * torch.cos(angle), radius * torch.sin(angle)

    z = torch.stack([*pair(words[0], words[1]), *pair(words[2], words[3])], dim=-1)  # (rows, blocks, 4)
    return z.reshape(rows, 4 * blocks)[:, :cols].contiguous()
