"""GPU benchmarks: the CUDA C++ kernels against the Triton kernels and torch.compile / eager of the reference.

Run on a GPU machine: ``pytest bench/bench_cuda_gpu.py --benchmark-only``; skipped
without CUDA. Every round runs ``CALLS_PER_ROUND`` training steps (loss forward +
backward, gradients reset to None as ``zero_grad(set_to_none=True)`` does) and
then synchronizes, so the times are per ``CALLS_PER_ROUND`` steps and kernel-launch
overhead counts as it does in training. Compare providers within one group
(same shape, dtype, run and device); ``achieved_GBps`` relates each to the
minimum traffic (read p and z, write grad p). The medians decide which compiled
backend ``VISSIAM_BACKEND=auto`` prefers on CUDA tensors (vissiam_kernels/_dispatch.py).
"""

from __future__ import annotations

import pytest
import torch

import vissiam_kernels as vk
from vissiam_kernels import _dispatch, reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CALLS_PER_ROUND = 20
PROVIDERS = ("cuda", "triton", "compiled", "eager")
SHAPES = [(512, 2048, torch.float32), (512, 2048, torch.bfloat16), (4096, 2048, torch.float32),
          (65536, 128, torch.float32), (64, 65536, torch.float32)]

_COMPILED = {}


def _inputs(batch, dim, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    p = torch.randn(batch, dim, generator=g, device="cuda").to(dtype).requires_grad_()
    z = (0.8 * p.detach().float() + 0.2 * torch.randn(batch, dim, generator=g, device="cuda")).to(dtype)
    kappa = (1e3 + 1e4 * torch.rand(batch, generator=g, device="cuda")).requires_grad_()
    return p, z, kappa


def _loss_fn(provider, distribution, monkeypatch):
    if provider in ("cuda", "triton"):
        error = _dispatch.availability_error(provider)
        if error is not None:
            pytest.skip(f"{provider} backend unavailable: {error}")
        monkeypatch.setenv("VISSIAM_BACKEND", provider)
        return lambda p, z, k: vk.vmf_loss(p, z, k, distribution=distribution)
    eager = lambda p, z, k: getattr(reference, f"{distribution}_nll")(p, z.detach(), k)  # noqa: E731
    if provider == "eager":
        return eager
    if distribution not in _COMPILED:
        _COMPILED[distribution] = torch.compile(eager)
    return _COMPILED[distribution]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("distribution", ["power_spherical", "vmf"])
@pytest.mark.parametrize("batch, dim, dtype", SHAPES, ids=lambda v: str(v).replace("torch.", ""))
def test_loss_forward_backward_gpu(benchmark, monkeypatch, provider, distribution, batch, dim, dtype):
    p, z, kappa = _inputs(batch, dim, dtype)
    loss_fn = _loss_fn(provider, distribution, monkeypatch)

    def steps():
        for _ in range(CALLS_PER_ROUND):
            p.grad = None
            kappa.grad = None
            loss_fn(p, z, kappa).backward()
        torch.cuda.synchronize()

    steps()  # warm-up: builds/loads kernels, compiles, autotunes
    if provider in ("cuda", "triton"):
        assert vk.last_backend() == provider
    comparison = f"{distribution}_loss fwd+bwd B={batch} D={dim} {str(dtype).replace('torch.', '')} cuda"
    benchmark.group = comparison
    benchmark.extra_info.update(
        provider=provider,
        comparison=comparison,
        device=torch.cuda.get_device_name(),
        calls_per_round=CALLS_PER_ROUND,
        min_bytes=3 * batch * dim * p.element_size(),
    )
    benchmark.pedantic(steps, rounds=20, iterations=1, warmup_rounds=1)
    per_call = benchmark.stats.stats.median / CALLS_PER_ROUND
    benchmark.extra_info["median_per_step_us"] = per_call * 1e6
    benchmark.extra_info["achieved_GBps"] = benchmark.extra_info["min_bytes"] / per_call / 1e9
