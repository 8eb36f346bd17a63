// Special functions for likelihoods on the unit hypersphere, in double precision.
//
// One source for host C++ and CUDA device code: every function is VISSIAM_HD
// (__host__ __device__ under nvcc, plain inline otherwise). The per-row scalar
// math of the kernels is tiny next to the row reductions, so it is all done in
// double; accuracy targets are met with margin (see tests/test_special_functions.py
// and the mpmath golden table in tests/data).
//
// Contents
//   lgamma_difference(a, b)          lgamma(a) - lgamma(a + b), no cancellation
//   digamma_difference(a, b)         psi(a) - psi(a + b)
//   trigamma_difference(a, b)        psi'(a) - psi'(a + b)
//   log_bessel_i_scaled(nu, x)       log I_nu(x) - nu log x   (finite at x = 0)
//   log_bessel_i_scaled_and_ratio    both of the above and below, from one recurrence
//   log_bessel_i(nu, x)              log I_nu(x), any nu >= 0
//   bessel_ratio(nu, x)              I_{nu+1}(x) / I_nu(x)
//   bessel_ratio_complement(nu, x)   1 - I_{nu+1}(x) / I_nu(x), exact also near 1
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define VISSIAM_HD __host__ __device__ inline
#else
#define VISSIAM_HD inline
#endif

