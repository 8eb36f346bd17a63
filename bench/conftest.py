"""Benchmark session machinery: profiles, devices, correct timing, bandwidth, same-run ratios.

What every benchmark in bench/ gets from here (helpers in bench/_harness.py):

- ``--bench-profile quick|default|full`` (or ``VISSIAM_BENCH_PROFILE``): which shapes run and how
  long each is timed (bench/README.md). ``--benchmark-max-time`` / ``--benchmark-min-rounds`` given
  on the command line win over the profile.
- ``--bench-devices cpu,cuda``: devices to run on (default both; CUDA cases skip without a GPU).
- On CUDA the pytest-benchmark timer synchronizes the device before reading the clock; the mean
  CUDA-event time of back-to-back calls is recorded as well (``cuda_event_s``).
- ``measure(...)``: warm-up outside the timing (torch.compile, Triton autotuning, kernel builds),
  comparison group and provider in ``extra_info``, the minimum bytes the op must move, the achieved
  GB/s and its percentage of a copy bandwidth measured in this session on the same device.
- At the end: every group's medians with the ratio to its fused kernel, the TARGETS of the issues
  checked, and all of it written to ``bench/results/latest-ratios.json``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from _harness import (
    CPU_THREADS,
    FUSED_PREFERENCE,
    PROFILES,
    bench_profile,
    copy_bandwidth_gbps,
    cpu_model,
    cuda_event_seconds,
    cuda_synchronized_perf_counter,
    load_average,
    measured_copy_bandwidths,
    provider_medians,
    synchronize,
)

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Target:
    """A goal of an issue, checked in each group matching ``group`` (an fnmatch pattern):
    time(baseline) / time(provider) >= min_speedup, or time(provider) / time(baseline) <= max_ratio."""

    group: str
    provider: str
    baseline: str
    min_speedup: float | None = None
    max_ratio: float | None = None
    cpu_threads: int | None = None
    """The CPU thread count the target is defined at; runs with another --bench-threads skip it."""


def _issue12_targets() -> list[Target]:
    """Issue 12, CPU at 2 threads: ahead of torch.compile in every loss group; at least 1.5x compile and
    within 1.25x of the memory floor (``copy``: minimum bytes / copy bandwidth) in the float32 fwd+bwd
    groups at D = 2048, B >= 512; the host cost of every loss at or below SimSiam's cosine loss."""
    targets = [Target("*_loss * cpu", "fused-cpu", "compiled", min_speedup=1.0, cpu_threads=2)]
    for op in ("power_spherical_loss", "vmf_loss"):
        for batch in (512, 4096, 16384):
            group = f"{op} fwd+bwd B={batch} D=2048 float32 cpu"
            targets.append(Target(group, "fused-cpu", "compiled", min_speedup=1.5, cpu_threads=2))
            targets.append(Target(group, "fused-cpu", "copy", max_ratio=1.25, cpu_threads=2))
    for provider in ("vi_simsiam_loss power_spherical", "vi_simsiam_loss vmf", "vi_simsiam_loss none",
                     "vmf_loss x2", "vmf_loss kappa x2"):
        targets.append(Target("host_cost *", provider, "simsiam_cosine", max_ratio=1.0))
    return targets


TARGETS = [
    *_issue12_targets(),
    # Issues 3 and 4 (GPU): the two-view loss, forward+backward, against plain PyTorch ...
    Target("vi_simsiam_loss fwd+bwd B=512 D=2048 float32 cuda", "fused-triton", "compiled", min_speedup=1.5),
    Target("vi_simsiam_loss fwd+bwd B=512 D=2048 float32 cuda", "fused-triton", "eager", min_speedup=5.0),
    # ... and at B = 65536 at least 80% of the copy bandwidth for the minimum traffic
    Target("vi_simsiam_loss fwd+bwd B=65536 D=2048 float32 cuda", "fused-triton", "copy", max_ratio=1.25),
    # Issue 13: the fused sampling transform x = H [t, s v] (bench_sampling.py), CPU at 2 threads, D = 2048:
    # within 1.5x of the memory floor and at least 5x torch.compile of the pure-PyTorch reference.
    *(Target(f"sphere_transform {mode} B=4096 D=2048 float32 cpu", "fused-cpu", baseline, cpu_threads=2, **goal)
      for mode in ("fwd", "fwd+bwd")
      for baseline, goal in (("copy", {"max_ratio": 1.5}), ("compiled", {"min_speedup": 5.0}))),
    # Issue 13: the samplers (bench_distributions.py), CPU at 2 threads, D = 2048: power spherical at least 10x
    # the power_spherical package and within 3x of the memory floor; vMF within 1.5x of power spherical.
    *(Target(f"spherical rsample {mode} B=4096 D=2048 float32 cpu", "fused-cpu", baseline, cpu_threads=2, **goal)
      for mode in ("fwd", "fwd+bwd")
      for baseline, goal in (("copy", {"max_ratio": 3.0}), ("power_spherical package", {"min_speedup": 10.0}))),
    *(Target(f"spherical rsample {mode} B=4096 D=2048 float32 cpu", "vmf", "fused-cpu", max_ratio=1.5, cpu_threads=2)
      for mode in ("fwd", "fwd+bwd")),
    # Issues 7 and 12: the cost of uncertainty in a whole training step: under 2% with the fused loss,
    # decided by the paired measurement (steps of both models alternated; bench_train_step.py).
    Target("train_step_paired *", "vi_simsiam", "simsiam", max_ratio=1.02),
]

