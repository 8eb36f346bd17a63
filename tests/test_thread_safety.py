"""Thread safety and determinism of the CPU kernels (issue 8).

- Several Python threads calling the ops at once (forward + backward) get exactly the results of
  serial calls: the kernels keep no shared mutable state.
- Repeated calls are bitwise identical.
- Results do not depend on the number of intra-op threads (torch.set_num_threads 1 vs 2): each
  row is computed by one fixed sequence of operations whatever thread runs it.
"""

from __future__ import annotations

import threading

import pytest
import torch

import vissiam_kernels as vk

THREADS = 4
CALLS_PER_THREAD = 40


@pytest.fixture(autouse=True)
def cpu_backend(monkeypatch):
    monkeypatch.setenv("VISSIAM_BACKEND", "cpu")
    yield


def _inputs(seed, b=67, d=515, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    p1, p2, z1, z2 = (torch.randn(b, d, generator=g).to(dtype) for _ in range(4))
    k1, k2 = (100 * torch.rand(b, generator=g, dtype=torch.float64)).to(dtype), (torch.rand(b, generator=g) * 5).to(dtype)
    return p1, p2, z1, z2, k1, k2


def _step(case: int, seed: int):
    """One forward + backward of an op chosen by ``case``; returns every output and gradient."""
    dtype = (torch.float32, torch.float64, torch.bfloat16, torch.float16)[case % 4]
    p1, p2, z1, z2, k1, k2 = _inputs(seed, dtype=dtype)
    for t in (p1, p2, k1, k2):
        t.requires_grad_(True)
    op = case % 7
    if op == 0:
        loss = vk.vi_simsiam_loss(p1, p2, z1, z2, k1, k2, kl_weight=1e-2)
    elif op == 1:
        loss = vk.vi_simsiam_loss(p1, p2, z1, z2, k1, k2, distribution="vmf", reduction="sum")
    elif op == 2:
        z1.requires_grad_(True)
        loss = (vk.power_spherical_nll(p1, z1, k1, reduction="none") * torch.linspace(0, 2, p1.shape[0])).sum()
    elif op == 3:
        z1.requires_grad_(True)
        loss = vk.vmf_nll(p1, z1, k1)
    elif op == 4:
        loss = vk.vmf_loss(p1, z1) + vk.power_spherical_loss(p2, z2, k2, reduction="sum")
    elif op == 5:
        loss = (vk.vmf_entropy(k1, 515).sum() + vk.power_spherical_kl_uniform(k2, 3).sum()
                + vk.vmf_log_normalizer(k1, 4097).sum() + vk.power_spherical_log_normalizer(k2, 2).sum())
    else:
        loss = vk.vmf_kl_uniform(k1, 65).sum() + vk.power_spherical_entropy(k2, 1000).sum() + vk.vmf_loss(p1, z1, k1)
    assert vk.last_backend() == "cpu"
    loss.backward()
    grads = [t.grad for t in (p1, p2, z1, k1, k2) if t.grad is not None]
    return [loss.detach()] + grads


def _assert_bitwise(a, b, what):
    assert len(a) == len(b), what
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape, what
        # bitwise: compare the bytes (equal() would also accept -0.0 == 0.0, and fails on NaN)
        assert torch.equal(x.view(torch.uint8) if x.dim() else x.reshape(1).view(torch.uint8),
                           y.view(torch.uint8) if y.dim() else y.reshape(1).view(torch.uint8)), what


def test_concurrent_threads_match_serial_calls():
    jobs = [(case, seed) for case in range(14) for seed in range(THREADS * CALLS_PER_THREAD // 14 + 1)]
    serial = {job: _step(*job) for job in jobs}
    results, errors = {}, []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def worker(index):
        try:
            start.wait()
            mine = jobs[index::THREADS]
            for _ in range(2):  # twice over, so that threads overlap on different ops and dtypes
                for job in mine:
                    out = _step(*job)
                    with lock:
                        results.setdefault(job, []).append(out)
        except BaseException as error:  # reported below: an exception in a thread must fail the test
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    assert not errors, f"worker threads raised: {errors!r}"
    assert set(results) == set(jobs)
    for job, outs in results.items():
        assert len(outs) == 2
        for out in outs:
            _assert_bitwise(out, serial[job], f"case {job}: threaded result differs from the serial one")


def test_repeated_calls_are_bitwise_identical():
    for case in range(14):
        first = _step(case, seed=3)
        for _ in range(3):
            _assert_bitwise(_step(case, seed=3), first, f"case {case}: repeated call differs")


@pytest.mark.parametrize("shape", [(1031, 67), (96, 4097), (3, 2, 5)])
def test_results_do_not_depend_on_intra_op_threads(shape):
    """Row counts above the parallel grain (64K elements per task), so 2 threads really split rows."""
    before = torch.get_num_threads()
    try:
        outputs = {}
        for n in (1, 2):
            torch.set_num_threads(n)
            assert torch.get_num_threads() == n
            g = torch.Generator().manual_seed(11)
            runs = []
            for dtype in (torch.float32, torch.float64, torch.bfloat16):
                p1, p2, z1, z2 = (torch.randn(*shape, generator=g).to(dtype) for _ in range(4))
                k1, k2 = (1e3 * torch.rand(shape[:-1], generator=g)).to(dtype), (torch.rand(shape[:-1], generator=g)).to(dtype)
                for t in (p1, p2, z1, k1, k2):
                    t.requires_grad_(True)
                losses = [
                    vk.vi_simsiam_loss(p1, p2, z1, z2, k1, k2, kl_weight=0.1),
                    vk.vi_simsiam_loss(p1, p2, z1, z2, k1, k2, distribution="vmf", reduction="sum"),
                    vk.vmf_nll(p1, z1, k1, reduction="none").sum(),
                    vk.power_spherical_nll(p2, z1, k2, reduction="mean"),
                    vk.vmf_loss(p1, z2),
                    vk.vmf_entropy(k1, shape[-1]).sum() + vk.power_spherical_kl_uniform(k2, shape[-1]).sum(),
                ]
                for loss in losses:
                    assert vk.last_backend() == "cpu"
                    grads = torch.autograd.grad(loss, [p1, p2, z1, k1, k2], allow_unused=True)
                    runs.append([loss.detach()] + [g_ for g_ in grads if g_ is not None])
            outputs[n] = runs
        for a, b in zip(outputs[1], outputs[2]):
            _assert_bitwise(a, b, "set_num_threads(1) and (2) give different results")
    finally:
        torch.set_num_threads(before)
