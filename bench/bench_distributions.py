"""The spherical distributions' samplers (issue 13): ``rsample`` and ``rsample`` + backward, provider
against provider, at B = 4096, D = 128 and 2048, float32.

Groups ``spherical rsample <mode> B=<B> D=<D> float32 <device>``, providers:

- ``fused-cpu`` (or ``fused-triton``): ``vissiam_kernels.distributions.PowerSpherical(loc, kappa).rsample()``
  (Gamma draws, the (B, D-1) noise drawn in the fused transform; backward: the transform's and the
  implicit kappa gradient by quadrature, a fused CPU op); its minimum bytes give the group's ``copy``
  floor;
- ``vmf``: ``vissiam_kernels.distributions.VonMisesFisher(...).rsample()`` (Wood's rejection on the
  angle, the same transform and the same quadrature op in backward);
- ``power_spherical package``: ``power_spherical.PowerSpherical(normalize(loc), kappa).rsample()``,
  what PyTorch users have today;
- ``wood pure-PyTorch``: a vMF sampler written the way s-vae-pytorch writes it (Beta proposals through
  torch.distributions, rejection loop, Householder with e1 - mu normalized, gradient through the
  accepted proposal), in plain PyTorch.

Modes: ``fwd`` (under no_grad) and ``fwd+bwd`` (rsample, then ``x.backward(grad_x)``; gradients to loc
and kappa). Minimum bytes (the issue's floor, "writing the samples and reading loc"): fwd 2 B D
elements; fwd+bwd 5 B D (add reading grad_x and loc, writing grad_loc). Drawing the noise is not in
the floor: a sampler that writes and reads back its (B, D-1) noise, as all of these do, pays for it,
and torch's CPU normal generator alone costs more than the floor (see bench_sampling.py's parts group).

Targets (bench/conftest.py TARGETS, same run, D = 2048): power spherical at least 10x faster than the
power_spherical package and within 3x of the copy floor; vMF within 1.5x of power spherical.
"""

from __future__ import annotations

import power_spherical
import pytest
import torch
import torch.nn.functional as F
from _harness import bench_profile, device_params

from vissiam_kernels import _dispatch
from vissiam_kernels.distributions import PowerSpherical, VonMisesFisher

SHAPES = {"quick": ((256, 128), (256, 2048)), "default": ((4096, 128), (4096, 2048))}
SHAPES["full"] = SHAPES["default"]
FUSED = {"cpu": "fused-cpu", "cuda": "fused-triton"}
PROVIDERS = ("vmf", "power_spherical package", "wood pure-PyTorch")
MODES = ("fwd", "fwd+bwd")
KAPPA = 100.0


def pytest_generate_tests(metafunc):
    if metafunc.function.__name__ != "test_rsample":
        return
    cases = []
    for device_param in device_params(metafunc.config):
        device = device_param.values[0]
        for batch, dim in SHAPES[bench_profile(metafunc.config)]:
            for mode in MODES:
                for provider in (FUSED[torch.device(device).type],) + PROVIDERS:
                    cases.append(pytest.param(mode, batch, dim, device, provider, marks=device_param.marks,
                                              id=f"{mode}-B{batch}-D{dim}-{device}-{provider}"))
    metafunc.parametrize("mode, batch, dim, device, provider", cases)


def wood_vmf_rsample(loc: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """A pure-PyTorch Wood (1994) vMF sampler as s-vae-pytorch writes it (float32, the textbook
    b = (-2k + sqrt(4k^2 + m^2))/m, w = (1 - (1+b) z)/(1 - (1-b) z), rejection until every row is
    accepted, gradient to kappa through the accepted proposal: the biased one of pytorch#147048)."""
    rows, dim = loc.shape
    m = dim - 1.0
    k = kappa[:, None]
    b = (-2 * k + torch.sqrt(4 * k * k + m * m)) / m
    x0 = (1 - b) / (1 + b)
    c = k * x0 + m * torch.log(1 - x0 * x0)
    beta = torch.distributions.Beta(torch.full_like(k, m / 2), torch.full_like(k, m / 2))
    w = torch.zeros_like(k)
    done = torch.zeros_like(k, dtype=torch.bool)
    while not bool(done.all()):
        z = beta.rsample()
        w_new = (1 - (1 + b) * z) / (1 - (1 - b) * z)
        u = torch.rand_like(k)
        accept = (k * w_new + m * torch.log(1 - x0 * w_new) - c >= torch.log(u)) & ~done
        w = torch.where(accept, w_new, w)
        done = done | accept
    v = F.normalize(torch.randn(rows, dim - 1, device=loc.device, dtype=loc.dtype), dim=-1)
    y = torch.cat([w, torch.sqrt((1 - w * w).clamp_min(1e-10)) * v], dim=-1)
    mu = F.normalize(loc, dim=-1)
    e1 = torch.zeros_like(mu)
    e1[:, 0] = 1
    u_vec = F.normalize(e1 - mu, dim=-1)
    return y - 2 * (y * u_vec).sum(-1, keepdim=True) * u_vec


def sampler(provider: str):
    if provider.startswith("fused-"):
        return lambda loc, kappa: PowerSpherical(loc, kappa).rsample()
    if provider == "vmf":
        return lambda loc, kappa: VonMisesFisher(loc, kappa).rsample()
    if provider == "power_spherical package":
        return lambda loc, kappa: power_spherical.PowerSpherical(F.normalize(loc, dim=-1), kappa).rsample()
    if provider == "wood pure-PyTorch":
        return wood_vmf_rsample
    raise ValueError(f"unknown provider {provider!r}")


def min_bytes_moved(batch: int, dim: int, mode: str, element_size: int = 4) -> int:
    return (2 if mode == "fwd" else 5) * batch * dim * element_size


def test_rsample(measure, threads, monkeypatch, mode, batch, dim, device, provider):
    device = torch.device(device)
    if provider.startswith("fused-"):
        monkeypatch.setenv("VISSIAM_BACKEND", provider.removeprefix("fused-"))
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(batch, dim, generator=g).to(device).requires_grad_(mode != "fwd")
    kappa = torch.full((batch,), KAPPA, device=device, requires_grad=mode != "fwd")
    grad_x = torch.randn(batch, dim, generator=g).to(device)
    draw = sampler(provider)
    x = draw(loc, kappa)
    assert x.shape == (batch, dim) and torch.isfinite(x).all()
    assert (x.detach().norm(dim=-1) - 1).abs().max() < 1e-4
    if provider.startswith("fused-") or provider == "vmf":
        assert _dispatch.last_backend() in ("cpu", "triton"), _dispatch.last_backend()

    if mode == "fwd":
        def step():
            with torch.no_grad():
                return draw(loc, kappa)
    else:
        def step():
            loc.grad = kappa.grad = None
            draw(loc, kappa).backward(grad_x)

    measure(step, group=f"spherical rsample {mode} B={batch} D={dim} float32 {device.type}", provider=provider,
            device=device, min_bytes=min_bytes_moved(batch, dim, mode) if provider.startswith("fused-") else None,
            op="rsample", mode=mode, batch=batch, dim=dim, dtype="float32", kappa=KAPPA)