_LOAD_AT_START = load_average()
_SESSION_START = time.time()


# ---------------------------------------------------------------- options, timing markers
def pytest_addoption(parser):
    group = parser.getgroup("vissiam-kernels benchmarks")
    group.addoption(
        "--bench-profile",
        choices=sorted(PROFILES),
        default=os.environ.get("VISSIAM_BENCH_PROFILE", "default"),
        help="quick: smoke check of every path; default: the issue's grid, short timing; "
        "full: longer timing and larger end-to-end models (env VISSIAM_BENCH_PROFILE)",
    )
    group.addoption(
        "--bench-devices",
        default=os.environ.get("VISSIAM_BENCH_DEVICES", "cpu,cuda"),
        help="comma-separated devices to benchmark (env VISSIAM_BENCH_DEVICES); CUDA cases skip without a GPU",
    )
    group.addoption("--bench-threads", type=int, default=CPU_THREADS,
                    help=f"torch threads for CPU benchmarks (default {CPU_THREADS})")


def _given_on_command_line(config, option: str) -> bool:
    return any(arg == option or arg.startswith(option + "=") for arg in config.invocation_params.args)


def pytest_configure(config):
    # Fewer columns than pytest-benchmark's default table, unless asked (its session reads this later).
    if hasattr(config.option, "benchmark_columns") and not _given_on_command_line(config, "--benchmark-columns"):
        config.option.benchmark_columns = ["min", "median", "iqr", "rounds", "iterations"]


def pytest_collection_modifyitems(config, items):
    """One ``benchmark`` marker per item (pytest-benchmark reads only the closest one): the
    profile's timing unless given on the command line and, for CUDA items, the synchronizing timer."""
    profile = PROFILES[bench_profile(config)]
    timing = {}
    if not _given_on_command_line(config, "--benchmark-max-time"):
        timing["max_time"] = profile["max_time"]
    if not _given_on_command_line(config, "--benchmark-min-rounds"):
        timing["min_rounds"] = profile["min_rounds"]
    for item in items:
        if "benchmark" not in getattr(item, "fixturenames", ()) or item.get_closest_marker("benchmark"):
            continue
        options = dict(timing)
        callspec = getattr(item, "callspec", None)
        device = str(callspec.params.get("device", "cpu")) if callspec is not None else "cpu"
        if device.startswith("cuda"):
            options["timer"] = cuda_synchronized_perf_counter
        if options:
            item.add_marker(pytest.mark.benchmark(**options))


# ---------------------------------------------------------------- fixtures
@pytest.fixture
def threads(request):
    """A fixed torch thread count for the test (CPU benchmarks), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.config.getoption("--bench-threads"))
    yield torch.get_num_threads()
    torch.set_num_threads(before)


@pytest.fixture
def measure(benchmark):
    """measure(fn, *, group, provider, device, min_bytes=None, warmup=2, **extra_info) -> fn's result.

    Calls ``fn`` ``warmup`` times untimed, then times it with pytest-benchmark, and records the
    provider, comparison group, device, min bytes, achieved GB/s and % of copy bandwidth."""

    def run(fn, *, group: str, provider: str, device: torch.device, min_bytes: int | None = None,
            warmup: int = 2, **extra):
        for _ in range(warmup):
            fn()
        synchronize(device)
        info = benchmark.extra_info
        info.update(provider=provider, comparison=group, device=str(device), **extra)
        if device.type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(device)
        else:
            info["threads"] = torch.get_num_threads()
        if min_bytes:
            info["min_bytes"] = int(min_bytes)
            info["copy_GBps"] = copy_bandwidth_gbps(device)
        benchmark.group = group
        if device.type == "cuda":
            # Items without a ``device`` parameter miss the collection-time timer marker: the
            # fixture reads this attribute when timing starts (pytest-benchmark 5).
            benchmark._timer = cuda_synchronized_perf_counter
        result = benchmark(fn)
        stats = getattr(benchmark, "stats", None)
        median = stats.stats.median if stats is not None else None
        if median is not None and device.type == "cuda":
            info["cuda_event_s"] = cuda_event_seconds(fn, device)
        if median and min_bytes:
            info["achieved_GBps"] = min_bytes / median / 1e9
            info["pct_of_copy"] = 100.0 * info["achieved_GBps"] / info["copy_GBps"]
        return result

    return run


# ---------------------------------------------------------------- machine and summary
def machine_description(config) -> dict:
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "bench_threads": config.getoption("--bench-threads"),
        "torch": torch.__version__,
        "profile": bench_profile(config),
        "copy_GBps": measured_copy_bandwidths(),
        "loadavg_start": _LOAD_AT_START,
        "loadavg_end": load_average(),
        "session_wall_s": time.time() - _SESSION_START,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    return info


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["vissiam"] = machine_description(config)


def collect_medians(benchmarks) -> dict:
    """{group: {provider: median seconds per call}} over this run's benchmarks that name a provider.

    A benchmark that times several calls per round says so in ``calls_per_round``; a provider name
    that two files both use in one group is told apart by the second file's name."""
    medians = defaultdict(dict)
    owners = {}
    for bench in benchmarks:
        info = bench.extra_info
        if bench.stats is None or bench.has_error:
            continue
        source = bench.fullname.split("::", 1)[0]
        for provider, seconds in provider_medians(info, bench.stats.median):
            group = info["comparison"]
            if owners.setdefault((group, provider), source) != source:
                provider = f"{provider} ({Path(source).stem})"
            medians[group][provider] = seconds
    return medians


