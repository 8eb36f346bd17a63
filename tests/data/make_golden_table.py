#!/usr/bin/env python
"""Generate tests/data/golden_normalizers.csv: high-precision reference values
for the power-spherical and von Mises-Fisher log-normalizers on S^{d-1}.

All values are computed with mpmath (mp.dps = 50, with extra guard digits for
the quadrature) and written with 20 significant digits.

Columns
-------
family, dim, kappa, log_normalizer, dlog_normalizer_dkappa,
d2log_normalizer_dkappa2, entropy, log_bessel_i, bessel_ratio

* ``kappa`` is the grid value rounded to the nearest float32 and written as
  ``repr`` of that float32 value converted to float64 (it round-trips
  exactly); every mpmath evaluation uses that exact binary value.
* ``log_bessel_i`` = log I_nu(kappa) and ``bessel_ratio`` = I_{nu+1}/I_nu with
  nu = d/2 - 1 (vMF rows only; empty for power_spherical rows).

Method for the vMF rows (any nu >= 0, 0 <= kappa <= 1e7)
-------------------------------------------------------
Poisson's integral, with t = 1 - s,

    I_nu(x) = (x/2)^nu / (sqrt(pi) Gamma(nu+1/2)) * e^x * J,
    J = int_0^2 exp(-x s) (s (2 - s))^(nu - 1/2) ds,

is evaluated with tanh-sinh quadrature (mpmath.quad) in log form: the
exponent h(s) is shifted by its maximum h(s0) (closed-form root of a
quadratic), the interval is split at s0 +- sigma*2^j (sigma = 1/sqrt(-h''(s0)))
and truncated where h - h(s0) < -(dps+15) ln 10.  For nu <= 1/2 (d = 2, 3) the
substitution s = 1 - cos(theta) removes the endpoint singularity
(J = int_0^pi exp(-x (1 - cos th)) sin^(2 nu)(th) dth).  The same quadrature
nodes (memoised) give the moments of s under the weight, so

    R   = I_{nu+1}/I_nu = E[t] = 1 - E[s]              (= -dlogC/dkappa)
    R'  = Var[t] = Var[s]                              (= -d2logC/dkappa2)

without differentiating numerically and without cancellation.

Self-checks (asserted while generating; the script aborts on failure)
--------------------------------------------------------------------
* mpmath.besseli(nu, x) and besseli(nu+1, x)/besseli(nu, x), wherever each
  call finishes within a small CPU budget, agree with the quadrature to
  >= 30 significant digits;
* an independent quadrature for I_{nu+1}: exp(log I_{nu+1} - log I_nu) == R;
* the three-term recurrence I_nu - I_{nu+2} = (2(nu+1)/x) I_{nu+1}, written as
  1/R_nu - R_{nu+1} == 2(nu+1)/x (R_{nu+1} from the second quadrature);
* the Riccati equation R' = 1 - R^2 - (2 nu + 1) R / x against Var[s];
* d = 3 closed forms I_{1/2}(x) = sqrt(2/(pi x)) sinh x, R = coth x - 1/x;
* kappa = 0 limits (quadrature at x = 0 vs. the closed forms), and
  power-spherical == vMF == uniform at kappa = 0;
* power-spherical derivatives against mpmath.diff of the log-normalizer.

Usage:  python tests/data/make_golden_table.py [--output PATH] [--dims 2,3,...]
"""

import argparse
import csv
import os
import signal
import sys
import time

import mpmath as mp
import numpy as np

DPS = 50          # precision of the reference values
QDPS = 70         # working precision inside the quadrature (guard digits)
OUT_DIGITS = 20   # significant digits written to the CSV
XCHECK_DIGITS = 30  # required agreement between independent methods
BESSELI_CPU_S = 0.4  # CPU budget per mpmath.besseli cross-check call

DIMS = [2, 3, 4, 5, 7, 8, 10, 16, 31, 32, 63, 64, 100, 128, 255, 256, 512,
        1023, 1024, 2047, 2048, 4096, 8191, 16384, 32768, 65535, 65536]

HEADER = ["family", "dim", "kappa", "log_normalizer", "dlog_normalizer_dkappa",
          "d2log_normalizer_dkappa2", "entropy", "log_bessel_i", "bessel_ratio"]


def kappa_grid():
    """0, 37 log-spaced values 1e-6..1e6 (3 per decade), 1e7; all float32."""
    raw = [0.0] + [10.0 ** e for e in np.linspace(-6.0, 6.0, 37)] + [1e7]
    return [float(np.float32(k)) for k in raw]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def fmt(x):
    x = mp.mpf(x)
    if mp.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0.0"
    return mp.nstr(x, OUT_DIGITS, min_fixed=-4, max_fixed=8)


