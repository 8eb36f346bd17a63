"""Markdown table of speedups and a PNG plot from a pytest-benchmark JSON file of bench/.

    python bench/report.py RESULTS.json [--out-dir DIR] [--title TEXT]

Writes RESULTS.md and RESULTS.png (RESULTS-<device>.png when the run covered several devices)
beside the JSON, or in --out-dir. Speedup = time(provider) / time(fused kernel), the median per
call of each, both from the same run; the fused kernel of a group is the backend that
VISSIAM_BACKEND=auto would pick (fused-cpu, else fused-triton, else fused-cuda).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _harness import FUSED_PREFERENCE, provider_medians  # noqa: E402
from conftest import TARGETS, check_targets  # noqa: E402  (bench/conftest.py: the one list of TARGETS)

PROVIDER_ORDER = ("fused-cpu", "fused-triton", "fused-cuda", "compiled", "eager", "power_spherical_pkg",
                  "scipy_ive", "simsiam_cosine", "copy")
"""``copy``: the memory floor of a group (its minimum bytes at the copy bandwidth of the same run)."""
STEP_PROVIDERS = ("simsiam", "vi_simsiam", "vi_simsiam_eager_loss")


def load(path: Path):
    data = json.loads(path.read_text())
    rows = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if not bench.get("stats"):
            continue
        for provider, per_call in provider_medians(info, bench["stats"]["median"]):
            rows.append({**info, "group": info["comparison"], "provider": provider, "median": per_call,
                         "rounds": bench["stats"]["rounds"], "source": bench["fullname"].split("::")[0]})
    return data, rows


def fused_baseline(providers) -> str | None:
    return next((name for name in FUSED_PREFERENCE if name in providers), None)


def ms(seconds: float) -> str:
    return f"{1e3 * seconds:.3f}" if seconds < 1 else f"{1e3 * seconds:.0f}"


def machine_lines(data) -> list[str]:
    info = data.get("machine_info", {})
    ours = info.get("vissiam", {})
    lines = []
    cpu = ours.get("cpu") or info.get("cpu", {}).get("brand_raw") or info.get("processor", "?")
    lines.append(f"- CPU: {cpu}, {ours.get('cpu_count', '?')} CPUs; CPU benchmarks at "
                 f"{ours.get('bench_threads', '?')} torch threads")
    if ours.get("gpus"):
        lines.append(f"- GPU: {', '.join(ours['gpus'])} (CUDA {ours.get('cuda')})")
    lines.append(f"- torch {ours.get('torch', '?')}, triton {ours.get('triton', '-')}, "
                 f"Python {info.get('python_version', '?')}; profile `{ours.get('profile', '?')}`")
    if ours.get("copy_GBps"):
        lines.append("- copy bandwidth measured in the same run: "
                     + ", ".join(f"{d} {v:.1f} GB/s" for d, v in ours["copy_GBps"].items()))
    start, end = ours.get("loadavg_start"), ours.get("loadavg_end")
    if start and end:
        lines.append(f"- load average at start {start[0]:.1f}, at end {end[0]:.1f} "
                     f"(1-minute; {ours.get('cpu_count', '?')} CPUs)")
        # the end value counts this run's own threads; only the start tells of other work
        if ours.get("cpu_count") and start[0] > 0.5 * ours["cpu_count"]:
            lines.append("- **taken under load**: other processes shared the CPUs, so the times are noisy "
                         "and multi-threaded eager PyTorch suffers most (each op waits for a descheduled thread)")
    if ours.get("session_wall_s"):
        lines.append(f"- the whole pytest session took {ours['session_wall_s'] / 60:.1f} min")
    lines.append(f"- date {data.get('datetime', '?')}, commit {data.get('commit_info', {}).get('id', '?')[:12]}"
                 f"{' (dirty)' if data.get('commit_info', {}).get('dirty') else ''}")
    return lines


def loss_tables(rows) -> list[str]:
    """One table per (op, mode, dtype, device): rows are shapes, columns providers as speedups."""
    tables = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if "op" in r and r["source"].endswith("bench_losses.py"):
            tables[(r["op"], r["mode"], r["dtype"], r["device"])][(r["batch"], r["dim"])][r["provider"]] = r
    out = []
    for (op, mode, dtype, device), shapes in sorted(tables.items()):
        providers = sorted({p for by in shapes.values() for p in by},
                           key=lambda p: PROVIDER_ORDER.index(p) if p in PROVIDER_ORDER else 99)
        base = fused_baseline(providers)
        others = [p for p in providers if p != base]
        out += [f"### {op} {mode} {dtype} {device}", ""]
        header = ["B", "D", f"{base} ms" if base else "-", "GB/s", "% copy"] + [f"{p}" for p in others]
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for (batch, dim), by in sorted(shapes.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            fused = by.get(base)
            cells = [str(batch), str(dim)]
            if fused:
                cells += [ms(fused["median"]), f"{fused.get('achieved_GBps', float('nan')):.1f}",
                          f"{fused.get('pct_of_copy', float('nan')):.0f}"]
            else:
                cells += ["-", "-", "-"]
            for p in others:
                if p not in by:
                    cells.append("-")
                elif fused:
                    cells.append(f"{ms(by[p]['median'])} ms ({by[p]['median'] / fused['median']:.2f}x)")
                else:
                    cells.append(f"{ms(by[p]['median'])} ms")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return out


def step_table(rows) -> list[str]:
    groups = defaultdict(dict)
    for r in rows:
        if r["provider"] in STEP_PROVIDERS:
            groups[r["group"]][r["provider"]] = r
    if not groups:
        return []
    out = ["## Training step: the cost of uncertainty", "",
           "One SGD step (both views forward, loss, backward, update); overhead relative to SimSiam "
           "with the same backbone (goal: vi_simsiam under +2%). *paired*: the two models' steps "
           "alternated in one benchmark, so drift and other load hit both alike (this row decides the "
           "target); the other rows time each model on its own, one after the other.", "",
           "| configuration | simsiam ms | vi_simsiam ms (overhead) | vi_simsiam_eager_loss ms (overhead) |",
           "|---|---|---|---|"]
    for group, by in sorted(groups.items()):
        base = by.get("simsiam")
        name = (group.removeprefix("train_step_paired ") + ", *paired*" if group.startswith("train_step_paired ")
                else group.removeprefix("train_step "))
        cells = [name, ms(base["median"]) if base else "-"]
        for p in ("vi_simsiam", "vi_simsiam_eager_loss"):
            if p in by and base:
                cells.append(f"{ms(by[p]['median'])} ({100 * (by[p]['median'] / base['median'] - 1):+.1f}%)")
            else:
                cells.append(ms(by[p]["median"]) if p in by else "-")
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def compile_summary(rows) -> list[str]:
    """In how many loss groups the fused kernel is at least as fast as torch.compile, and the worst."""
    groups = defaultdict(dict)
    for r in rows:
        if r["source"].endswith("bench_losses.py"):
            groups[r["group"]][r["provider"]] = r["median"]
    ratios = {g: by["compiled"] / by[fused_baseline(by)] for g, by in groups.items()
              if "compiled" in by and fused_baseline(by)}
    if not ratios:
        return []
    ahead = sum(ratio >= 1.0 for ratio in ratios.values())
    worst = sorted(ratios.items(), key=lambda kv: kv[1])[:5]
    return [f"Fused kernel at least as fast as `torch.compile` in **{ahead} of {len(ratios)}** loss groups; "
            "slowest against it: " + ", ".join(f"{g} ({r:.2f}x)" for g, r in worst) + ".", ""]


def host_cost_table(rows) -> list[str]:
    """bench_host_cost.py: each loss's time per call against SimSiam's cosine loss, per mode."""
    groups = defaultdict(dict)
    for r in rows:
        if r["source"].endswith("bench_host_cost.py"):
            groups[r["group"]][r["provider"]] = r["median"]
    if not groups:
        return []
    out = ["## Host cost (B = 8, D = 16, 1 thread): time per call against SimSiam's cosine loss", "",
           "Both views' loss per call; `fwd+bwd` includes backward(), `fwd` runs under no_grad. Providers "
           "alternated in one benchmark.", "", "| group | provider | us per call | vs simsiam_cosine |",
           "|---|---|---|---|"]
    for group, by in sorted(groups.items()):
        base = by.get("simsiam_cosine")
        for provider, seconds in sorted(by.items(), key=lambda kv: kv[1]):
            ratio = f"{seconds / base:.2f}x" if base else "-"
            out.append(f"| {group} | {provider} | {1e6 * seconds:.1f} | {ratio} |")
    return out + [""]


def other_tables(rows) -> list[str]:
    """Groups of other benchmark files (neither the loss grid nor the training step nor host cost)."""
    groups = defaultdict(dict)
    for r in rows:
        if not r["source"].endswith(("bench_losses.py", "bench_train_step.py", "bench_host_cost.py")):
            groups[r["group"]][r["provider"]] = r
    if not groups:
        return []
    out = ["## Other comparisons", ""]
    for group, by in sorted(groups.items()):
        base = fused_baseline(by)
        out += [f"### {group}", "", "| provider | ms per call | vs fused | GB/s | % copy |", "|---|---|---|---|---|"]
        for provider, r in sorted(by.items(), key=lambda kv: kv[1]["median"]):
            ratio = f"{r['median'] / by[base]['median']:.2f}x" if base else "-"
            out.append(f"| {provider} | {ms(r['median'])} | {ratio} | {r.get('achieved_GBps', float('nan')):.1f} "
                       f"| {r.get('pct_of_copy', float('nan')):.0f} |")
        out.append("")
    return out


def accuracy_table(rows) -> list[str]:
    worst = defaultdict(float)
    for r in rows:
        if "rel_error_vs_float64" in r and r["provider"] not in ("simsiam_cosine", "copy"):
            key = (r["op"], r["dtype"], r["provider"])
            worst[key] = max(worst[key], r["rel_error_vs_float64"])
    if not worst:
        return []
    out = ["## Accuracy of each provider's loss (worst relative error against the float64 reference, "
           "over the shapes above)", "", "| op | dtype | provider | worst rel. error |", "|---|---|---|---|"]
    for (op, dtype, provider), err in sorted(worst.items()):
        out.append(f"| {op} | {dtype} | {provider} | {err:.1e} |")
    return out + [""]


def targets_table(data, rows) -> list[str]:
    """Re-checks bench/conftest.py's TARGETS against this file's medians."""
    medians = defaultdict(dict)
    for r in rows:
        medians[r["group"]][r["provider"]] = r["median"]
    threads = data.get("machine_info", {}).get("vissiam", {}).get("bench_threads")
    results = check_targets(medians, threads)
    unchecked = sorted({(t.group, t.cpu_threads) for t in TARGETS
                        if t.cpu_threads is not None and t.cpu_threads != threads})
    if not results and not unchecked:
        return []
    out = ["## Targets", "", "| group | ratio | need | met |", "|---|---|---|---|"]
    for t in results:
        out.append(f"| {t['group']} | {t['ratio']} | {t['need']} | {'yes' if t['met'] else '**no**'} |")
    for group, need_threads in unchecked:
        out.append(f"| {group} | not checked: defined at {need_threads} threads, this run used {threads} | | |")
    return out + [""]


def plot(rows, path: Path, device: str, title: str) -> None:
    """Speedup of the fused kernel over each provider against batch size; rows op x D, columns mode."""
    series = defaultdict(dict)
    for r in rows:
        if "op" not in r or r["device"] != device or not r["source"].endswith("bench_losses.py"):
            continue
        series[(r["op"], r["dim"], r["mode"], r["dtype"])].setdefault(r["batch"], {})[r["provider"]] = r["median"]
    panels = sorted({(op, dim) for op, dim, _, _ in series})
    modes = sorted({mode for _, _, mode, _ in series}, key=lambda m: (len(m), m))
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), len(modes), figsize=(6 * len(modes), 3.2 * len(panels)),
                             squeeze=False, sharex=True)
    colors = {}
    palette = plt.get_cmap("tab10")
    for (i, (op, dim)), (j, mode) in ((pi, mj) for pi in enumerate(panels) for mj in enumerate(modes)):
        ax = axes[i][j]
        for dtype, style in (("float32", "-"), ("bfloat16", "--")):
            by_batch = series.get((op, dim, mode, dtype), {})
            providers = {p for by in by_batch.values() for p in by}
            base = fused_baseline(providers)
            if not base:
                continue
            for provider in sorted(providers - {base}, key=lambda p: PROVIDER_ORDER.index(p)
                                   if p in PROVIDER_ORDER else 99):
                points = [(b, by[provider] / by[base]) for b, by in sorted(by_batch.items())
                          if provider in by and base in by]
                if not points:
                    continue
                color = colors.setdefault(provider, palette(len(colors) % 10))
                ax.plot(*zip(*points), style, marker="o", markersize=4, color=color)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{op} {mode}, D={dim}", fontsize=10)
        ax.set_ylabel("provider time / fused time")
        ax.grid(True, which="both", alpha=0.3)
        if i == len(panels) - 1:
            ax.set_xlabel("batch B")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", label=p) for p, c in colors.items()]
    handles += [Line2D([], [], color="gray", linestyle=ls, label=dt) for dt, ls in (("float32", "-"),
                                                                                  ("bfloat16", "--"))]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="pytest-benchmark JSON (--benchmark-json) of bench/")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--title", default=None, help="heading of the report (default: from the machine info)")
    args = parser.parse_args(argv)
    data, rows = load(args.results)
    if not rows:
        raise SystemExit(f"{args.results}: no vissiam-kernels benchmarks (extra_info without 'provider')")
    out_dir = args.out_dir or args.results.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.results.stem
    ours = data.get("machine_info", {}).get("vissiam", {})
    title = args.title or f"vissiam-kernels benchmarks on {', '.join(ours.get('gpus', [])) or ours.get('cpu', '?')}"

    devices = sorted({r["device"] for r in rows if "op" in r})
    plots = []
    for device in devices:
        name = f"{stem}.png" if len(devices) == 1 else f"{stem}-{device.replace(':', '')}.png"
        plot(rows, out_dir / name, device, f"{title}, {device}\nprovider time / fused kernel time (above 1: fused is faster)")
        plots.append(name)

    lines = [f"# {title}", "", f"Source: `{args.results.name}`, {len(rows)} benchmarks.", ""]
    lines += machine_lines(data) + [""]
    lines += ["Times are medians per call. `(Nx)` = the provider's time / the fused kernel's time (above 1: "
              "the fused kernel is faster). GB/s = the minimum bytes the op must move / time; "
              "% copy = that against the copy bandwidth above. `fwd` runs under no_grad; `fwd+bwd` includes "
              "backward().", ""]
    lines += [f"![speedup plot]({name})" for name in plots] + [""]
    lines += targets_table(data, rows)
    lines += step_table(rows)
    lines += host_cost_table(rows)
    lines += ["## Losses", ""] + compile_summary(rows) + loss_tables(rows)
    lines += accuracy_table(rows)
    lines += other_tables(rows)
    report = out_dir / f"{stem}.md"
    report.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {report}" + "".join(f", {out_dir / name}" for name in plots))


if __name__ == "__main__":
    main()