def fused_baseline(by_provider: dict) -> str | None:
    return next((name for name in FUSED_PREFERENCE if name in by_provider), None)


def check_targets(medians: dict, cpu_threads: int) -> list[dict]:
    """The TARGETS that this run's groups (``medians``: {group: {provider: seconds}}) can decide."""
    results = []
    for target in TARGETS:
        if target.cpu_threads is not None and target.cpu_threads != cpu_threads:
            continue
        for group, by_provider in sorted(medians.items()):
            if not fnmatch.fnmatchcase(group, target.group):
                continue
            if target.provider not in by_provider or target.baseline not in by_provider:
                continue
            if target.min_speedup is not None:
                value = by_provider[target.baseline] / by_provider[target.provider]
                need, met = f">= {target.min_speedup}x", value >= target.min_speedup
                shown = f"{target.baseline}/{target.provider} = {value:.2f}x"
            else:
                value = by_provider[target.provider] / by_provider[target.baseline]
                need, met = f"<= {target.max_ratio}", value <= target.max_ratio
                shown = f"{target.provider}/{target.baseline} = {value:.4f}"
            results.append({"group": group, "ratio": shown, "value": value, "need": need, "met": met})
    return results


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    medians = collect_medians(session.benchmarks)
    if not medians:
        return
    machine = machine_description(config)
    write = terminalreporter.write_line
    terminalreporter.section("vissiam-kernels: medians per call, (xN) = N times the fused kernel's time")
    write(f"machine: {machine['cpu']}, {machine['cpu_count']} CPUs, {machine['bench_threads']} threads for CPU "
          f"benchmarks, torch {machine['torch']}, profile {machine['profile']}")
    if machine.get("gpus"):
        write(f"GPUs: {', '.join(machine['gpus'])}")
    if machine["copy_GBps"]:
        write("copy bandwidth: " + ", ".join(f"{d} {v:.1f} GB/s" for d, v in machine["copy_GBps"].items()))
    load = machine["loadavg_start"]  # the end value counts this run's own threads
    if load and machine["cpu_count"] and load[0] > 0.5 * machine["cpu_count"]:
        write(f"WARNING: load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {machine['cpu_count']} CPUs: "
              "other work was running, these timings are noisy", yellow=True)
    for group, by_provider in sorted(medians.items()):
        base = fused_baseline(by_provider)
        parts = []
        for provider, seconds in sorted(by_provider.items(), key=lambda kv: kv[1]):
            text = f"{provider} {1e3 * seconds:.3f} ms"
            if base and provider != base:
                text += f" (x{seconds / by_provider[base]:.2f})"
            parts.append(text)
        write(f"{group}: " + ", ".join(parts))
    targets = check_targets(medians, machine["bench_threads"])
    for t in targets:
        write(f"TARGET {t['group']}: {t['ratio']} (need {t['need']}) -> {'met' if t['met'] else 'NOT MET'}",
              green=t["met"], red=not t["met"])
    if targets:
        met = sum(t["met"] for t in targets)
        write(f"TARGETS: {met} of {len(targets)} met", green=met == len(targets), red=met < len(targets))
    report = {"machine": machine, "medians_s": medians, "targets": targets}
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "latest-ratios.json").write_text(json.dumps(report, indent=2, default=float) + "\n")


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Keep result files small enough to commit: the statistics stay, the raw per-round samples go."""
    for bench in output_json.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)