def rel_err(a, b):
    a, b = mp.mpf(a), mp.mpf(b)
    if a == b:
        return mp.mpf(0)
    return abs(a - b) / max(abs(b), abs(a))


def check(name, a, b, digits, where, stats):
    e = rel_err(a, b)
    key = name
    worst = stats.setdefault(key, [mp.mpf(0), None, 0])
    worst[2] += 1
    if e > worst[0]:
        worst[0], worst[1] = e, where
    if e > mp.mpf(10) ** (-digits):
        raise AssertionError("self-check %r failed at %s: %s vs %s (rel err %s)"
                             % (name, where, mp.nstr(a, 40), mp.nstr(b, 40),
                                mp.nstr(e, 3)))


class _CpuTimeout(Exception):
    pass


def _on_vtalrm(signum, frame):
    raise _CpuTimeout()


def with_cpu_limit(fn, seconds):
    """Run fn() but give up (return None) after `seconds` of user CPU time."""
    old = signal.signal(signal.SIGVTALRM, _on_vtalrm)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        return fn()
    except (_CpuTimeout, mp.libmp.NoConvergence):
        return None
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, old)


# --------------------------------------------------------------------------
# Bessel I via Poisson's integral
# --------------------------------------------------------------------------
def bessel_quad(nu, x):
    """Quadrature of J(x) = int_0^2 exp(-x s) (s(2-s))^(nu-1/2) ds.

    Returns dict with log I_nu(x) (None at x = 0), log(e^x J), R = E[1-s],
    var = Var[s] and the quadrature's own relative error estimate.
    Must be called inside mp.workdps(QDPS).
    """
    nu = mp.mpf(nu)
    x = mp.mpf(x)
    p = nu - mp.mpf(1) / 2
    L = (mp.mp.dps + 15) * mp.log(10)
    two = mp.mpf(2)

    if p > 0:
        # variable s, weight exp(h(s)), h = -x s + p log(s(2-s)); concave.
        def h(s):
            return -x * s + p * mp.log(s * (two - s))
        b = 2 * x + 2 * p
        # smaller root of x s^2 - (2x + 2p) s + 2p = 0 (stable form)
        s0 = 4 * p / (b + mp.sqrt(b * b - 8 * x * p))
        sig = 1 / mp.sqrt(p * (1 / s0 ** 2 + 1 / (two - s0) ** 2))
        hmax = h(s0)
        lo, hi, centre = mp.mpf(0), two, s0

        def s_of(y):
            return y
    else:
        # nu <= 1/2: s = 1 - cos(th) = 2 sin^2(th/2), ds (s(2-s))^p = sin^(2nu)(th) dth;
        # smooth integrand, no endpoint singularity (nu = 0 is I_0's own integral)
        def h(th):
            r = -2 * x * mp.sin(th / 2) ** 2
            if nu != 0:
                r += 2 * nu * mp.log(mp.sin(th))
            return r
        s0 = mp.mpf(0)
        sig = min(mp.mpf(1), 1 / mp.sqrt(x)) if x > 0 else mp.mpf(1)
        hmax = mp.mpf(0)
        lo, hi, centre = mp.mpf(0), +mp.pi, mp.mpf(0)

        def s_of(y):
            return 2 * mp.sin(y / 2) ** 2

    # breakpoints: centre +- sig * 2^j, truncated where the weight < e^-L
    right = []
    c = mp.mpf(1)
    while True:
        t = centre + c * sig
        if t >= hi:
            right.append(hi)
            break
        right.append(t)
        if h(t) - hmax < -L:
            break
        c *= 2
    left = []
    if centre > lo:
        c = mp.mpf(1)
        while True:
            t = centre - c * sig
            if t <= lo:
                left.append(lo)
                break
            left.append(t)
            if h(t) - hmax < -L:
                break
            c *= 2
        pts = left[::-1] + [centre] + right
    else:
        pts = [lo] + right

    cache = {}

    def g(y):
        v = cache.get(y)
        if v is None:
            v = mp.exp(h(y) - hmax)
            cache[y] = v
        return v

    sc = s0  # moments of (s - sc)
    I0, e0 = mp.quad(g, pts, error=True)
    I1 = mp.quad(lambda y: g(y) * (s_of(y) - sc), pts)
    I2 = mp.quad(lambda y: g(y) * (s_of(y) - sc) ** 2, pts)
    m1 = I1 / I0
    m2 = I2 / I0
    if p > 0:
        log_exJ = x + hmax + mp.log(I0)        # log(e^x J)
    else:
        log_exJ = x + mp.log(I0)               # hmax = 0
    R = (1 - s0) - m1
    var = m2 - m1 * m1
    qerr = e0 / I0  # quad's own estimate; the moments are verified by the checks
    if x > 0:
        logI = (nu * mp.log(x / 2) - mp.log(mp.pi) / 2
                - mp.loggamma(nu + mp.mpf(1) / 2) + log_exJ)
    else:
        logI = None
    return dict(logI=logI, log_exJ=log_exJ, R=R, var=var, qerr=qerr,
                npts=len(cache), nint=len(pts) - 1)


