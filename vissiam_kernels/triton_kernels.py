"""Triton kernels of the ``vissiam_triton`` ops, and the special functions they need, in ``tl``.

Layout (Liger-Kernel style): this module holds only ``@triton.jit`` code and its constants (the
op codes from csrc/include/vissiam/op_codes.h through vissiam_kernels/_codes.py); the host
launchers, op registration and autograd glue live in ``vissiam_kernels/triton_ops.py``.

The special functions are a line-by-line port of csrc/include/vissiam/special_functions.h
and spherical_math.h (the C++ header cannot be included by Triton); the formulas, constants,
series lengths and branch points are the header's, so the CPU, CUDA and Triton backends
agree to rounding. tests/test_triton_matches_header.py holds the two to that: every function of
the header's test table (special_function_table.h) and the per-row quantities of the kernels,
Triton (interpreter) against the CPU build, within 1e-12 over d = 2..65536 and kappa = 0..1e7.
Differences forced by Triton:

- Only basic ``tl`` operations (+, *, /, exp, log, sqrt, where): libdevice (lgamma, log1p,
  expm1, hypot) cannot run under the interpreter (``TRITON_INTERPRET=1``), so log1p and
  expm1 use Kahan's compensated forms and hypot is written out.
- Every function is elementwise in its argument (kappa, x; the gamma functions' a and b), with
  ``tl.where`` for the header's per-value branches, so the same code serves a block of kappa
  values (``normalizer_quantity``) and a block of rows (``spherical_nll``). The header's
  ``while (a < 10)`` shifts become ``steps`` masked unit steps, and ``while (nu < 30)`` the
  ``shift`` steps of the Bessel recurrences, counted on the host from d (``asymptotic_steps`` in
  triton_ops: 0 for the power spherical family at d >= 21), and give the same sums.
- The Bessel order nu is one value per launch in every kernel (from the int dimension, or a[0]
  in ``special_function_kernel``), so the header's branches on it are scalar ``if``s here too,
  and the work they skip is skipped: d = 3 (nu = 1/2) takes the closed forms (log sinh(x)/x,
  coth x - 1/x) instead of the 30-step recurrence, and in the Olver range (nu >= 30,
  ``shift == 0``) ``log_bessel_i_scaled`` evaluates Olver's expansion alone, without the ratio
  ``log_bessel_i_scaled_and_ratio`` also computes.
- Python float kernel arguments are float32 on the GPU, so nothing precision-bearing is
  passed as a float: the dimension is an int and derived quantities (beta, nu,
  log |S^{d-1}|) are computed here in float64. Float literals are exact in arithmetic with
  float64 tensors, but one passed to ``tl.where`` / ``tl.maximum`` becomes a float32 constant
  first (1e-12 -> 9.99999996e-13): such constants go through ``_f64_like``.
- Module constants are ``tl.constexpr(...)`` objects: the compiler, unlike the interpreter,
  rejects annotated globals (tests/test_triton_compile.py compiles the kernels the ops launch for
  sm_80 and sm_90 without a GPU, so such differences surface in CI).

Per-row scalar math is float64 (B values per call: free). Row reductions accumulate in
float64 when ``ACC_F64`` (the default, see triton_ops.ACCUMULATE_FLOAT64: float32 sums put
~1e-7 error into c, which kappa * log1p(c) amplifies past the 1e-6 NLL target), else in
float32; float16/bfloat16 values are converted to float32 right after ``tl.load`` (the
interpreter's half arithmetic is wrong).
Row offsets are int64. Every sum has a fixed order for a given (BLOCK_R, BLOCK_D,
num_warps): no atomics anywhere, so results are bitwise reproducible.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._codes import FAMILY_CODES, QUANTITY_CODES, ROW_STATE
from ._codes import ROW_STATE_COLUMNS as ROW_STATE_COLUMN_COUNT

# Constants of special_functions.h / spherical_math.h.
LOG2 = tl.constexpr(0.69314718055994530942)
LOGPI = tl.constexpr(1.14472988584940017414)
LOG2PI = tl.constexpr(1.83787706640934548356)
ASYMPTOTIC_MIN_ARGUMENT = tl.constexpr(10.0)
NORMALIZE_EPS = tl.constexpr(1e-12)
POWER_SPHERICAL_ONE_PLUS_COS_FLOOR = tl.constexpr(1e-12)
DOUBLE_MAX = tl.constexpr(1.7976931348623157e308)
# log(2/pi)/2: I_{1/2}(x) = sqrt(2 / (pi x)) sinh x (special_functions.h kHalfLogTwoOverPi).
HALF_LOG_TWO_OVER_PI = tl.constexpr(-0.2257913526447274323631)
# Above this, x * x overflows in float64 and hypot is evaluated scaled.
HYPOT_SCALE_THRESHOLD = tl.constexpr(1e150)

# Family and quantity codes and row-state columns: csrc/include/vissiam/op_codes.h, as
# vissiam_kernels/_codes.py reads it.
COSINE = tl.constexpr(FAMILY_CODES["none"])
VON_MISES_FISHER = tl.constexpr(FAMILY_CODES["vmf"])
POWER_SPHERICAL = tl.constexpr(FAMILY_CODES["power_spherical"])
LOG_NORMALIZER = tl.constexpr(QUANTITY_CODES["log_normalizer"])
LOG_NORMALIZER_DERIVATIVE = tl.constexpr(QUANTITY_CODES["dlog_normalizer"])
LOG_NORMALIZER_SECOND_DERIVATIVE = tl.constexpr(QUANTITY_CODES["d2log_normalizer"])
ENTROPY = tl.constexpr(QUANTITY_CODES["entropy"])
MU_COEF_COLUMN = tl.constexpr(ROW_STATE["mu_coef"])
TARGET_COEF_COLUMN = tl.constexpr(ROW_STATE["target_coef"])
CROSS_COEF_COLUMN = tl.constexpr(ROW_STATE["cross_coef"])
KAPPA_GRAD_COLUMN = tl.constexpr(ROW_STATE["kappa_grad"])
ROW_STATE_COLUMNS = tl.constexpr(ROW_STATE_COLUMN_COUNT)


# ================================================================ elementary functions
@triton.jit
def log1p(x):
    """log(1 + x) to a few ulps (Kahan: log(u) * x / (u - 1) with u = 1 + x rounded)."""
    u = 1.0 + x
    d = u - 1.0
    exact = d == 0.0
    return tl.where(exact, x, tl.log(u) * (x / tl.where(exact, 1.0, d)))


@triton.jit
def expm1(x):
    """exp(x) - 1 to a few ulps (Kahan: (u - 1) * x / log(u) with u = exp(x) rounded)."""
    u = tl.exp(x)
    d = u - 1.0
    small = d == 0.0
    saturated = (d == -1.0) | (u == float("inf"))
    log_u = tl.log(tl.where(small | saturated, 2.0, u))
    return tl.where(small, x, tl.where(saturated, d, d * (x / log_u)))


@triton.jit
def hypot(a, b):
    """sqrt(a^2 + b^2) for a, b >= 0, without overflow for huge arguments."""
    big = tl.maximum(a, b)
    small = tl.minimum(a, b)
    ratio = small / tl.where(big > 0.0, big, 1.0)
    return tl.where(big < HYPOT_SCALE_THRESHOLD, tl.sqrt(a * a + b * b), big * tl.sqrt(1.0 + ratio * ratio))


# ================================================================ gamma-family differences
@triton.jit
def _stirling_remainder(x):
    # lgamma(x) - [(x - 1/2) log x - x + log(2 pi)/2] = sum_k B_2k / (2k (2k-1) x^(2k-1)); x >= 10.
    r = 1.0 / x
    r2 = r * r
    return r * (1.0 / 12 + r2 * (-1.0 / 360 + r2 * (1.0 / 1260 + r2 * (-1.0 / 1680 + r2 * (
        1.0 / 1188 + r2 * (-691.0 / 360360 + r2 * (1.0 / 156 + r2 * (-3617.0 / 122400))))))))


@triton.jit
def _digamma_series(x):
    # psi(x) = log x - 1/(2x) - s(x),  s(x) = sum_k B_2k / (2k x^2k).
    r2 = 1.0 / (x * x)
    return r2 * (1.0 / 12 + r2 * (-1.0 / 120 + r2 * (1.0 / 252 + r2 * (-1.0 / 240 + r2 * (
        1.0 / 132 + r2 * (-691.0 / 32760 + r2 * (1.0 / 12)))))))


@triton.jit
def _trigamma_series(x):
    # psi'(x) = 1/x + 1/(2x^2) + t(x),  t(x) = sum_k B_2k / x^(2k+1).
    r = 1.0 / x
    r2 = r * r
    return r * r2 * (1.0 / 6 + r2 * (-1.0 / 30 + r2 * (1.0 / 42 + r2 * (-1.0 / 30 + r2 * (
        5.0 / 66 + r2 * (-691.0 / 2730 + r2 * (7.0 / 6)))))))


@triton.jit
def lgamma_difference(a, b, steps):
    """lgamma(a) - lgamma(a + b), a > 0, b >= 0, without cancellation (see the C++ header).

    lgamma(a) = lgamma(a + 1) - log a lifts a to >= 10 in at most ``steps`` masked unit steps
    (ceil(10 - min a); 10 covers any a > 0); there, with Stirling,
      -(a - 1/2) log1p(b/a) - b log(a+b) + b + r(a) - r(a+b).
    """
    shifted = a * 0.0
    for _ in range(steps):
        low = a < ASYMPTOTIC_MIN_ARGUMENT
        shifted += tl.where(low, log1p(b / a), 0.0)
        a = tl.where(low, a + 1.0, a)
    result = (shifted - (a - 0.5) * log1p(b / a) - b * tl.log(a + b) + b
              + _stirling_remainder(a) - _stirling_remainder(a + b))
    return tl.where(b == 0.0, 0.0, result)


@triton.jit
def log2_plus_digamma_difference(a, b, steps):
    """log 2 + psi(a) - psi(a + b), exact also where the terms cancel (kappa -> 0, a = b)."""
    shifted = a * 0.0
    for _ in range(steps):
        low = a < ASYMPTOTIC_MIN_ARGUMENT
        shifted -= tl.where(low, b / (a * (a + b)), 0.0)
        a = tl.where(low, a + 1.0, a)
    return (shifted + log1p((a - b) / (a + b)) - b / (2.0 * a * (a + b))
            - (_digamma_series(a) - _digamma_series(a + b)))


@triton.jit
def digamma_difference(a, b, steps):
    """psi(a) - psi(a + b), a > 0, b >= 0  (psi(a) = psi(a + 1) - 1/a)."""
    shifted = a * 0.0
    for _ in range(steps):
        low = a < ASYMPTOTIC_MIN_ARGUMENT
        shifted -= tl.where(low, b / (a * (a + b)), 0.0)
        a = tl.where(low, a + 1.0, a)
    result = (shifted - log1p(b / a) - b / (2.0 * a * (a + b))
              - (_digamma_series(a) - _digamma_series(a + b)))
    return tl.where(b == 0.0, 0.0, result)


@triton.jit
def trigamma_difference(a, b, steps):
    """psi'(a) - psi'(a + b), a > 0, b >= 0  (psi'(x) = psi'(x + 1) + 1/x^2)."""
    shifted = a * 0.0
    for _ in range(steps):
        low = a < ASYMPTOTIC_MIN_ARGUMENT
        shifted += tl.where(low, 1.0 / (a * a) - 1.0 / ((a + b) * (a + b)), 0.0)
        a = tl.where(low, a + 1.0, a)
    c = a + b
    result = (shifted + b / (a * c) + b * (2.0 * a + b) / (2.0 * a * a * c * c)
              + (_trigamma_series(a) - _trigamma_series(c)))
    return tl.where(b == 0.0, 0.0, result)


# ================================================================ modified Bessel functions
@triton.jit
def _olver_correction(p, nu):
    # sum_{k=1..5} U_k(p) / nu^k of Olver's uniform expansion (DLMF 10.41.3, 10.41.10).
    p2 = p * p
    u1 = p * (3.0 - 5.0 * p2) / 24.0
    u2 = p2 * (81.0 + p2 * (-462.0 + p2 * 385.0)) / 1152.0
    u3 = p * p2 * (30375.0 + p2 * (-369603.0 + p2 * (765765.0 + p2 * (-425425.0)))) / 414720.0
    u4 = p2 * p2 * (4465125.0 + p2 * (-94121676.0 + p2 * (349922430.0 + p2 * (
        -446185740.0 + p2 * 185910725.0)))) / 39813120.0
    u5 = p * p2 * p2 * (1519035525.0 + p2 * (-49286948607.0 + p2 * (284499769554.0 + p2 * (
        -614135872350.0 + p2 * (566098157625.0 + p2 * (-188699385875.0)))))) / 6688604160.0
    r = 1.0 / nu
    return r * (u1 + r * (u2 + r * (u3 + r * (u4 + r * u5))))


@triton.jit
def _olver_log_bessel_i_scaled(nu, x):
    # log I_nu(x) - nu log x = S - nu log(nu + S) - log(2 pi)/2 - log(S)/2 + log1p(u),  S = hypot(nu, x).
    s = hypot(nu, x)
    return s - nu * tl.log(nu + s) - 0.5 * LOG2PI - 0.5 * tl.log(s) + log1p(_olver_correction(nu / s, nu))


@triton.jit
def _olver_log_ratio_rest(nu, x, s0, s1):
    # log R = log(x / (nu + 1 + S1)) + rest  (header: olver_log_ratio_rest).
    ds = (2.0 * nu + 1.0) / (s1 + s0)
    return (ds - nu * log1p((1.0 + ds) / (nu + s0)) - 0.5 * log1p(ds / s0)
            + log1p(_olver_correction((nu + 1.0) / s1, nu + 1.0)) - log1p(_olver_correction(nu / s0, nu)))


@triton.jit
def _olver_bessel_ratio(nu, x):
    s0 = hypot(nu, x)
    s1 = hypot(nu + 1.0, x)
    return x / (nu + 1.0 + s1) * tl.exp(_olver_log_ratio_rest(nu, x, s0, s1))


@triton.jit
def _olver_bessel_ratio_complement(nu, x):
    # 1 - R = -expm1(-log1p((nu + 1 + (nu+1)^2 / (S1 + x)) / x) + rest); 1 at x = 0.
    s0 = hypot(nu, x)
    s1 = hypot(nu + 1.0, x)
    zero = x == 0.0
    safe_x = tl.where(zero, 1.0, x)
    lead = -log1p((nu + 1.0 + (nu + 1.0) * (nu + 1.0) / (s1 + safe_x)) / safe_x)
    return tl.where(zero, 1.0, -expm1(lead + _olver_log_ratio_rest(nu, safe_x, s0, s1)))


@triton.jit
def _log_sinh_over_x(x):
    """log(sinh(x) / x), x >= 0 (header: detail::log_sinh_over_x): the quotient kept whole below 1."""
    zero = x == 0.0
    safe = tl.where(zero, 1.0, x)
    tail = -expm1(-2.0 * safe)
    below_one = safe + tl.log(tail / (2.0 * safe))
    above_one = safe + tl.log(tail) - LOG2 - tl.log(safe)
    return tl.where(zero, 0.0, tl.where(x < 1.0, below_one, above_one))


@triton.jit
def _langevin(x):
    """coth x - 1/x, x >= 0 (header: detail::langevin): its Taylor series below 1/2."""
    x2 = x * x
    series = x * (1.0 / 3 + x2 * (-0.022222222222222223 + x2 * (0.0021164021164021165 +
                 x2 * (-0.00021164021164021165 + x2 * (2.1377799155576935e-05 +
                 x2 * (-2.1644042808063972e-06 + x2 * (2.1925947851873778e-07 +
                 x2 * (-2.2214608789979678e-08 + x2 * (2.2507846516808994e-09 +
                 x2 * (-2.2805151204592183e-10))))))))))
    safe = tl.where(x < 0.5, 1.0, x)
    closed = (1.0 + tl.exp(-2.0 * safe)) / -expm1(-2.0 * safe) - 1.0 / safe
    return tl.where(x < 0.5, series, closed)


@triton.jit
def bessel_ratio(nu, x, shift):
    """I_{nu+1}(x) / I_nu(x), nu >= 0 (one value), x >= 0; ``shift`` = unit steps from nu up to the
    Olver range (0 in it). nu = 1/2 (d = 3): the closed form coth x - 1/x.

    Below the Olver range the ratio R_k = x / (2(k+1) + x R_{k+1}) is run downward (stable).
    """
    if nu == 0.5:  # d = 3
        ratio = _langevin(x)
    else:
        ratio = _olver_bessel_ratio(nu + shift, x)
        for jj in range(shift):
            j = shift - 1 - jj
            ratio = x / (2.0 * (nu + j + 1.0) + x * ratio)
    return ratio


@triton.jit
def bessel_ratio_complement(nu, x, shift):
    """1 - I_{nu+1}(x) / I_nu(x), to full relative precision also where the ratio is near 1.

    q_k = (2(k+1) - x q_{k+1}) / (2(k+1) + x (1 - q_{k+1})), run downward (no closed form for
    d = 3 here, as in the header).
    """
    complement = _olver_bessel_ratio_complement(nu + shift, x)
    for jj in range(shift):
        j = shift - 1 - jj
        two_k1 = 2.0 * (nu + j + 1.0)
        complement = (two_k1 - x * complement) / (two_k1 + x * (1.0 - complement))
    return complement


@triton.jit
def log_bessel_i_scaled_and_ratio(nu, x, shift):
    """(log I_nu(x) - nu log x, I_{nu+1}(x) / I_nu(x)) from one recurrence; nu >= 0 (one value), x >= 0.

    nu = 1/2 (d = 3): the closed forms log(2/pi)/2 + log(sinh(x)/x) and coth x - 1/x. Otherwise
    L(nu) = L(nu + n) + sum_j log D_j, D_j = 2(nu+j+1) + x R_{nu+j+1}, n = ``shift``, and the sum is
    n log1p(x) + log prod_j D_j / (1 + x): each factor lies in [1/10, 2(nu + n)], so one log and no
    overflow (header: log_bessel_i_scaled_and_ratio). The ratio runs R_k = x / D_k downward.
    """
    if nu == 0.5:  # d = 3
        log_scaled = HALF_LOG_TWO_OVER_PI + _log_sinh_over_x(x)
        ratio = _langevin(x)
    else:
        top = nu + shift
        log_scaled = _olver_log_bessel_i_scaled(top, x)
        ratio = _olver_bessel_ratio(top, x)
        if shift > 0:
            scale = 1.0 / (1.0 + x)
            product = scale * 0.0 + 1.0
            for jj in range(shift):
                j = shift - 1 - jj
                denominator = 2.0 * (nu + j + 1.0) + x * ratio
                product *= denominator * scale
                ratio = x / denominator
            log_scaled += shift * log1p(x) + tl.log(product)
    return log_scaled, ratio


@triton.jit
def log_bessel_i_scaled(nu, x, shift):
    """log I_nu(x) - nu log x, nu >= 0 (one value), x >= 0 (finite at x = 0).

    In the Olver range (``shift`` == 0, i.e. nu >= 30) Olver's expansion alone: the ratio the
    combined function also computes is not needed (the vMF log-normalizer, e.g. for the KL term).
    """
    if shift == 0:
        log_scaled = _olver_log_bessel_i_scaled(nu, x)
    else:
        log_scaled = log_bessel_i_scaled_and_ratio(nu, x, shift)[0]
    return log_scaled


@triton.jit
def log_bessel_i(nu, x, shift):
    """log I_nu(x), nu >= 0 (one value), x >= 0: -inf at x = 0 for nu > 0 (0 for nu = 0)."""
    zero = x == 0.0
    value = log_bessel_i_scaled(nu, x, shift) + nu * tl.log(tl.where(zero, 1.0, x))
    at_zero = tl.where(nu == 0.0, 0.0, float("-inf"))
    return tl.where(zero, at_zero, value)


# ================================================================ normalizers (spherical_math.h)
@triton.jit
def log_sphere_area(dim):
    # log |S^{d-1}| = log 2 + (d/2) log pi - lgamma(d/2), with -lgamma(d/2) = lgamma(1) - lgamma(1 + d/2 - 1).
    half = 0.5 * dim
    return LOG2 + half * LOGPI + lgamma_difference(half * 0.0 + 1.0, half - 1.0, 9)


@triton.jit
def power_spherical_log_normalizer(kappa, dim, steps):
    beta = 0.5 * (dim - 1.0)
    alpha = beta + kappa
    return -((alpha + beta) * LOG2 + beta * LOGPI + lgamma_difference(alpha, beta, steps))


@triton.jit
def power_spherical_dlog_normalizer(kappa, dim, steps):
    beta = 0.5 * (dim - 1.0)
    return -log2_plus_digamma_difference(beta + kappa, beta, steps)


@triton.jit
def power_spherical_d2log_normalizer(kappa, dim, steps):
    beta = 0.5 * (dim - 1.0)
    return -trigamma_difference(beta + kappa, beta, steps)


@triton.jit
def vmf_log_normalizer(kappa, dim, shift):
    nu = 0.5 * dim - 1.0
    return -(nu + 1.0) * LOG2PI - log_bessel_i_scaled(nu, kappa, shift)


@triton.jit
def vmf_dlog_normalizer(kappa, dim, shift):
    # d/dkappa log C_vMF = -A_d(kappa) = -I_{d/2}(kappa) / I_{d/2-1}(kappa).
    return -bessel_ratio(0.5 * dim - 1.0, kappa, shift)


@triton.jit
def vmf_d2log_normalizer(kappa, dim, shift):
    # A' = 1 - A^2 - (d-1) A / kappa, A'(0) = 1/d; from q = 1 - A where A is near 1 (header).
    nu = 0.5 * dim - 1.0
    zero = kappa == 0.0
    safe_kappa = tl.where(zero, 1.0, kappa)
    q = bessel_ratio_complement(nu, safe_kappa, shift)
    ratio = bessel_ratio(nu, safe_kappa, shift)
    near_one = -(q * (2.0 - q) - (dim - 1.0) * (1.0 - q) / safe_kappa)
    general = -(1.0 - ratio * ratio - (dim - 1.0) * ratio / safe_kappa)
    return tl.where(zero, -1.0 / dim, tl.where(q < 0.5, near_one, general))


@triton.jit
def log_normalizer(kappa, dim, steps, FAMILY: tl.constexpr):
    # steps: unit steps to the asymptotic range (vMF: Olver's order 30; power spherical: Stirling's 10).
    if FAMILY == POWER_SPHERICAL:
        return power_spherical_log_normalizer(kappa, dim, steps)
    else:
        return vmf_log_normalizer(kappa, dim, steps)


@triton.jit
def dlog_normalizer(kappa, dim, steps, FAMILY: tl.constexpr):
    if FAMILY == POWER_SPHERICAL:
        return power_spherical_dlog_normalizer(kappa, dim, steps)
    else:
        return vmf_dlog_normalizer(kappa, dim, steps)


@triton.jit
def normalizer_quantity(kappa, dim, steps, FAMILY: tl.constexpr, QUANTITY: tl.constexpr):
    """Quantity codes (op_codes.h): log C, dlogC/dkappa, d2logC/dkappa2, entropy, KL to uniform."""
    if QUANTITY == LOG_NORMALIZER:
        return log_normalizer(kappa, dim, steps, FAMILY)
    elif QUANTITY == LOG_NORMALIZER_DERIVATIVE:
        return dlog_normalizer(kappa, dim, steps, FAMILY)
    elif QUANTITY == LOG_NORMALIZER_SECOND_DERIVATIVE:
        if FAMILY == POWER_SPHERICAL:
            return power_spherical_d2log_normalizer(kappa, dim, steps)
        else:
            return vmf_d2log_normalizer(kappa, dim, steps)
    else:
        if FAMILY == POWER_SPHERICAL:
            log_c = power_spherical_log_normalizer(kappa, dim, steps)
            dlog_c = power_spherical_dlog_normalizer(kappa, dim, steps)
        else:  # one Bessel recurrence for both
            nu = 0.5 * dim - 1.0
            log_scaled, ratio = log_bessel_i_scaled_and_ratio(nu, kappa, steps)
            log_c = -(nu + 1.0) * LOG2PI - log_scaled
            dlog_c = -ratio
        entropy = -log_c + tl.where(kappa == 0.0, 0.0, kappa * dlog_c)
        if QUANTITY == ENTROPY:
            return entropy
        else:
            return log_sphere_area(dim) - entropy


@triton.jit
def valid_kappa(kappa):
    # Finite and >= 0 (NaN fails both comparisons).
    return (kappa >= 0.0) & (kappa <= DOUBLE_MAX)


@triton.jit
def row_dnll_dcos(cos, kappa, FAMILY: tl.constexpr):
    """dNLL/dc of rows with cosine ``cos`` (header: row_loss): all the gradients need, and cheap."""
    if FAMILY == COSINE:
        return cos * 0.0 - 1.0
    elif FAMILY == POWER_SPHERICAL:
        # The density vanishes at the antipode: 1 + c is floored (finite NLL, no gradient to c).
        one_plus_cos = 1.0 + cos
        floored = ~(one_plus_cos > POWER_SPHERICAL_ONE_PLUS_COS_FLOOR)
        return tl.where(floored, 0.0, -kappa / tl.where(floored, 1.0, one_plus_cos))
    else:
        return -kappa


@triton.jit
def row_nll(cos, kappa, dim, steps, FAMILY: tl.constexpr):
    """(NLL, dNLL/dkappa) of rows with cosine ``cos`` (header: row_loss); the costly part (normalizers)."""
    if FAMILY == COSINE:
        return -cos, cos * 0.0
    elif FAMILY == POWER_SPHERICAL:
        one_plus_cos = 1.0 + cos
        floored = ~(one_plus_cos > POWER_SPHERICAL_ONE_PLUS_COS_FLOOR)
        log1p_cos = tl.log(tl.where(floored, _f64_like(cos, POWER_SPHERICAL_ONE_PLUS_COS_FLOOR), one_plus_cos))
        nll = -power_spherical_log_normalizer(kappa, dim, steps) - kappa * log1p_cos
        return nll, -power_spherical_dlog_normalizer(kappa, dim, steps) - log1p_cos
    else:
        # -log C_vMF and A_d(kappa) = -dlogC/dkappa from one Bessel recurrence
        nu = 0.5 * dim - 1.0
        log_scaled, ratio = log_bessel_i_scaled_and_ratio(nu, kappa, steps)
        return (nu + 1.0) * LOG2PI + log_scaled - kappa * cos, ratio - cos


# ================================================================ load / convert helpers
@triton.jit
def _f64_like(x, value: tl.constexpr):
    # A float64 constant shaped like x. Needed where a Python float reaches a tl function
    # (where, maximum) rather than an arithmetic operator: those convert it to float32 first
    # (1e-12 would become 9.9999999600e-13).
    return tl.full(x.shape, value, tl.float64)


@triton.jit
def _bfloat16_to_float32(x):
    # A bfloat16 is the upper half of a float32: exact for every value, subnormals included.
    # Written on the bits because the interpreter's bfloat16 converter renormalizes subnormals
    # wrongly (3.45e-40 came back as 1.03e-38); the GPU's cvt gives the same bits as this.
    return (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _float32_to_bfloat16(x):
    # Round to nearest, ties to even, on the bits (as c10::BFloat16 does): correct for subnormals,
    # overflow to inf, NaN kept NaN. The interpreter's own converter truncates and mangles
    # subnormals (see _bfloat16_to_float32); on the GPU this equals cvt.rn.bf16.f32.
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where(x != x, 0x7FC0, rounded)
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _to_float32(x):
    # Half types to float32 right after the load (interpreter: half arithmetic is wrong).
    if x.dtype == tl.bfloat16:
        return _bfloat16_to_float32(x)
    else:
        return x.to(tl.float32)


@triton.jit
def _store_type(x, dtype: tl.constexpr):
    # float64 -> half goes through float32 (the interpreter cannot convert float64 to bfloat16).
    if dtype == tl.float64:
        return x
    elif dtype == tl.bfloat16:
        return _float32_to_bfloat16(x.to(tl.float32))
    else:
        return x.to(tl.float32).to(dtype)


@triton.jit
def _to_acc(x, ACC_F64: tl.constexpr):
    if x.dtype != tl.float64:
        x = _to_float32(x)
    if ACC_F64:
        x = x.to(tl.float64)
    return x


@triton.jit
def _from_f64(x, ACC_F64: tl.constexpr):
    if ACC_F64:
        return x
    else:
        return x.to(tl.float32)


@triton.jit
def _load_f64(pointer, mask):
    x = tl.load(pointer, mask=mask, other=0.0)
    if x.dtype != tl.float64:
        x = _to_float32(x).to(tl.float64)
    return x


@triton.jit
def _row_block(BLOCK_R: tl.constexpr):
    # The BLOCK_R rows of this program, int64 so that row * stride never overflows.
    return tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)


# ================================================================ spherical_nll
@triton.jit(debug=True)
def spherical_nll_kernel(
    mu0, target0, kappa0, grad_mu0, grad_target0,
    mu1, target1, kappa1, grad_mu1, grad_target1,
    mu_stride0, target_stride0, kappa_stride0,
    mu_stride1, target_stride1, kappa_stride1,
    rows0, rows, row_offset,
    nll_out, state_out, grad_weight_out, grad_weight,
    asymptotic_steps,
    D,
    FAMILY: tl.constexpr,
    TWO_VIEWS: tl.constexpr,
    WRITE_GRAD_MU: tl.constexpr,
    WRITE_GRAD_TARGET: tl.constexpr,
    ACC_F64: tl.constexpr,
    CHECK_KAPPA: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,    ONE_BLOCK: tl.constexpr,
):
    """Per-row NLL and gradient coefficients of up to two views in one launch.

    D is a run-time argument (one compiled kernel serves every D up to BLOCK_D; ONE_BLOCK says
    BLOCK_D >= D). Rows are numbered across views (row < rows0: view 0); the row-indexed outputs start at
    ``row_offset`` (views beyond the first two go to further launches). Each program takes BLOCK_R rows,
    accumulates |mu|^2, |t|^2 and mu.t over D in BLOCK_D chunks, then does the per-row
    scalar math in float64 (spherical_math.h: row_cosine, row_loss, row_gradient_coefficients):
      nll_out[r]      NLL (float32, or float64 for float64 inputs)
      state_out[r, :] [mu_coef, target_coef, cross_coef, dnll_dkappa] (float64; columns: op_codes.h)
    With WRITE_GRAD_MU / WRITE_GRAD_TARGET it also writes the gradient for an upstream
    gradient ``grad_weight`` (the value the caller predicts for dL/dnll[r]):
      grad_mu[r]     = w (mu_coef mu + cross_coef t),  grad_target[r] = w (target_coef t + cross_coef mu)
    and records w in grad_weight_out[r] (see rescale_rows_kernel). When D fits one block the
    row stays in registers between the reduction and the gradient, so mu and t are read once.
    Invalid kappa (negative, NaN, inf) gives NaN in every output of the row and, with
    CHECK_KAPPA, a device-side assert ("kappa must be finite and >= 0"). Asserts exist only in
    kernels compiled with debug=True, which this one is: they cost ~30 SASS instructions off the
    streaming path (measured offline for sm_90), and debug adds integer-overflow checks only to
    32-bit integer arithmetic, of which the hot loop has none (offsets are int64 or pointers).
    """
    rows_idx = _row_block(BLOCK_R)
    row_ok = rows_idx < rows
    if TWO_VIEWS:
        second = rows_idx >= rows0
        local = tl.where(second, rows_idx - rows0, rows_idx)
        mu_row = tl.where(second, mu1 + local * mu_stride1, mu0 + local * mu_stride0)
        target_row = tl.where(second, target1 + local * target_stride1, target0 + local * target_stride0)
    else:
        local = rows_idx
        mu_row = mu0 + local * mu_stride0
        target_row = target0 + local * target_stride0

    cols = tl.arange(0, BLOCK_D)
    if ONE_BLOCK:  # BLOCK_D >= D
        mask = row_ok[:, None] & (cols < D)[None, :]
        m = _to_acc(tl.load(mu_row[:, None] + cols[None, :], mask=mask, other=0.0), ACC_F64)
        t = _to_acc(tl.load(target_row[:, None] + cols[None, :], mask=mask, other=0.0), ACC_F64)
        mu_mu = tl.sum(m * m, axis=1)
        target_target = tl.sum(t * t, axis=1)
        mu_target = tl.sum(m * t, axis=1)
    else:
        acc_mm = _to_acc(tl.zeros([BLOCK_R, BLOCK_D], tl.float32), ACC_F64)
        acc_tt = _to_acc(tl.zeros([BLOCK_R, BLOCK_D], tl.float32), ACC_F64)
        acc_mt = _to_acc(tl.zeros([BLOCK_R, BLOCK_D], tl.float32), ACC_F64)
        for start in range(0, D, BLOCK_D):
            c = start + cols
            mask = row_ok[:, None] & (c < D)[None, :]
            m = _to_acc(tl.load(mu_row[:, None] + c[None, :], mask=mask, other=0.0), ACC_F64)
            t = _to_acc(tl.load(target_row[:, None] + c[None, :], mask=mask, other=0.0), ACC_F64)
            acc_mm += m * m
            acc_tt += t * t
            acc_mt += m * t
        mu_mu = tl.sum(acc_mm, axis=1)
        target_target = tl.sum(acc_tt, axis=1)
        mu_target = tl.sum(acc_mt, axis=1)

    # ---- per-row scalar math, float64 (F.normalize semantics: x / max(|x|, eps))
    norm_mu = tl.sqrt(mu_mu.to(tl.float64))
    norm_target = tl.sqrt(target_target.to(tl.float64))
    eps = _f64_like(norm_mu, NORMALIZE_EPS)
    inv_mu = 1.0 / tl.maximum(norm_mu, eps)
    inv_target = 1.0 / tl.maximum(norm_target, eps)
    cos = mu_target.to(tl.float64) * inv_mu * inv_target
    dim = tl.cast(D, tl.float64)
    if FAMILY == COSINE:
        kappa = cos * 0.0
        valid = row_ok
    else:
        if TWO_VIEWS:
            kappa_ptr = tl.where(second, kappa1 + local * kappa_stride1, kappa0 + local * kappa_stride0)
        else:
            kappa_ptr = kappa0 + local * kappa_stride0
        kappa = _load_f64(kappa_ptr, row_ok)
        valid = valid_kappa(kappa)
        if CHECK_KAPPA:  # an asynchronous device-side assert (the kernel is compiled with debug=True)
            tl.device_assert(valid | ~row_ok, "kappa must be finite and >= 0")
        kappa = tl.where(valid, kappa, 0.0)  # keeps the math finite; the row is set to NaN below
    dnll_dcos = row_dnll_dcos(cos, kappa, FAMILY)
    nan = float("nan")
    cross_coef = tl.where(valid, dnll_dcos * inv_mu * inv_target, nan)
    mu_coef = tl.where(valid, tl.where(norm_mu > NORMALIZE_EPS, -dnll_dcos * cos * inv_mu * inv_mu, 0.0), nan)
    target_coef = tl.where(
        valid, tl.where(norm_target > NORMALIZE_EPS, -dnll_dcos * cos * inv_target * inv_target, 0.0), nan)
    out_idx = row_offset + rows_idx

    # ---- gradients for the predicted upstream gradient w (minimum-traffic training path).
    # Written before the normalizers are evaluated: the stores leave while this program does
    # its float64 tail, and the row's registers are free sooner.
    if WRITE_GRAD_MU or WRITE_GRAD_TARGET:
        w = tl.cast(grad_weight, tl.float64)
        a_mu = _from_f64(w * mu_coef, ACC_F64)[:, None]
        a_target = _from_f64(w * target_coef, ACC_F64)[:, None]
        a_cross = _from_f64(w * cross_coef, ACC_F64)[:, None]
        tl.store(grad_weight_out + out_idx, tl.full([BLOCK_R], 0.0, tl.float64) + w, mask=row_ok)
        if TWO_VIEWS:
            out_mu_row = tl.where(second, grad_mu1 + local * D, grad_mu0 + local * D)
            out_target_row = tl.where(second, grad_target1 + local * D, grad_target0 + local * D)
        else:
            out_mu_row = grad_mu0 + local * D
            out_target_row = grad_target0 + local * D
        if ONE_BLOCK:
            # The row is still in registers: no second read of mu and t.
            if WRITE_GRAD_MU:
                g = a_mu * m + a_cross * t
                tl.store(out_mu_row[:, None] + cols[None, :], _store_type(g, grad_mu0.dtype.element_ty), mask=mask)
            if WRITE_GRAD_TARGET:
                g = a_target * t + a_cross * m
                tl.store(out_target_row[:, None] + cols[None, :], _store_type(g, grad_target0.dtype.element_ty), mask=mask)
        else:
            # D spans several blocks: the second sweep re-reads the row (mostly from L2).
            for start in range(0, D, BLOCK_D):
                c = start + cols
                mask = row_ok[:, None] & (c < D)[None, :]
                m = _to_acc(tl.load(mu_row[:, None] + c[None, :], mask=mask, other=0.0), ACC_F64)
                t = _to_acc(tl.load(target_row[:, None] + c[None, :], mask=mask, other=0.0), ACC_F64)
                if WRITE_GRAD_MU:
                    g = a_mu * m + a_cross * t
                    tl.store(out_mu_row[:, None] + c[None, :], _store_type(g, grad_mu0.dtype.element_ty), mask=mask)
                if WRITE_GRAD_TARGET:
                    g = a_target * t + a_cross * m
                    tl.store(out_target_row[:, None] + c[None, :], _store_type(g, grad_target0.dtype.element_ty), mask=mask)

    # ---- the normalizers (kappa-only float64 math) and the row outputs
    nll, dnll_dkappa = row_nll(cos, kappa, dim, asymptotic_steps, FAMILY)
    tl.store(nll_out + out_idx, _store_type(tl.where(valid, nll, nan), nll_out.dtype.element_ty), mask=row_ok)
    state_row = state_out + out_idx * ROW_STATE_COLUMNS
    tl.store(state_row + MU_COEF_COLUMN, mu_coef, mask=row_ok)
    tl.store(state_row + TARGET_COEF_COLUMN, target_coef, mask=row_ok)
    tl.store(state_row + CROSS_COEF_COLUMN, cross_coef, mask=row_ok)
    tl.store(state_row + KAPPA_GRAD_COLUMN, tl.where(valid, dnll_dkappa, nan), mask=row_ok)


# ================================================================ backward of the fused path
@triton.jit
def rescale_rows_kernel(
    grad_mu0, grad_target0, grad_mu1, grad_target1,
    rows0, rows, row_offset,
    upstream, upstream_stride, applied,
    D,
    HAS_MU: tl.constexpr,
    HAS_TARGET: tl.constexpr,
    TWO_VIEWS: tl.constexpr,
    ACC_F64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """In place: rows whose upstream gradient u[r] differs from the applied weight w[r] are
    multiplied by u[r] / w[r], and w[r] = u[r]. Rows where the forward's prediction was
    right (u == w, the usual case) are not touched: their loads and stores are masked off,
    so a correctly predicted backward moves 16 bytes per row instead of 2 row-lengths.
    """
    rows_idx = _row_block(BLOCK_R)
    row_ok = rows_idx < rows
    out_idx = row_offset + rows_idx
    u = _load_f64(upstream + out_idx * upstream_stride, row_ok)
    w = tl.load(applied + out_idx, mask=row_ok, other=1.0)
    need = row_ok & (u != w)
    ratio = _from_f64(u / tl.where(need, w, 1.0), ACC_F64)[:, None]
    if TWO_VIEWS:
        second = rows_idx >= rows0
        local = tl.where(second, rows_idx - rows0, rows_idx)
    else:
        local = rows_idx
    cols = tl.arange(0, BLOCK_D)
    for start in range(0, D, BLOCK_D):
        c = start + cols
        mask = need[:, None] & (c < D)[None, :]
        if HAS_MU:
            if TWO_VIEWS:
                row_ptr = tl.where(second, grad_mu1 + local * D, grad_mu0 + local * D)
            else:
                row_ptr = grad_mu0 + local * D
            pointers = row_ptr[:, None] + c[None, :]
            g = _to_acc(tl.load(pointers, mask=mask, other=0.0), ACC_F64)
            tl.store(pointers, _store_type(g * ratio, grad_mu0.dtype.element_ty), mask=mask)
        if HAS_TARGET:
            if TWO_VIEWS:
                row_ptr = tl.where(second, grad_target1 + local * D, grad_target0 + local * D)
            else:
                row_ptr = grad_target0 + local * D
            pointers = row_ptr[:, None] + c[None, :]
            g = _to_acc(tl.load(pointers, mask=mask, other=0.0), ACC_F64)
            tl.store(pointers, _store_type(g * ratio, grad_target0.dtype.element_ty), mask=mask)
    tl.store(applied + out_idx, u, mask=need)


# ================================================================ scaled_row_combination
@triton.jit
def scaled_row_combination_kernel(
    x0, y0, out0, x1, y1, out1,
    x_stride0, y_stride0, x_stride1, y_stride1,
    rows0, rows, row_offset,
    scale, scale_stride, coef_x, coef_x_stride, coef_y, coef_y_stride,
    D,
    TWO_VIEWS: tl.constexpr,
    ACC_F64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[r, :] = scale[r] * (coef_x[r] * x[r, :] + coef_y[r] * y[r, :]); rows across two views,
    the per-row coefficients indexed from ``row_offset``.

    The whole backward of the op-schema path: one pass reading x and y, writing out.
    """
    rows_idx = _row_block(BLOCK_R)
    row_ok = rows_idx < rows
    coef_idx = row_offset + rows_idx
    s = _load_f64(scale + coef_idx * scale_stride, row_ok)
    a = _from_f64(s * _load_f64(coef_x + coef_idx * coef_x_stride, row_ok), ACC_F64)[:, None]
    b = _from_f64(s * _load_f64(coef_y + coef_idx * coef_y_stride, row_ok), ACC_F64)[:, None]
    if TWO_VIEWS:
        second = rows_idx >= rows0
        local = tl.where(second, rows_idx - rows0, rows_idx)
        x_row = tl.where(second, x1 + local * x_stride1, x0 + local * x_stride0)
        y_row = tl.where(second, y1 + local * y_stride1, y0 + local * y_stride0)
        out_row = tl.where(second, out1 + local * D, out0 + local * D)
    else:
        local = rows_idx
        x_row = x0 + local * x_stride0
        y_row = y0 + local * y_stride0
        out_row = out0 + local * D
    cols = tl.arange(0, BLOCK_D)
    for start in range(0, D, BLOCK_D):
        c = start + cols
        mask = row_ok[:, None] & (c < D)[None, :]
        x = _to_acc(tl.load(x_row[:, None] + c[None, :], mask=mask, other=0.0), ACC_F64)
        y = _to_acc(tl.load(y_row[:, None] + c[None, :], mask=mask, other=0.0), ACC_F64)
        tl.store(out_row[:, None] + c[None, :], _store_type(a * x + b * y, out0.dtype.element_ty), mask=mask)