namespace vissiam {

constexpr double kLog2 = 0.69314718055994530942;
constexpr double kLogPi = 1.14472988584940017414;
constexpr double kLog2Pi = 1.83787706640934548356;

// Below this argument the gamma-family functions are shifted up by their
// recurrences; at and above it the asymptotic series below reach double
// precision with the number of terms kept.
constexpr double kAsymptoticMinArgument = 10.0;

// Olver's uniform expansion of I_nu is used for nu >= this (its truncation error
// there is ~1e-11 in log I); smaller orders are
// reached by the (stable) downward recurrence of the ratio I_{k+1}/I_k.
constexpr double kOlverMinOrder = 30.0;

namespace detail {

// Stirling remainder r(x) = lgamma(x) - [(x - 1/2) log x - x + log(2 pi)/2]
//   = sum_k B_2k / (2k (2k-1) x^(2k-1)),  8 terms: error < 2e-18 for x >= 10.
VISSIAM_HD double stirling_remainder(double x) {
  const double r = 1.0 / x;
  const double r2 = r * r;
  return r * (1.0 / 12 + r2 * (-1.0 / 360 + r2 * (1.0 / 1260 + r2 * (-1.0 / 1680 +
         r2 * (1.0 / 1188 + r2 * (-691.0 / 360360 + r2 * (1.0 / 156 +
         r2 * (-3617.0 / 122400))))))));
}

// psi(x) = log x - 1/(2x) - s(x),  s(x) = sum_k B_2k / (2k x^2k).
VISSIAM_HD double digamma_series(double x) {
  const double r2 = 1.0 / (x * x);
  return r2 * (1.0 / 12 + r2 * (-1.0 / 120 + r2 * (1.0 / 252 + r2 * (-1.0 / 240 +
         r2 * (1.0 / 132 + r2 * (-691.0 / 32760 + r2 * (1.0 / 12)))))));
}

// psi'(x) = 1/x + 1/(2x^2) + t(x),  t(x) = sum_k B_2k / x^(2k+1).
VISSIAM_HD double trigamma_series(double x) {
  const double r = 1.0 / x;
  const double r2 = r * r;
  return r * r2 * (1.0 / 6 + r2 * (-1.0 / 30 + r2 * (1.0 / 42 + r2 * (-1.0 / 30 +
         r2 * (5.0 / 66 + r2 * (-691.0 / 2730 + r2 * (7.0 / 6)))))));
}

}  // namespace detail

// lgamma(a) - lgamma(a + b) for a > 0, b >= 0.
// lgamma(a) = lgamma(a + 1) - log a lifts a to >= 10; there, with Stirling,
//   lgamma(a) - lgamma(a+b) = -(a - 1/2) log1p(b/a) - b log(a+b) + b + r(a) - r(a+b),
// whose terms never cancel catastrophically (|result| >= 1.3 b for a >= 10),
// unlike the float32 difference of two values of size a log a.
VISSIAM_HD double lgamma_difference(double a, double b) {
  if (b == 0.0) return 0.0;
  double shifted = 0.0;
  while (a < kAsymptoticMinArgument) {
    shifted += ::log1p(b / a);  // log(a + b) - log(a)
    a += 1.0;
  }
  return shifted - (a - 0.5) * ::log1p(b / a) - b * ::log(a + b) + b +
         detail::stirling_remainder(a) - detail::stirling_remainder(a + b);
}

// log 2 + psi(a) - psi(a + b): the power spherical kappa-derivative needs this
// sum, and writing log 2 - log1p(b/a) as log1p((a - b)/(a + b)) keeps it exact
// where the two terms nearly cancel (kappa -> 0, where a = b).
VISSIAM_HD double log2_plus_digamma_difference(double a, double b) {
  double shifted = 0.0;
  while (a < kAsymptoticMinArgument) {
    shifted -= b / (a * (a + b));  // psi(a) = psi(a + 1) - 1/a
    a += 1.0;
  }
  return shifted + ::log1p((a - b) / (a + b)) - b / (2.0 * a * (a + b)) -
         (detail::digamma_series(a) - detail::digamma_series(a + b));
}

// psi(a) - psi(a + b) for a > 0, b >= 0.
VISSIAM_HD double digamma_difference(double a, double b) {
  if (b == 0.0) return 0.0;
  double shifted = 0.0;
  while (a < kAsymptoticMinArgument) {
    shifted -= b / (a * (a + b));
    a += 1.0;
  }
  return shifted - ::log1p(b / a) - b / (2.0 * a * (a + b)) -
         (detail::digamma_series(a) - detail::digamma_series(a + b));
}

// psi'(a) - psi'(a + b) for a > 0, b >= 0  (psi'(x) = psi'(x + 1) + 1/x^2).
VISSIAM_HD double trigamma_difference(double a, double b) {
  if (b == 0.0) return 0.0;
  double shifted = 0.0;
  while (a < kAsymptoticMinArgument) {
    shifted += 1.0 / (a * a) - 1.0 / ((a + b) * (a + b));
    a += 1.0;
  }
  const double c = a + b;
  return shifted + b / (a * c) + b * (2.0 * a + b) / (2.0 * a * a * c * c) +
         (detail::trigamma_series(a) - detail::trigamma_series(c));
}

namespace detail {

// u(p, nu) = sum_{k=1..5} U_k(p) / nu^k, the correction series of Olver's
// uniform expansion (DLMF 10.41.3, polynomials U_k from DLMF 10.41.10):
//   I_nu(nu z) ~ exp(nu eta) / sqrt(2 pi nu) / (1 + z^2)^(1/4) * (1 + u(p, nu)),
//   p = 1/sqrt(1 + z^2),  eta = sqrt(1 + z^2) + log(z / (1 + sqrt(1 + z^2))).
VISSIAM_HD double olver_correction(double p, double nu) {
  const double p2 = p * p;
  const double u1 = p * (3.0 - 5.0 * p2) / 24.0;
  const double u2 = p2 * (81.0 + p2 * (-462.0 + p2 * 385.0)) / 1152.0;
  const double u3 = p * p2 * (30375.0 + p2 * (-369603.0 + p2 * (765765.0 +
                    p2 * (-425425.0)))) / 414720.0;
  const double u4 = p2 * p2 * (4465125.0 + p2 * (-94121676.0 + p2 * (349922430.0 +
                    p2 * (-446185740.0 + p2 * 185910725.0)))) / 39813120.0;
  const double u5 = p * p2 * p2 * (1519035525.0 + p2 * (-49286948607.0 +
                    p2 * (284499769554.0 + p2 * (-614135872350.0 +
                    p2 * (566098157625.0 + p2 * (-188699385875.0)))))) / 6688604160.0;
  const double r = 1.0 / nu;
  return r * (u1 + r * (u2 + r * (u3 + r * (u4 + r * u5))));
}

// log I_nu(x) - nu log x for nu >= kOlverMinOrder. With S = sqrt(nu^2 + x^2),
//   log I_nu(x) = S + nu log x - nu log(nu + S) - log(2 pi)/2 - log(S)/2 + log1p(u),
// finite and smooth down to x = 0.
VISSIAM_HD double olver_log_bessel_i_scaled(double nu, double x) {
  const double s = ::hypot(nu, x);
  return s - nu * ::log(nu + s) - 0.5 * kLog2Pi - 0.5 * ::log(s) +
         ::log1p(olver_correction(nu / s, nu));
}

// I_{nu+1}(x) / I_nu(x) for nu >= kOlverMinOrder, as the difference of two Olver
// expansions written so that no two large terms cancel (S0, S1 = S at nu, nu+1):
//   S1 - S0 = (2 nu + 1)/(S1 + S0)
//   log R = log(x/(nu+1+S1)) + rest,
//   rest  = (S1 - S0) - nu log1p((1 + S1 - S0)/(nu + S0)) - log1p((S1 - S0)/S0)/2
//           + log1p(u1) - log1p(u0).
VISSIAM_HD double olver_log_ratio_rest(double nu, double x, double s0, double s1) {
  const double ds = (2.0 * nu + 1.0) / (s1 + s0);
  return ds - nu * ::log1p((1.0 + ds) / (nu + s0)) - 0.5 * ::log1p(ds / s0) +
         ::log1p(olver_correction((nu + 1.0) / s1, nu + 1.0)) -
         ::log1p(olver_correction(nu / s0, nu));
}

// The factor x/(nu+1+S1) is kept outside the exponential so that x = 0 gives 0.
VISSIAM_HD double olver_bessel_ratio(double nu, double x) {
  const double s0 = ::hypot(nu, x);
  const double s1 = ::hypot(nu + 1.0, x);
  return x / (nu + 1.0 + s1) * ::exp(olver_log_ratio_rest(nu, x, s0, s1));
}

// 1 - R for nu >= kOlverMinOrder, to full relative precision where R -> 1
// (x >> nu): log(x/(nu+1+S1)) = -log1p((nu+1 + (nu+1)^2/(S1+x))/x), then -expm1.
VISSIAM_HD double olver_bessel_ratio_complement(double nu, double x) {
  if (x == 0.0) return 1.0;
  const double s0 = ::hypot(nu, x);
  const double s1 = ::hypot(nu + 1.0, x);
  const double lead = -::log1p((nu + 1.0 + (nu + 1.0) * (nu + 1.0) / (s1 + x)) / x);
  return -::expm1(lead + olver_log_ratio_rest(nu, x, s0, s1));
}

// d = 3 (nu = 1/2) in closed form: I_{1/2}(x) = sqrt(2 / (pi x)) sinh x, so
//   log I_{1/2}(x) - log(x)/2 = log(2/pi)/2 + log(sinh(x) / x),
//   I_{3/2}(x) / I_{1/2}(x) = coth x - 1/x   (the Langevin function),
// a few operations where the recurrence from order 30.5 takes 30 steps.
constexpr double kHalfLogTwoOverPi = -0.2257913526447274323631;  // log(2/pi)/2

// log(sinh(x) / x) for x >= 0: x + log((1 - e^{-2x}) / (2x)), the quotient kept whole below 1
// (where the result is O(x^2) and two O(1) logs would leave an absolute 1e-16 of it).
VISSIAM_HD double log_sinh_over_x(double x) {
  if (x == 0.0) return 0.0;
  if (x < 1.0) return x + ::log(-::expm1(-2.0 * x) / (2.0 * x));
  return x + ::log(-::expm1(-2.0 * x)) - kLog2 - ::log(x);
}

// coth x - 1/x for x >= 0. Below 1/2 the two terms cancel to x/3: there the Taylor series,
// sum_n 2^(2n) B_2n x^(2n-1) / (2n)!, whose 10 terms leave < 1e-16 relative at x = 1/2.
VISSIAM_HD double langevin(double x) {
  if (x < 0.5) {
    const double x2 = x * x;
    return x * (1.0 / 3 + x2 * (-0.022222222222222223 + x2 * (0.0021164021164021165 +
           x2 * (-0.00021164021164021165 + x2 * (2.1377799155576935e-05 +
           x2 * (-2.1644042808063972e-06 + x2 * (2.1925947851873778e-07 +
           x2 * (-2.2214608789979678e-08 + x2 * (2.2507846516808994e-09 +
           x2 * (-2.2805151204592183e-10))))))))));
  }
  return (1.0 + ::exp(-2.0 * x)) / -::expm1(-2.0 * x) - 1.0 / x;
}

// Number of unit steps from nu up to the Olver range.
VISSIAM_HD int olver_shift(double nu) {
  return nu >= kOlverMinOrder ? 0 : static_cast<int>(::ceil(kOlverMinOrder - nu));
}

}  // namespace detail

// I_{nu+1}(x) / I_nu(x) for nu >= 0, x >= 0 (nu = 1/2: closed form). Below the Olver range the ratio
// R_k = x / (2(k+1) + x R_{k+1}) is run downward, which damps errors
// (dR_k = -R_k^2 dR_{k+1}).
VISSIAM_HD double bessel_ratio(double nu, double x) {
  if (nu == 0.5) return detail::langevin(x);
  const int n = detail::olver_shift(nu);
  double ratio = detail::olver_bessel_ratio(nu + n, x);
  for (int j = n - 1; j >= 0; --j) {
    ratio = x / (2.0 * (nu + j + 1.0) + x * ratio);
  }
  return ratio;
}

// 1 - I_{nu+1}(x)/I_nu(x) for nu >= 0, x >= 0, accurate to full relative
// precision also where the ratio is close to 1, which the vMF second derivative
// needs. The recurrence is run on q_k = 1 - R_k directly:
//   q_k = (2(k+1) - x q_{k+1}) / (2(k+1) + x (1 - q_{k+1})),
// whose numerator does not cancel (x q_{k+1} -> k + 3/2 as x -> inf).
VISSIAM_HD double bessel_ratio_complement(double nu, double x) {
  const int n = detail::olver_shift(nu);
  double complement = detail::olver_bessel_ratio_complement(nu + n, x);
  for (int j = n - 1; j >= 0; --j) {
    const double two_k1 = 2.0 * (nu + j + 1.0);
    complement = (two_k1 - x * complement) / (two_k1 + x * (1.0 - complement));
  }
  return complement;
}

// log I_nu(x) - nu log x and R_nu = I_{nu+1}(x) / I_nu(x) together: the vMF NLL and its
// kappa-derivative need both, and below the Olver range they share one recurrence.
struct LogBesselAndRatio {
  double log_scaled;  // log I_nu(x) - nu log x
  double ratio;       // I_{nu+1}(x) / I_nu(x)
};

// For nu >= 0, x >= 0 (at x = 0: log_scaled = -nu log 2 - lgamma(nu+1), ratio = 0); nu = 1/2
// (d = 3) in closed form.
// Below the Olver range, with n steps to order nu + n,
//   log I_nu = log I_{nu+n} - sum_j log R_{nu+j},  and  x / R_k = 2(k+1) + x R_{k+1},
// so  L(nu) = L(nu + n) + sum_j log(2(nu+j+1) + x R_{nu+j+1})  with no log x at all.
// One log instead of n (d = 3 takes 30 steps: the logs were most of a vMF row's time): with
// D_j the denominators, sum_j log D_j = n log1p(x) + log prod_j D_j / (1 + x), and every factor
// D_j / (1 + x) lies in [1/10, 2(nu + n)] (D_j >= 2(k+1), D_j >= x R_k >= x^2 / (2k + 2 + x)),
// so the product of n <= 30 factors stays in [1e-30, 1e54] for every x: no overflow, no branch.
// Its rounding, ~3n ulp, costs ~1e-14 in L. The ratio keeps its division per step: carried as
// p / q without divisions it gathers ~n ulp, which kappa * A_d(kappa) in the vMF entropy at
// kappa = 1e7 amplifies to 2e-9 (the division form damps each step's error).
VISSIAM_HD LogBesselAndRatio log_bessel_i_scaled_and_ratio(double nu, double x) {
  if (nu == 0.5) return {detail::kHalfLogTwoOverPi + detail::log_sinh_over_x(x), detail::langevin(x)};
  const int n = detail::olver_shift(nu);
  const double top = nu + n;
  const double log_scaled_top = detail::olver_log_bessel_i_scaled(top, x);
  double ratio = detail::olver_bessel_ratio(top, x);
  if (n == 0) return {log_scaled_top, ratio};
  const double scale = 1.0 / (1.0 + x);
  double product = 1.0;
  for (int j = n - 1; j >= 0; --j) {
    const double denominator = 2.0 * (nu + j + 1.0) + x * ratio;
    product *= denominator * scale;
    ratio = x / denominator;
  }
  return {log_scaled_top + n * ::log1p(x) + ::log(product), ratio};
}

// log I_nu(x) - nu log x for nu >= 0, x >= 0 (at x = 0: -nu log 2 - lgamma(nu+1)).
VISSIAM_HD double log_bessel_i_scaled(double nu, double x) {
  // In the Olver range the ratio is not needed (the vMF log-normalizer alone, e.g. for the KL term)
  if (nu >= kOlverMinOrder) return detail::olver_log_bessel_i_scaled(nu, x);
  return log_bessel_i_scaled_and_ratio(nu, x).log_scaled;
}

// log I_nu(x) for nu >= 0, x >= 0 (-inf at x = 0 for nu > 0).
VISSIAM_HD double log_bessel_i(double nu, double x) {
  if (x == 0.0) return nu == 0.0 ? 0.0 : -INFINITY;
  return log_bessel_i_scaled(nu, x) + nu * ::log(x);
}

}  // namespace vissiam