# --------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------
def ps_row(d, kappa, stats, do_diff):
    with mp.workdps(QDPS):
        k = mp.mpf(kappa)
        beta = (mp.mpf(d) - 1) / 2
        ln2, lnpi = mp.log(2), mp.log(mp.pi)

        def logC(kk):
            a = beta + kk
            return -((a + beta) * ln2 + beta * lnpi + mp.loggamma(a)
                     - mp.loggamma(a + beta))
        a = beta + k
        lc = logC(k)
        d1 = -(ln2 + mp.digamma(a) - mp.digamma(a + beta))
        d2 = -(mp.psi(1, a) - mp.psi(1, a + beta))
        H = -lc + k * d1
        where = "PS d=%d kappa=%r" % (d, kappa)
        if do_diff:
            # mpmath.diff uses its own extra precision; 30 digits is plenty
            check("ps dlogC vs mp.diff", mp.diff(logC, k, 1), d1, XCHECK_DIGITS, where, stats)
            check("ps d2logC vs mp.diff", mp.diff(logC, k, 2), d2, XCHECK_DIGITS, where, stats)
        if kappa == 0:
            uni = mp.loggamma(mp.mpf(d) / 2) - ln2 - (mp.mpf(d) / 2) * lnpi
            check("ps kappa=0 vs -log|S^{d-1}|", lc, uni, 45, where, stats)
    return dict(log_normalizer=lc, d1=d1, d2=d2, entropy=H)


