"""The shared C++ header's special functions (csrc/include), run through the CPU build.

Compared with SciPy where it has the value and with mpmath (50 digits) where it
does not; mpmath is called here only at cheap points, the expensive ones are in
the golden table (test_golden_table.py).
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import scipy.special as sp
import torch

from vissiam_kernels import _extension

mpmath.mp.dps = 50


@pytest.fixture(scope="module")
def special():
    _extension.load_cpu_library()

    def evaluate(name: str, a, b) -> np.ndarray:
        a = torch.as_tensor(np.asarray(a, dtype=np.float64))
        b = torch.as_tensor(np.asarray(b, dtype=np.float64))
        a, b = torch.broadcast_tensors(a, b)
        return torch.ops.vissiam_kernels.special_function(name, a.contiguous(), b.contiguous()).numpy()

    return evaluate


GRID_A = np.array([0.5, 1.0, 1.5, 2.5, 9.99, 10.0, 31.5, 1023.5, 32767.5, 1e6 + 0.5])
GRID_B = np.array([0.5, 1.0, 7.5, 1023.5, 32767.5])


def test_lgamma_difference_matches_mpmath(special):
    a, b = np.meshgrid(GRID_A, GRID_B)
    ours = special("lgamma_difference", a, b)
    exact = np.array([[float(mpmath.loggamma(x) - mpmath.loggamma(x + y)) for x, y in zip(ra, rb)] for ra, rb in zip(a, b)])
    np.testing.assert_allclose(ours, exact, rtol=1e-14, atol=1e-12)


def test_lgamma_difference_beats_the_naive_float64_difference_at_large_arguments(special):
    a, b = 1e15, 0.5  # lgamma(1e15) ~ 3e16: the naive difference has no correct digit left
    exact = float(mpmath.loggamma(a) - mpmath.loggamma(a + b))
    assert abs(special("lgamma_difference", a, b) - exact) < 1e-12 * abs(exact)
    assert abs((sp.gammaln(a) - sp.gammaln(a + b)) - exact) > 1e-6 * abs(exact)


@pytest.mark.parametrize("name, order", [("digamma_difference", 0), ("trigamma_difference", 1)])
def test_polygamma_differences_match_mpmath(special, name, order):
    a, b = np.meshgrid(GRID_A, GRID_B)
    ours = special(name, a, b)
    exact = np.array(
        [[float(mpmath.psi(order, x) - mpmath.psi(order, x + y)) for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]
    )
    np.testing.assert_allclose(ours, exact, rtol=1e-13, atol=1e-300)


def test_log2_plus_digamma_difference_keeps_the_cancelling_digits(special):
    # a = b + kappa with kappa tiny: log 2 + psi(a) - psi(2b + kappa) ~ kappa / (2b), all of it cancellation.
    beta, kappa = 32767.5, 1e-6
    ours = special("log2_plus_digamma_difference", beta + kappa, beta)
    exact = float(mpmath.log(2) + mpmath.psi(0, mpmath.mpf(beta) + kappa) - mpmath.psi(0, 2 * mpmath.mpf(beta) + kappa))
    assert abs(ours - exact) < 1e-6 * abs(exact)


def test_scipy_agrees_where_it_has_the_value(special):
    a, b = np.meshgrid(np.array([0.5, 3.0, 40.0, 500.0]), np.array([0.5, 2.0, 300.0]))
    np.testing.assert_allclose(special("lgamma_difference", a, b), sp.gammaln(a) - sp.gammaln(a + b), rtol=1e-12)
    np.testing.assert_allclose(special("digamma_difference", a, b), sp.digamma(a) - sp.digamma(a + b), rtol=1e-12)
    np.testing.assert_allclose(
        special("trigamma_difference", a, b), sp.polygamma(1, a) - sp.polygamma(1, a + b), rtol=1e-10
    )
    nu, x = np.meshgrid(np.array([0.0, 0.5, 3.0, 29.5, 30.0, 100.0, 1023.0]), np.array([1e-3, 0.7, 10.0, 250.0, 3e3]))
    ive_nu = sp.ive(nu, x)
    finite = ive_nu > 0
    log_i = np.log(ive_nu, where=finite, out=np.zeros_like(x)) + x
    # log(ive) + x loses digits of its own where log I is small (x << 1): compare on the max(1, |.|) scale
    np.testing.assert_allclose(special("log_bessel_i", nu, x)[finite], log_i[finite], rtol=1e-10, atol=1e-11)
    ratio = sp.ive(nu + 1, x) / np.where(finite, ive_nu, 1.0)
    usable = finite & (sp.ive(nu + 1, x) > 1e-290)
    np.testing.assert_allclose(special("bessel_ratio", nu, x)[usable], ratio[usable], rtol=1e-10)


@pytest.mark.parametrize("nu", [0.0, 0.5, 1.0, 2.5, 7.0, 29.0, 29.5, 30.0, 30.5, 64.0, 200.5])
def test_log_bessel_i_and_ratio_match_mpmath_for_every_order(special, nu):
    xs = np.array([1e-30, 1e-6, 0.01, 1.0, 5.0, 29.0, 64.0, 400.0, 3000.0])
    ours_log = special("log_bessel_i", nu, xs)
    ours_ratio = special("bessel_ratio", nu, xs)
    for x, log_i, ratio in zip(xs, ours_log, ours_ratio):
        i_nu = mpmath.besseli(nu, x, maxterms=10**6)
        exact_log = mpmath.log(i_nu)
        exact_ratio = mpmath.besseli(nu + 1, x, maxterms=10**6) / i_nu
        assert abs(log_i - float(exact_log)) <= 1e-11 * max(1.0, abs(float(exact_log))), (nu, x)
        assert abs(ratio - float(exact_ratio)) <= 1e-11 * float(exact_ratio), (nu, x)


def test_bessel_edge_values(special):
    assert special("log_bessel_i", 0.0, 0.0) == 0.0
    assert special("log_bessel_i", 3.0, 0.0) == -np.inf
    assert special("bessel_ratio", 5.5, 0.0) == 0.0
    # log I_nu(x) - nu log x at x = 0 is -nu log 2 - lgamma(nu + 1)
    for nu in (0.5, 10.0, 1023.0):
        expected = -nu * np.log(2.0) - sp.gammaln(nu + 1)
        assert abs(special("log_bessel_i_scaled", nu, 0.0) - expected) < 1e-12 * max(1, abs(expected))


def test_half_integer_order_has_a_closed_form(special):
    # I_{1/2}(x) = sqrt(2 / (pi x)) sinh x, I_{3/2}/I_{1/2} = coth x - 1/x
    xs = np.array([1e-4, 0.3, 2.0, 17.0, 600.0])
    log_closed = 0.5 * np.log(2 / (np.pi * xs)) + xs + np.log1p(-np.exp(-2 * xs)) - np.log(2.0)
    np.testing.assert_allclose(special("log_bessel_i", 0.5, xs), log_closed, rtol=1e-10)
    x = 17.0
    assert abs(special("bessel_ratio", 0.5, x) - (1 / np.tanh(x) - 1 / x)) < 1e-14


def test_order_one_half_closed_form_to_machine_precision(special):
    """d = 3 (nu = 1/2) is evaluated in closed form (log sinh(x)/x and the Langevin function coth x - 1/x,
    by its series below x = 1/2): within a few ulps of 50-digit values on both sides of each switch
    (x = 1/2 and 1), for tiny and huge x, and it agrees with the general recurrence (nu = 1/2 + 1e-15)."""
    xs = [1e-300, 1e-20, 1e-8, 1e-4, 0.01, 0.3, 0.4999999, 0.5, 0.5000001, 0.7, 0.9999999, 1.0, 1.0000001,
          2.0, 17.0, 1e3, 1e7, 1e12, 1e300]
    log_scaled = special("log_bessel_i_scaled", 0.5, xs)
    ratio = special("bessel_ratio", 0.5, xs)
    for x, ours_log, ours_ratio in zip(xs, log_scaled, ratio):
        big_x = mpmath.mpf(x)
        # log I_{1/2}(x) - log(x)/2 = log(2/pi)/2 + x + log((1 - e^{-2x}) / (2x)); the Langevin function
        # by its own series where 50 digits cannot hold coth x - 1/x
        exact_log = mpmath.log(2 / mpmath.pi) / 2 + big_x + mpmath.log(-mpmath.expm1(-2 * big_x) / (2 * big_x))
        exact_ratio = (big_x / 3 - big_x**3 / 45 if x < 1e-6 else mpmath.coth(big_x) - 1 / big_x)
        assert abs(ours_log - float(exact_log)) <= 1e-15 * max(1.0, abs(float(exact_log))), x
        assert abs(ours_ratio - float(exact_ratio)) <= 2e-15 * float(exact_ratio), x
    near = special("bessel_ratio", 0.5 + 1e-15, xs[:-1])  # the general 30-step recurrence
    np.testing.assert_allclose(ratio[:-1], near, rtol=1e-13)


def test_unknown_special_function_name_is_a_clear_error(special):
    with pytest.raises(ValueError, match="unknown special function"):
        special("not_a_function", 1.0, 1.0)
