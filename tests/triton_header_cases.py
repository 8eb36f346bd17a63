"""The Triton side of tests/test_triton_matches_header.py: the grids, and their evaluation through
the Triton interpreter.

Not collected by pytest (no ``test_`` prefix). ``python tests/triton_header_cases.py OUT`` must run
in a fresh process with TRITON_INTERPRET=1 (set before triton is imported); it evaluates every
special function of the port (vissiam_kernels/triton_kernels.py ``special_function_kernel``) and
the per-row quantities of the normalizer and NLL kernels on the grids below, and saves them with
``torch.save`` to OUT. The test process computes the C++ header's values on the same grids (CPU
build) and compares. The grids are defined here once, for both processes.
"""

from __future__ import annotations

import math
import os
import sys

import torch

from vissiam_kernels._codes import ROW_STATE

# d of the sphere S^{d-1}: small d (d = 2: nu = 0; d = 3: the closed form), both sides of Olver's
# order 30 (d = 59..65: nu = 28.5..31.5), and large d.
DIMS = (2, 3, 4, 5, 8, 16, 59, 60, 61, 62, 63, 64, 65, 128, 2048, 65536)
KAPPAS = (0.0, 1e-300, 1e-12, 1e-6, 1e-3, 0.1, 0.5, 1.0, 2.0, 10.0, 30.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7)
# The gamma-family differences f(a, b): a > 0, b >= 0, across the shift to Stirling's range (10).
GAMMA_A = (1e-3, 0.5, 1.0, 5.0, 9.99, 10.0, 1e3, 1e5)
GAMMA_B = GAMMA_A + (0.0,)
# The rows of the NLL kernel: cosines whose dot products both backends form exactly (two nonzero
# entries per row), the antipode (power spherical floor) included.
COSINES = (1.0, 0.75, 0.5, 0.0, -0.5, -0.75, -1.0)

GAMMA_FUNCTIONS = ("lgamma_difference", "digamma_difference", "trigamma_difference",
                   "log2_plus_digamma_difference")
BESSEL_FUNCTIONS = ("log_bessel_i", "log_bessel_i_scaled", "bessel_ratio", "bessel_ratio_complement")
# special_function_kernel's FUNCTION codes (0-5: triton_ops.SPECIAL_FUNCTIONS).
KERNEL_CODES = {
    "lgamma_difference": 0, "log2_plus_digamma_difference": 1, "trigamma_difference": 2,
    "log_bessel_i_scaled": 3, "bessel_ratio": 4, "bessel_ratio_complement": 5,
    "digamma_difference": 6, "log_bessel_i": 7, "log_bessel_i_scaled_and_ratio": 8,
}
FAMILIES = {"vmf": 1, "power_spherical": 2}
QUANTITIES = ("log_normalizer", "dlog_normalizer", "d2log_normalizer", "entropy", "kl_uniform")


def order(dim: int) -> float:
    return 0.5 * dim - 1.0


def gamma_grid() -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) pairs: the product grid, the power spherical arguments (beta + kappa, beta) with
    beta = (d - 1)/2 on the (d, kappa) grid, and log |S^{d-1}|'s (1, d/2 - 1)."""
    pairs = [(a, b) for a in GAMMA_A for b in GAMMA_B]
    for dim in DIMS:
        beta = 0.5 * (dim - 1.0)
        pairs += [(beta + kappa, beta) for kappa in KAPPAS]
        pairs.append((1.0, 0.5 * dim - 1.0))
    a, b = zip(*pairs)
    return torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)


def kappa_grid() -> torch.Tensor:
    return torch.tensor(KAPPAS, dtype=torch.float64)


def nll_rows(dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mu, target, kappa) float64 rows: every kappa with a cosine from COSINES (in turn)."""
    rows = len(KAPPAS)
    mu = torch.zeros(rows, dim, dtype=torch.float64)
    target = torch.zeros(rows, dim, dtype=torch.float64)
    for r in range(rows):
        c = COSINES[r % len(COSINES)]
        mu[r, 0] = 2.0
        target[r, 0] = c
        target[r, dim - 1] = math.sqrt(1.0 - c * c) if dim > 1 else 0.0
    return mu, target, kappa_grid()


def evaluate_triton() -> dict[str, torch.Tensor]:
    """Every quantity of the Triton port on the grids (CPU tensors through the interpreter)."""
    import triton

    from vissiam_kernels import triton_kernels, triton_ops

    assert triton_ops.interpreted(), "TRITON_INTERPRET=1 must be set before triton is imported"
    triton_ops.load()

    def launch(code: int, a: torch.Tensor, b: torch.Tensor, shift: int, outputs: int = 1) -> torch.Tensor:
        out = torch.full((outputs * a.numel(),), float("nan"), dtype=torch.float64)
        triton_kernels.special_function_kernel[(triton.cdiv(a.numel(), 256),)](
            a.contiguous(), b.contiguous(), out, a.numel(), shift, FUNCTION=code, BLOCK=256)
        return out

    results: dict[str, torch.Tensor] = {}
    a, b = gamma_grid()
    for name in GAMMA_FUNCTIONS:
        results[name] = launch(KERNEL_CODES[name], a, b, 0)
    # the launcher of the ops (triton_ops.special_function) for the names it serves
    results["launcher/lgamma_difference"] = triton_ops.special_function("lgamma_difference", a, b)
    x = kappa_grid()
    for dim in DIMS:
        nu = torch.full_like(x, order(dim))
        shift = triton_ops.olver_shift(dim)
        for name in BESSEL_FUNCTIONS:
            results[f"{name}/{dim}"] = launch(KERNEL_CODES[name], nu, x, shift)
        both = launch(KERNEL_CODES["log_bessel_i_scaled_and_ratio"], nu, x, shift, outputs=2)
        results[f"log_bessel_i_scaled_and_ratio.log_scaled/{dim}"] = both[: x.numel()]
        results[f"log_bessel_i_scaled_and_ratio.ratio/{dim}"] = both[x.numel():]
        results[f"launcher/bessel_ratio/{dim}"] = triton_ops.special_function("bessel_ratio", nu, x)
        for family, code in FAMILIES.items():
            for quantity, q in enumerate(QUANTITIES):
                results[f"{family}.{q}/{dim}"] = triton_ops.normalizer_quantity_forward(x, dim, code, quantity)
            mu, target, kappa = nll_rows(dim)
            nll, state, _, _, _ = triton_ops.spherical_nll_forward([mu], [target], [kappa], code)
            results[f"{family}.nll/{dim}"] = nll
            results[f"{family}.dnll_dkappa/{dim}"] = state[:, ROW_STATE["kappa_grad"]].clone()
    return results


if __name__ == "__main__":
    torch.save(evaluate_triton(), sys.argv[1])
    print(f"saved the Triton values ({os.path.basename(sys.argv[1])})")