# ================================================================ normalizer_quantity
@triton.jit(debug=True)
def normalizer_quantity_kernel(
    kappa, out, n, dim_int, asymptotic_steps,
    FAMILY: tl.constexpr,
    QUANTITY: tl.constexpr,
    CHECK_KAPPA: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out[i] = quantity(kappa[i]) in float64, stored in out's dtype; NaN for invalid kappa
    (and a device-side assert with CHECK_KAPPA, as in spherical_nll_kernel)."""
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    ok = index < n
    k = _load_f64(kappa + index, ok)
    valid = valid_kappa(k)
    if CHECK_KAPPA:
        tl.device_assert(valid | ~ok, "kappa must be finite and >= 0")
    k = tl.where(valid, k, 0.0)
    dim = tl.cast(dim_int, tl.float64)
    value = normalizer_quantity(k, dim, asymptotic_steps, FAMILY, QUANTITY)
    value = tl.where(valid, value, float("nan"))
    tl.store(out + index, _store_type(value, out.dtype.element_ty), mask=ok)


# ================================================================ special functions (tests)
@triton.jit
def special_function_kernel(a_ptr, b_ptr, out, n, olver_shift, FUNCTION: tl.constexpr, BLOCK: tl.constexpr):
    """The ported header functions elementwise on float64 (a, b), to test the port directly.

    FUNCTION: 0 lgamma_difference(a, b), 1 log2_plus_digamma_difference(a, b),
    2 trigamma_difference(a, b), 3 log_bessel_i_scaled(nu=a, x=b), 4 bessel_ratio(nu=a, x=b),
    5 bessel_ratio_complement(nu=a, x=b) (triton_ops.SPECIAL_FUNCTIONS), and beyond the ops'
    launcher: 6 digamma_difference(a, b), 7 log_bessel_i(nu=a, x=b),
    8 log_bessel_i_scaled_and_ratio(nu=a, x=b), whose two outputs go to out[0:n] (log part) and
    out[n:2n] (ratio): out must hold 2n values.
    For 3-5, 7 and 8 the order is one value per launch, as in the normalizer and row kernels (the
    header's d = 3 and Olver-range branches are scalar branches on it): the kernel reads a[0], and
    ``olver_shift`` must be its unit steps to the Olver range, ceil(30 - nu) or 0 for nu >= 30 (as
    triton_ops.special_function computes it).
    """
    tl.static_assert(FUNCTION <= 8, "special_function_kernel: FUNCTION is a code from 0 to 8")
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    ok = index < n
    b = tl.load(b_ptr + index, mask=ok, other=1.0)
    if FUNCTION == 0:
        value = lgamma_difference(tl.load(a_ptr + index, mask=ok, other=1.0), b, 10)
    elif FUNCTION == 1:
        value = log2_plus_digamma_difference(tl.load(a_ptr + index, mask=ok, other=1.0), b, 10)
    elif FUNCTION == 2:
        value = trigamma_difference(tl.load(a_ptr + index, mask=ok, other=1.0), b, 10)
    elif FUNCTION == 6:
        value = digamma_difference(tl.load(a_ptr + index, mask=ok, other=1.0), b, 10)
    elif FUNCTION == 3:
        value = log_bessel_i_scaled(tl.load(a_ptr), b, olver_shift)
    elif FUNCTION == 4:
        value = bessel_ratio(tl.load(a_ptr), b, olver_shift)
    elif FUNCTION == 5:
        value = bessel_ratio_complement(tl.load(a_ptr), b, olver_shift)
    elif FUNCTION == 7:
        value = log_bessel_i(tl.load(a_ptr), b, olver_shift)
    else:  # 8
        value, ratio = log_bessel_i_scaled_and_ratio(tl.load(a_ptr), b, olver_shift)
        tl.store(out + n + index, ratio, mask=ok)
    tl.store(out + index, value, mask=ok)
