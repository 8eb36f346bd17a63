"""CPU benchmarks of the fused losses against eager PyTorch and torch.compile of the reference.

Run: ``pytest bench/ --benchmark-only`` (ratios are printed at the end of the run).
Forward+backward = loss, then ``backward()`` with gradients reset to None each
round (as an optimizer step with ``zero_grad(set_to_none=True)`` leaves them).
"""

from __future__ import annotations

import pytest
import torch

import vissiam_kernels as vk
from vissiam_kernels import reference

THREADS = 2


@pytest.fixture(autouse=True)
def fixed_threads(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    monkeypatch.setenv("VISSIAM_BACKEND", "auto")
    yield
    torch.set_num_threads(before)


def _inputs(batch, dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(batch, dim, generator=g).to(dtype).requires_grad_()
    z = (0.8 * p.detach().float() + 0.2 * torch.randn(batch, dim, generator=g)).to(dtype)
    kappa = (1e3 + 1e4 * torch.rand(batch, generator=g)).requires_grad_()
    return p, z, kappa


_COMPILED = {}


def _loss_fn(provider, distribution):
    if provider == "fused":
        return lambda p, z, k: vk.vmf_loss(p, z, k, distribution=distribution)
    eager = lambda p, z, k: getattr(reference, f"{distribution}_nll")(p, z.detach(), k)  # noqa: E731
    if provider == "eager":
        return eager
    key = (provider, distribution)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(eager)
    return _COMPILED[key]


@pytest.mark.parametrize("provider", ["fused", "compiled", "eager"])
@pytest.mark.parametrize("distribution", ["power_spherical", "vmf"])
@pytest.mark.parametrize("batch, dim", [(512, 2048), (4096, 128)])
def test_loss_forward_backward(benchmark, provider, distribution, batch, dim):
    p, z, kappa = _inputs(batch, dim, torch.float32)
    loss_fn = _loss_fn(provider, distribution)

    def step():
        p.grad = None
        kappa.grad = None
        loss_fn(p, z, kappa).backward()

    step()  # warm-up: builds/loads kernels, compiles
    if provider == "fused":
        assert vk.last_backend() == "cpu"
    element_bytes = p.element_size()
    benchmark.extra_info.update(
        provider=provider,
        comparison=f"{distribution}_loss fwd+bwd B={batch} D={dim} float32 cpu",
        # minimum traffic of a training step: read p and z, write grad_p
        min_bytes=3 * batch * dim * element_bytes,
    )
    benchmark(step)
    benchmark.extra_info["achieved_GBps"] = benchmark.extra_info["min_bytes"] / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("provider", ["fused", "compiled", "eager"])
def test_power_spherical_loss_forward(benchmark, provider):
    batch, dim = 512, 2048
    p, z, kappa = _inputs(batch, dim, torch.float32)
    loss_fn = _loss_fn(provider, "power_spherical")

    def forward():
        with torch.no_grad():
            return loss_fn(p, z, kappa)

    forward()
    benchmark.extra_info.update(
        provider=provider,
        comparison=f"power_spherical_loss fwd B={batch} D={dim} float32 cpu",
        min_bytes=2 * batch * dim * p.element_size(),
    )
    benchmark(forward)
