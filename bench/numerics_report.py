"""Worst-case errors of the normalizers (against the mpmath golden table) and of the NLL (against the
float64 reference): the fused float32 path, the float64 path, plain float32 PyTorch and SciPy.

    python bench/numerics_report.py [--output bench/results/numerics-cpu.md]

Error measure: |value - exact| / max(1, |exact|) (the issue's scale), worst over the table's
d in [2, 65536] and kappa in {0} u [1e-6, 1e7]. "plain float32 PyTorch" is vissiam_kernels.reference
run in float32 (torch.lgamma / torch.digamma differences; for vMF, which PyTorch lacks, the same
Olver/recurrence method in float32 torch operations).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import scipy.special as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import vissiam_kernels as vk  # noqa: E402
from vissiam_kernels import reference  # noqa: E402

from conftest import load_golden_rows  # noqa: E402

FUNCTIONS = {
    ("power_spherical", "log_normalizer"): (vk.power_spherical_log_normalizer, reference.power_spherical_log_normalizer),
    ("power_spherical", "dlog_normalizer_dkappa"): (None, reference.power_spherical_dlog_normalizer),
    ("power_spherical", "entropy"): (vk.power_spherical_entropy, reference.power_spherical_entropy),
    ("vmf", "log_normalizer"): (vk.vmf_log_normalizer, reference.vmf_log_normalizer),
    ("vmf", "dlog_normalizer_dkappa"): (None, reference.vmf_dlog_normalizer),
    ("vmf", "entropy"): (vk.vmf_entropy, reference.vmf_entropy),
}


def scale_error(value: np.ndarray, exact: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(value - exact) / np.maximum(1.0, np.abs(exact))
    return np.where(np.isfinite(value), error, np.inf)


def ours(family: str, column: str, kappa: torch.Tensor, dim: int) -> torch.Tensor:
    fused, _ = FUNCTIONS[(family, column)]
    if fused is not None:
        return fused(kappa, dim)
    k = kappa.clone().requires_grad_()
    (grad,) = torch.autograd.grad(FUNCTIONS[(family, "log_normalizer")][0](k, dim).sum(), k)
    return grad


def scipy_value(family: str, column: str, kappa: np.ndarray, dim: int) -> np.ndarray:
    with np.errstate(all="ignore"):
        if family == "power_spherical":
            beta = 0.5 * (dim - 1)
            alpha = beta + kappa
            if column == "log_normalizer":
                return -((alpha + beta) * np.log(2) + beta * np.log(np.pi) + sp.gammaln(alpha) - sp.gammaln(alpha + beta))
            if column == "dlog_normalizer_dkappa":
                return -(np.log(2) + sp.digamma(alpha) - sp.digamma(alpha + beta))
            return None
        nu = 0.5 * dim - 1
        if column == "log_normalizer":
            return nu * np.log(kappa) - (nu + 1) * np.log(2 * np.pi) - (np.log(sp.ive(nu, kappa)) + kappa)
        if column == "dlog_normalizer_dkappa":
            return -sp.ive(nu + 1, kappa) / sp.ive(nu, kappa)
        return None


def normalizer_rows():
    groups = defaultdict(list)
    for row in load_golden_rows():
        groups[(row["family"], row["dim"])].append(row)
    table = []
    for (family, column) in FUNCTIONS:
        worst = defaultdict(float)
        where = {}
        scipy_bad = 0
        count = 0
        for (fam, dim), rows in groups.items():
            if fam != family:
                continue
            exact = np.array([r[column] for r in rows])
            kappa64 = torch.tensor([r["kappa"] for r in rows], dtype=torch.float64)
            candidates = {
                "ours float32": ours(family, column, kappa64.float(), dim).double().numpy(),
                "ours float64": ours(family, column, kappa64, dim).numpy(),
                "plain PyTorch float32": FUNCTIONS[(family, column)][1](kappa64.float(), dim).double().numpy(),
            }
            s = scipy_value(family, column, kappa64.numpy(), dim)
            if s is not None:
                candidates["SciPy float64"] = s
            count += len(rows)
            for name, value in candidates.items():
                error = scale_error(value, exact)
                finite = np.isfinite(error)
                if name == "SciPy float64":
                    scipy_bad += int((~finite).sum())
                if finite.any() and error[finite].max() > worst[name]:
                    worst[name] = float(error[finite].max())
                    i = int(np.argmax(np.where(finite, error, -1)))
                    where[name] = f"d={dim}, kappa={rows[i]['kappa']:.3g}"
                if (~finite).any() and name != "SciPy float64":
                    worst[name] = float("inf")
        table.append((family, column, count, dict(worst), where, scipy_bad))
    return table


def nll_rows():
    """NLL of random rows against the float64 reference, float32 inputs."""
    os.environ["VISSIAM_BACKEND"] = "cpu"
    table = []
    g = torch.Generator().manual_seed(0)
    for family in ("power_spherical", "vmf"):
        worst = defaultdict(float)
        for dim in (2, 3, 128, 2048, 65536):
            rows = 64 if dim < 65536 else 8
            mu = torch.randn(rows, dim, generator=g)
            target = 0.9 * mu + 0.3 * torch.randn(rows, dim, generator=g)
            kappa = (10.0 ** torch.empty(rows).uniform_(-6, 6, generator=g)).float()
            exact = getattr(reference, f"{family}_nll")(mu.double(), target.double(), kappa.double(), "none").numpy()
            candidates = {
                "ours float32": getattr(vk, f"{family}_nll")(mu, target, kappa, reduction="none").double().numpy(),
                "plain PyTorch float32": getattr(reference, f"{family}_nll")(mu, target, kappa, "none").double().numpy(),
            }
            for name, value in candidates.items():
                rel = np.abs(value - exact) / np.abs(exact)
                worst[name] = max(worst[name], float(rel.max()))
        table.append((family, dict(worst)))
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "numerics-cpu.md")
    args = parser.parse_args()
    lines = [
        "| function | ours, float32 | ours, float64 | plain PyTorch, float32 | SciPy, float64 (non-finite points) |",
        "|---|---|---|---|---|",
    ]
    for family, column, count, worst, where, scipy_bad in normalizer_rows():
        def cell(name):
            if name not in worst:
                return "—"
            value = worst[name]
            text = "inf/NaN" if value == float("inf") else f"{value:.1e}"
            return text + (f" ({where[name]})" if name in where and name.startswith("plain") else "")
        scipy_cell = cell("SciPy float64")
        if scipy_cell != "—":
            scipy_cell += f" ({scipy_bad} of {count} non-finite)"
        lines.append(f"| {family} {column} | {cell('ours float32')} | {cell('ours float64')} | "
                     f"{cell('plain PyTorch float32')} | {scipy_cell} |")
    lines += ["", "| NLL, float32 inputs (relative to the float64 reference) | ours | plain PyTorch, float32 |", "|---|---|---|"]
    for family, worst in nll_rows():
        lines.append(f"| {family}_nll | {worst['ours float32']:.1e} | {worst['plain PyTorch float32']:.1e} |")
    text = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
