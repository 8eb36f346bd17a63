"""One math, checked twice: the Triton port of the special functions (vissiam_kernels/triton_kernels.py)
against the C++ header it ports (csrc/include/vissiam/special_functions.h, spherical_math.h).

Triton cannot include the header, so the math exists twice. Every function of the header's test
table (special_function_table.h, served by the CPU build's ``special_function`` op) is evaluated
through the Triton interpreter (``special_function_kernel``) and through the header, in float64, on
the grids of tests/triton_header_cases.py: nu = d/2 - 1 for d from 2 to 65536 (both sides of Olver's
order 30, the d = 3 closed form) against kappa from 0 to 1e7, and the gamma-family differences on an
(a, b) grid and at the power spherical arguments. So are the per-row quantities of the kernels: the
five normalizer quantities of both families (``normalizer_quantity``) and the row NLL with its
kappa-derivative (``spherical_nll``), Triton launcher against CPU op.

TRITON_INTERPRET must be set before triton is imported, so the Triton side runs once, in a fresh
process (``python tests/triton_header_cases.py OUT``); this process computes the header's values.

Agreement: |triton - header| <= 1e-12 * scale, with scale = |header| for functions of full relative
precision (the Bessel ratio, its complement, the digamma / trigamma differences), max(|header|, 1) for
the log-scale functions (absolute near 0, where their O(1) terms cancel: lgamma_difference(1 + 1e-12, 1)
= -1e-12), and, for the quantities that are sums of larger terms (entropy = -log C + kappa dlogC/dkappa
with kappa dlogC/dkappa = 1e7 at kappa = 1e7; the NLL's kappa c), the largest term: a rounding of
that term is all either side can resolve. Equal values (inf, -inf at x = 0, NaN) agree.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import triton_header_cases as cases
from vissiam_kernels import _extension
from vissiam_kernels._codes import ROW_STATE

pytest.importorskip("triton", reason="the Triton port needs the triton package")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TABLE = ROOT / "csrc" / "include" / "vissiam" / "special_function_table.h"
TOLERANCE = 1e-12

# Scale floor per function: 0 = relative, 1 = relative above 1 and absolute below.
FUNCTION_FLOOR = {
    "lgamma_difference": 1.0,
    "digamma_difference": 0.0,
    "trigamma_difference": 0.0,
    "log2_plus_digamma_difference": 1.0,
    "log_bessel_i": 1.0,
    "log_bessel_i_scaled": 1.0,
    "bessel_ratio": 0.0,
    "bessel_ratio_complement": 0.0,
}
# The combined function's outputs, checked against the header functions whose values it gives
# bit for bit there (log_bessel_i_scaled_and_ratio is not in the header's table).
COMBINED = {"log_bessel_i_scaled_and_ratio.log_scaled": "log_bessel_i_scaled",
            "log_bessel_i_scaled_and_ratio.ratio": "bessel_ratio"}


@pytest.fixture(scope="module")
def header():
    _extension.load_cpu_library()
    return torch.ops.vissiam_kernels


@pytest.fixture(scope="module")
def triton_values():
    """The Triton side, from one interpreter process (about 15 s)."""
    env = dict(os.environ, TRITON_INTERPRET="1", VISSIAM_BACKEND="triton",
               # d = 65536 rows in one block: the interpreter sweeps 2048-wide chunks slowly
               VISSIAM_TRITON_MAX_BLOCK_D="65536")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(TESTS), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "triton_values.pt"
        result = subprocess.run([sys.executable, "-W", "ignore", str(TESTS / "triton_header_cases.py"), str(path)],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"the interpreter process failed:\n{(result.stdout + result.stderr)[-12000:]}"
        return torch.load(path)


def check(name: str, ours: torch.Tensor, exact: torch.Tensor, scale: torch.Tensor, where) -> float:
    """Assert |ours - exact| <= TOLERANCE * scale; the worst point in the message. Returns the worst error."""
    same = (ours == exact) | (ours.isnan() & exact.isnan())
    error = (ours - exact).abs() / scale
    error = torch.where(same, torch.zeros_like(error), torch.nan_to_num(error, nan=math.inf))
    index = int(error.argmax())
    worst = float(error[index])
    print(f"{name}: worst error {worst:.3g} ({where(index)})")
    assert worst <= TOLERANCE, (
        f"{name}: Triton {ours[index].item()!r} vs header {exact[index].item()!r} at {where(index)}: "
        f"error {worst:.3g} of scale {scale[index].item():.3g} > {TOLERANCE}")
    return worst


def floor_scale(exact: torch.Tensor, floor: float) -> torch.Tensor:
    return exact.abs().clamp_min(floor) if floor > 0 else exact.abs().clamp_min(torch.finfo(torch.float64).tiny)


def test_every_function_of_the_header_table_is_ported():
    names = set(re.findall(r'name == "(\w+)"', TABLE.read_text(encoding="utf-8")))
    assert names, f"no names found in {TABLE}"
    missing = names - set(FUNCTION_FLOOR)
    assert not missing, f"header functions without a Triton port under test: {sorted(missing)}"
    assert set(FUNCTION_FLOOR) <= set(cases.KERNEL_CODES)


@pytest.mark.parametrize("name", cases.GAMMA_FUNCTIONS)
def test_gamma_family_difference_matches_header(name, header, triton_values):
    a, b = cases.gamma_grid()
    exact = header.special_function(name, a, b)
    check(name, triton_values[name], exact, floor_scale(exact, FUNCTION_FLOOR[name]),
          lambda i: f"a={a[i].item()!r}, b={b[i].item()!r}")


def test_ops_launcher_matches_the_kernel(header, triton_values):
    """triton_ops.special_function (the ops' launcher) gives the kernel's values."""
    assert torch.equal(triton_values["launcher/lgamma_difference"], triton_values["lgamma_difference"])
    for dim in cases.DIMS:
        assert torch.equal(triton_values[f"launcher/bessel_ratio/{dim}"], triton_values[f"bessel_ratio/{dim}"]), dim


def _over_dims(name, header_name, header, triton_values, floor):
    x = cases.kappa_grid()
    ours, exact, dims = [], [], []
    for dim in cases.DIMS:
        nu = torch.full_like(x, cases.order(dim))
        ours.append(triton_values[f"{name}/{dim}"])
        exact.append(header.special_function(header_name, nu, x))
        dims += [dim] * x.numel()
    ours, exact = torch.cat(ours), torch.cat(exact)
    kappas = x.repeat(len(cases.DIMS))
    check(name, ours, exact, floor_scale(exact, floor),
          lambda i: f"d={dims[i]} (nu={cases.order(dims[i])}), kappa={kappas[i].item()!r}")


@pytest.mark.parametrize("name", cases.BESSEL_FUNCTIONS)
def test_bessel_function_matches_header(name, header, triton_values):
    _over_dims(name, name, header, triton_values, FUNCTION_FLOOR[name])


@pytest.mark.parametrize("name", list(COMBINED))
def test_combined_bessel_function_matches_header(name, header, triton_values):
    _over_dims(name, COMBINED[name], header, triton_values, FUNCTION_FLOOR[COMBINED[name]])


def _log_sphere_area(dim: int) -> float:
    return math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)


@pytest.mark.parametrize("quantity", cases.QUANTITIES)
@pytest.mark.parametrize("family", list(cases.FAMILIES))
def test_normalizer_quantity_matches_header(family, quantity, header, triton_values):
    x = cases.kappa_grid()
    code = cases.FAMILIES[family]
    ours, exact, scale, dims = [], [], [], []
    for dim in cases.DIMS:
        q = cases.QUANTITIES.index(quantity)
        value = header.normalizer_quantity(x, dim, code, q)
        log_c = header.normalizer_quantity(x, dim, code, 0)
        dlog_c = header.normalizer_quantity(x, dim, code, 1)
        terms = [value.abs(), torch.ones_like(x)]
        if quantity == "dlog_normalizer" and family == "vmf":
            terms = [value.abs()]  # A_d(kappa): relative
        elif quantity == "d2log_normalizer" and family == "vmf":
            # 1 - A^2 - (d - 1) A / kappa (spherical_math.h): relative to its largest term
            terms = [value.abs(), (dim - 1.0) * dlog_c.abs() / x.clamp_min(1e-300), 1.0 - dlog_c * dlog_c]
        elif quantity in ("entropy", "kl_uniform"):
            terms += [log_c.abs(), (x * dlog_c).abs()]
            if quantity == "kl_uniform":
                terms.append(torch.full_like(x, abs(_log_sphere_area(dim))))
        ours.append(triton_values[f"{family}.{quantity}/{dim}"])
        exact.append(value)
        scale.append(torch.stack(terms).amax(0).clamp_min(torch.finfo(torch.float64).tiny))
        dims += [dim] * x.numel()
    kappas = x.repeat(len(cases.DIMS))
    check(f"{family} {quantity}", torch.cat(ours), torch.cat(exact), torch.cat(scale),
          lambda i: f"d={dims[i]}, kappa={kappas[i].item()!r}")


@pytest.mark.parametrize("family", list(cases.FAMILIES))
def test_row_nll_and_kappa_derivative_match_header(family, header, triton_values):
    if not hasattr(header, "spherical_nll"):
        pytest.skip("the CPU build has no spherical_nll op")
    code = cases.FAMILIES[family]
    columns = {"nll": ([], [], []), "dnll_dkappa": ([], [], [])}
    dims, kappas, cosines = [], [], []
    for dim in cases.DIMS:
        mu, target, kappa = cases.nll_rows(dim)
        nll, state = header.spherical_nll([mu], [target], [kappa], code)
        dnll_dkappa = state[:, ROW_STATE["kappa_grad"]]
        cos = torch.tensor([cases.COSINES[r % len(cases.COSINES)] for r in range(kappa.numel())], dtype=torch.float64)
        log_c = header.normalizer_quantity(kappa, dim, code, 0)
        dlog_c = header.normalizer_quantity(kappa, dim, code, 1)
        # the terms: -log C - kappa c (vMF) or - kappa log(1 + c) (power spherical); -dlogC - c or - log(1 + c)
        cos_term = cos.abs() if family == "vmf" else (1.0 + cos).clamp_min(1e-12).log().abs()
        nll_scale = torch.stack([nll.abs(), log_c.abs(), kappa * cos_term, torch.ones_like(kappa)]).amax(0)
        derivative_floor = torch.zeros_like(kappa) if family == "vmf" else torch.ones_like(kappa)
        derivative_scale = torch.stack([dnll_dkappa.abs(), dlog_c.abs(), cos_term, derivative_floor]).amax(0)
        for column, exact, scale in (("nll", nll, nll_scale), ("dnll_dkappa", dnll_dkappa, derivative_scale)):
            columns[column][0].append(triton_values[f"{family}.{column}/{dim}"])
            columns[column][1].append(exact)
            columns[column][2].append(scale.clamp_min(torch.finfo(torch.float64).tiny))
        dims += [dim] * kappa.numel()
        kappas += kappa.tolist()
        cosines += cos.tolist()
    for column, (ours, exact, scale) in columns.items():
        check(f"{family} {column}", torch.cat(ours), torch.cat(exact), torch.cat(scale),
              lambda i: f"d={dims[i]}, kappa={kappas[i]!r}, cos={cosines[i]}")