def vmf_row(d, kappa, stats, besseli_log):
    where = "vMF d=%d kappa=%r" % (d, kappa)
    with mp.workdps(QDPS):
        nu = mp.mpf(d) / 2 - 1
        x = mp.mpf(kappa)
        q0 = bessel_quad(nu, x)
        q1 = bessel_quad(nu + 1, x)
        for q in (q0, q1):
            assert q["qerr"] < mp.mpf(10) ** -(DPS - 5), (where, q["qerr"])
        half = mp.mpf(1) / 2
        lc = (nu * mp.log(2) - (nu + 1) * mp.log(2 * mp.pi) + mp.log(mp.pi) / 2
              + mp.loggamma(nu + half) - q0["log_exJ"])
        R, var = q0["R"], q0["var"]
        d1 = -R
        d2 = -var
        H = -lc + x * d1
        if x == 0:
            logI = mp.mpf(0) if nu == 0 else mp.ninf
            R0 = mp.mpf(0)
            # limits
            uni = mp.loggamma(mp.mpf(d) / 2) - mp.log(2) - (mp.mpf(d) / 2) * mp.log(mp.pi)
            check("vmf kappa=0 logC quad vs closed form", lc, uni, 45, where, stats)
            assert abs(R) < mp.mpf(10) ** -(DPS + 5), (where, R)
            check("vmf kappa=0 d2 quad vs -1/(2(nu+1))", d2, -1 / (2 * (nu + 1)), 45, where, stats)
            R = R0
            d1 = mp.mpf(0)
            H = -lc
        else:
            logI = q0["logI"]
            # logC = nu log x - (nu+1) log(2 pi) - log I_nu(x)
            check("vmf logC two forms", lc,
                  nu * mp.log(x) - (nu + 1) * mp.log(2 * mp.pi) - logI, 45, where, stats)
            # independent quadrature for I_{nu+1}
            check("vmf ratio: separate quad I_{nu+1}/I_nu vs moment",
                  mp.exp(q1["logI"] - logI), R, XCHECK_DIGITS, where, stats)
            # three-term recurrence I_nu - I_{nu+2} = 2(nu+1)/x I_{nu+1}
            check("vmf recurrence 1/R_nu - R_{nu+1} = 2(nu+1)/x",
                  1 / R - q1["R"], 2 * (nu + 1) / x, XCHECK_DIGITS, where, stats)
            # Riccati equation for R
            check("vmf Riccati R' = 1 - R^2 - (2nu+1)R/x vs Var",
                  1 - R * R - (2 * nu + 1) * R / x, var, XCHECK_DIGITS, where, stats)
            if d == 3:
                check("vmf d=3 closed form log I_1/2",
                      mp.log(2 / (mp.pi * x)) / 2 + mp.log(mp.sinh(x)), logI,
                      45, where, stats)
                check("vmf d=3 closed form ratio coth x - 1/x",
                      mp.coth(x) - 1 / x, R, 40, where, stats)
    if x != 0:
        # mpmath.besseli at the reference precision (mp.dps = 50), where fast
        with mp.workdps(DPS):
            b0 = with_cpu_limit(lambda: mp.besseli(nu, x, maxterms=10 ** 6), BESSELI_CPU_S)
            if b0 is not None:
                check("vmf log I_nu vs mpmath.besseli", mp.log(b0), logI,
                      XCHECK_DIGITS, where, stats)
                besseli_log["logI"] += 1
                b1 = with_cpu_limit(lambda: mp.besseli(nu + 1, x, maxterms=10 ** 6),
                                    BESSELI_CPU_S)
                if b1 is not None:
                    check("vmf ratio vs mpmath.besseli", b1 / b0, R,
                          XCHECK_DIGITS, where, stats)
                    besseli_log["ratio"] += 1
            else:
                besseli_log["skipped"] += 1
    return dict(log_normalizer=lc, d1=d1, d2=d2, entropy=H, logI=logI, R=R,
                npts=q0["npts"] + q1["npts"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "golden_normalizers.csv"))
    ap.add_argument("--dims", default=None,
                    help="comma-separated subset of dimensions (debugging)")
    args = ap.parse_args(argv)
    mp.mp.dps = DPS
    dims = DIMS if args.dims is None else [int(s) for s in args.dims.split(",")]
    kappas = kappa_grid()

    t_wall, t_cpu = time.time(), time.process_time()
    stats, besseli_log = {}, {"logI": 0, "ratio": 0, "skipped": 0}
    rows = []
    for d in dims:
        td = time.process_time()
        for i, kappa in enumerate(kappas):
            ps = ps_row(d, kappa, stats, do_diff=(i % 4 == 0))
            rows.append(["power_spherical", str(d), repr(kappa), fmt(ps["log_normalizer"]),
                         fmt(ps["d1"]), fmt(ps["d2"]), fmt(ps["entropy"]), "", ""])
        for kappa in kappas:
            v = vmf_row(d, kappa, stats, besseli_log)
            rows.append(["vmf", str(d), repr(kappa), fmt(v["log_normalizer"]),
                         fmt(v["d1"]), fmt(v["d2"]), fmt(v["entropy"]),
                         fmt(v["logI"]), fmt(v["R"])])
        # PS and vMF coincide (uniform distribution) at kappa = 0
        ps0 = [r for r in rows if r[0] == "power_spherical" and r[1] == str(d) and r[2] == "0.0"]
        vm0 = [r for r in rows if r[0] == "vmf" and r[1] == str(d) and r[2] == "0.0"]
        if ps0 and vm0:
            assert ps0[0][3] == vm0[0][3] and ps0[0][6] == vm0[0][6], (ps0, vm0)
        print("d=%-6d done in %6.1f s CPU" % (d, time.process_time() - td),
              file=sys.stderr, flush=True)

    with open(args.output, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        w.writerows(rows)

    # round-trip sanity of the written file
    with open(args.output) as f:
        back = list(csv.reader(f))
    assert back[0] == HEADER and len(back) == len(rows) + 1
    for r in back[1:]:
        assert float(np.float32(float(r[2]))) == float(r[2])
        for v in r[3:]:
            if v:
                float(v)

    print("\nwrote %d rows to %s" % (len(rows), args.output), file=sys.stderr)
    print("self-checks (worst relative disagreement, #points):", file=sys.stderr)
    for k, (e, where, n) in stats.items():
        print("  %-55s %9s  n=%-5d at %s" % (k, mp.nstr(e, 3), n, where), file=sys.stderr)
    print("mpmath.besseli cross-checks: log I_nu at %d points, ratio at %d points, "
          "%d points skipped (besseli over %.1fs CPU)"
          % (besseli_log["logI"], besseli_log["ratio"], besseli_log["skipped"],
             BESSELI_CPU_S), file=sys.stderr)
    print("run time: %.1f s CPU, %.1f s wall" % (time.process_time() - t_cpu,
                                                time.time() - t_wall), file=sys.stderr)


if __name__ == "__main__":
    main()
