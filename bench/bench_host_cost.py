"""Host cost: one loss call on tiny tensors (B = 8, D = 16, 1 thread), where the arithmetic is nil and
what is timed is Python, the dispatcher and autograd, the cost a small GPU step pays per call.

Providers (group ``host_cost <mode> B=8 D=16 float32 cpu``), each the loss of both views of SimSiam:

- ``vi_simsiam_loss power_spherical`` / ``vmf`` / ``none``: ``vk.vi_simsiam_loss(p1, p2, z1, z2, k1, k2, ...)``;
- ``vmf_loss x2``: ``(vk.vmf_loss(p1, z2) + vk.vmf_loss(p2, z1)) / 2`` (the drop-in for SimSiam's loss);
- ``vmf_loss kappa x2``: the same with a concentration per row;
- ``simsiam_cosine``: SimSiam's ``-(cos(p1, sg z2).mean() + cos(p2, sg z1).mean()) / 2``, the baseline.

Modes: ``fwd+bwd`` (the loss and ``backward()``) and ``fwd`` (under ``torch.no_grad()``). The
providers are timed in alternation (each round runs every provider's calls in a rotating order), so
drift and other load hit them alike; each provider's median per call goes to ``paired_medians``.
Goal (issue 12): every loss of this package at or below SimSiam's cosine loss (bench/conftest.py TARGETS).
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

import vissiam_kernels as vk

from _harness import bench_profile

BATCH, DIM = 8, 16
CALLS_PER_ROUND = {"quick": 5, "default": 50, "full": 200}
ROUNDS = {"quick": 3, "default": 40, "full": 100}


def simsiam_cosine(p1, p2, z1, z2, k1, k2):
    return -(F.cosine_similarity(p1, z2.detach(), dim=-1).mean() + F.cosine_similarity(p2, z1.detach(), dim=-1).mean()) / 2


PROVIDERS = {
    "simsiam_cosine": simsiam_cosine,
    "vi_simsiam_loss power_spherical": lambda p1, p2, z1, z2, k1, k2: vk.vi_simsiam_loss(p1, p2, z1, z2, k1, k2),
    "vi_simsiam_loss vmf": lambda p1, p2, z1, z2, k1, k2: vk.vi_simsiam_loss(p1, p2, z1, z2, k1, k2,
                                                                            distribution="vmf"),
    "vi_simsiam_loss none": lambda p1, p2, z1, z2, k1, k2: vk.vi_simsiam_loss(p1, p2, z1, z2, distribution="none"),
    "vmf_loss x2": lambda p1, p2, z1, z2, k1, k2: (vk.vmf_loss(p1, z2) + vk.vmf_loss(p2, z1)) / 2,
    "vmf_loss kappa x2": lambda p1, p2, z1, z2, k1, k2: (vk.vmf_loss(p1, z2, k1) + vk.vmf_loss(p2, z1, k2)) / 2,
}
BASELINE = "simsiam_cosine"


def inputs():
    g = torch.Generator().manual_seed(0)
    p1, p2 = (torch.randn(BATCH, DIM, generator=g).requires_grad_() for _ in range(2))
    z1, z2 = (torch.randn(BATCH, DIM, generator=g) for _ in range(2))
    k1, k2 = ((10 + 100 * torch.rand(BATCH, generator=g)).requires_grad_() for _ in range(2))
    return p1, p2, z1, z2, k1, k2


@pytest.mark.parametrize("mode", ["fwd+bwd", "fwd"])
def test_host_cost(benchmark, request, mode):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = inputs()

        def call(loss_fn):
            if mode == "fwd":
                with torch.no_grad():
                    return loss_fn(*args)
            loss = loss_fn(*args)
            loss.backward()
            return loss

        profile = bench_profile(request.config)
        calls, rounds = CALLS_PER_ROUND[profile], ROUNDS[profile]
        for loss_fn in PROVIDERS.values():  # warm-up: kernel loads, first-call caches
            for _ in range(20):
                call(loss_fn)
        order = list(PROVIDERS)
        times = {name: [] for name in order}

        def one_round():
            for name in order:
                loss_fn = PROVIDERS[name]
                start = time.perf_counter()
                for _ in range(calls):
                    call(loss_fn)
                times[name].append((time.perf_counter() - start) / calls)
            order.append(order.pop(0))

        group = f"host_cost {mode} B={BATCH} D={DIM} float32 cpu"
        benchmark.group = group
        benchmark.pedantic(one_round, rounds=rounds, iterations=1)
        assert vk.last_backend() == "cpu", vk.last_backend()
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        benchmark.extra_info.update(comparison=group, device="cpu", threads=1, paired_medians=medians,
                                    calls_per_provider_round=calls, batch=BATCH, dim=DIM, mode=mode)
    finally:
        torch.set_num_threads(before)
