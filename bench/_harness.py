"""Helpers shared by the benchmark files and bench/conftest.py (bench/ is on sys.path under pytest).

- profiles (which shapes, how long each benchmark is timed) and device parameters;
- the CUDA timer (synchronize, then read the clock) and CUDA-event timing;
- ``InputRotation``: copies of the inputs spanning a multiple of the last-level cache;
- the copy bandwidth of each device, measured once per session.
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path

import pytest
import torch

PROFILES = {
    # Smoke check of every code path: smallest shapes, one round each.
    "quick": {"max_time": 0.05, "min_rounds": 1},
    # The grid, timed briefly: the default `pytest bench/ --benchmark-only`.
    "default": {"max_time": 0.25, "min_rounds": 3},
    # The same grid timed longer, plus the larger end-to-end backbones.
    "full": {"max_time": 1.0, "min_rounds": 5},
}

FUSED_PREFERENCE = ("fused-cpu", "fused-triton", "fused-cuda")
"""Which of a group's fused providers is the baseline of its ratios: VISSIAM_BACKEND=auto's order."""

CPU_THREADS = 2
"""Threads for CPU benchmarks: the issue-2 target is defined at 2 threads (override with --bench-threads)."""


def bench_profile(config) -> str:
    return config.getoption("--bench-profile")


def requested_devices(config) -> list[str]:
    return [d.strip() for d in config.getoption("--bench-devices").split(",") if d.strip()]


def device_params(config) -> list:
    """pytest params for a ``device`` argument: the requested devices; CUDA ones skip without a GPU."""
    params = []
    for name in requested_devices(config):
        marks = ()
        if torch.device(name).type == "cuda" and not torch.cuda.is_available():
            marks = (pytest.mark.skip(reason="no CUDA device here (CUDA benchmarks run when a GPU is present)"),)
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def provider_medians(info: dict, median: float) -> list[tuple[str, float]]:
    """(provider, median seconds per call) pairs that one benchmark reports.

    A benchmark names one ``provider`` (its median per call: the round's median over
    ``calls_per_round``; a fused provider's benchmark also gives the pseudo-provider ``copy``, the
    time of its minimum bytes at the copy bandwidth of the same run), or carries ``paired_medians`` {provider: seconds}: providers timed in
    alternation inside one benchmark (bench_train_step.py's paired step), each its own median."""
    if "paired_medians" in info:
        return list(info["paired_medians"].items())
    if "provider" not in info:
        return []
    pairs = [(info["provider"], median / info.get("calls_per_round", 1))]
    if info["provider"].startswith("fused-") and info.get("min_bytes") and info.get("copy_GBps"):
        # the memory floor of the group: its minimum bytes at the copy bandwidth of the same run
        pairs.append(("copy", info["min_bytes"] / (info["copy_GBps"] * 1e9)))
    return pairs


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_synchronized_perf_counter() -> float:
    """perf_counter once the GPU has finished all queued work: the timer of CUDA benchmarks, so a
    round of back-to-back launches is timed until the device has executed it."""
    torch.cuda.synchronize()
    return time.perf_counter()


def cuda_event_seconds(fn, device: torch.device, repeats: int = 20) -> float:
    """Mean device time of ``repeats`` back-to-back calls, from CUDA events (no host sync between calls)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats


def last_level_cache_bytes(device: torch.device) -> int:
    """L2 of a GPU; the largest CPU cache level in sysfs (the L3 on this class of machine)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 0) or 50 * 2**20)
    largest = 0
    for size_file in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = size_file.read_text().strip()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        largest = max(largest, int(text.rstrip("KMG")) * scale)
    return largest or 32 * 2**20


class InputRotation:
    """Copies of one set of inputs, handed out in turn, so that consecutive timed calls do not find
    their operands in the last-level cache: the copies together span CACHE_MULTIPLE x the cache.
    A set that alone exceeds that is not copied."""

    CACHE_MULTIPLE = 3
    MAX_COPIES = 512

    def __init__(self, make_set, bytes_per_set: int, device: torch.device):
        wanted = math.ceil(self.CACHE_MULTIPLE * last_level_cache_bytes(device) / max(bytes_per_set, 1))
        self.copies = max(1, min(wanted, self.MAX_COPIES))
        self.sets = [make_set(i) for i in range(self.copies)]
        self._index = 0

    def first(self):
        return self.sets[0]

    def next(self):
        inputs = self.sets[self._index]
        self._index = (self._index + 1) % self.copies
        return inputs


_COPY_BANDWIDTH: dict[str, float] = {}


def copy_bandwidth_gbps(device: torch.device) -> float:
    """Best of several ``dst.copy_(src)`` of a buffer far larger than the cache, counted as read +
    write bytes; measured once per device per session, with the benchmarks' thread count."""
    key = str(device)
    if key not in _COPY_BANDWIDTH:
        n_bytes = 1 << 30 if device.type == "cuda" else 256 << 20
        src = torch.ones(n_bytes // 4, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        best = math.inf
        for _ in range(10):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                dst.copy_(src)
                end.record()
                end.synchronize()
                elapsed = start.elapsed_time(end) / 1e3
            else:
                t0 = time.perf_counter()
                dst.copy_(src)
                elapsed = time.perf_counter() - t0
            best = min(best, elapsed)
        _COPY_BANDWIDTH[key] = 2 * n_bytes / best / 1e9
    return _COPY_BANDWIDTH[key]


def measured_copy_bandwidths() -> dict[str, float]:
    return dict(_COPY_BANDWIDTH)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None
