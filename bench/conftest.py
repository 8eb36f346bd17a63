"""Benchmark session helpers: ratios between providers measured in the same run.

Every benchmark stores its provider and comparison group in ``extra_info``; at the
end of the session the median of each provider is divided into the others of its
group, printed, and written to ``bench/results/latest-ratios.json``.
"""

from __future__ import annotations

import json
import platform
from collections import defaultdict
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).parent / "results"

# Targets of the issues: (group prefix, faster provider, slower provider, minimum ratio).
TARGETS = [
    ("power_spherical_loss fwd+bwd B=512 D=2048 float32 cpu", "fused", "compiled", 3.0),
    ("power_spherical_loss fwd+bwd B=512 D=2048 float32 cpu", "fused", "eager", 10.0),
]


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    medians = defaultdict(dict)
    for bench in session.benchmarks:
        info = bench.extra_info
        if "provider" in info and bench.stats is not None:
            medians[info["comparison"]][info["provider"]] = bench.stats.median
    if not medians:
        return
    report = {"machine": machine_description(), "medians_s": medians, "targets": []}
    terminalreporter.section("vissiam-kernels speed ratios (same run)")
    terminalreporter.write_line(f"machine: {report['machine']}")
    for group, by_provider in sorted(medians.items()):
        base = by_provider.get("fused")
        line = ", ".join(f"{p} {1e3 * t:.3f} ms" for p, t in sorted(by_provider.items(), key=lambda kv: kv[1]))
        terminalreporter.write_line(f"{group}: {line}")
        if base:
            ratios = ", ".join(f"{p}/fused = {t / base:.2f}x" for p, t in by_provider.items() if p != "fused")
            terminalreporter.write_line(f"    {ratios}")
    for prefix, fast, slow, minimum in TARGETS:
        group = medians.get(prefix, {})
        if fast in group and slow in group:
            ratio = group[slow] / group[fast]
            met = ratio >= minimum
            report["targets"].append({"group": prefix, "ratio": f"{slow}/{fast}", "value": ratio, "minimum": minimum, "met": met})
            terminalreporter.write_line(
                f"TARGET {prefix}: {slow}/{fast} = {ratio:.2f}x (need >= {minimum}x) -> {'met' if met else 'NOT MET'}"
            )
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "latest-ratios.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
