// The per-row scalar math of vissiam/spherical_math.h (row_loss) for eight rows at once, in
// lanes of double (GCC/Clang vector extensions; host C++ only).
//
// row_loss_lanes(family, cos, kappa, dim, n, out) gives out[i] = row_loss(family, cos[i],
// kappa[i], dim) for i < n <= 8, by the same formulas, term for term and in the same order, with
// the elementary functions of vissiam/vector_math.h (fdlibm's, < 1 ulp) in place of libm's.
// Results agree with row_loss to a few ulps of the terms they are sums of (worst seen: 2.3e-14
// of that size, vMF d = 2 at small kappa, where ~100-sized terms cancel inside log I_nu; ~75% of
// the values are bitwise equal; tests/row_math_lanes_check.cpp). What does not depend on the row
// is done once: dim is common to the lanes, so the number of recurrence steps below Olver's range
// and the d = 3 closed form are uniform; the power spherical shift of a = beta + kappa up to 10
// is a masked per-lane loop.
//
// Instruction set: row_loss_lanes picks, once per process, the widest of AVX-512 (one vector of
// 8 lanes), AVX2 + FMA (two vectors of 4) and the baseline (SSE2 on x86-64, NEON elsewhere: four
// passes over 2 lanes) that the CPU has, whatever the caller is compiled for: it may be called
// from a target_clones function or from plain code. row_loss_lanes_w2 / _w4 / _w8 run one of
// them directly (_w4 and _w8 only on x86-64, and only where the CPU has the instructions).
// With FMA (w4, w8) products and sums are contracted, as the compiler does in the scalar code of
// an AVX2 target_clones clone.
//
// Code size: each elementary function appears once per path (calls of one kind are gathered in
// a loop over an array of vectors): ~10 KB (w2), 16 KB (w4), 23 KB (w8) with GCC 12 -O2.
#pragma once

#include "vissiam/spherical_math.h"
#include "vissiam/vector_math.h"

namespace vissiam {

constexpr int kRowLanes = 8;

namespace lanes {
namespace detail {

// v[i] = f(v[i]) for i < count, with one copy of f's (inlined) code. The arguments of the row
// math are regular (log: positive normal finite; log1p: finite, > -1) in the lanes whose
// results are used, so the special-case selections are left out.
template <int W, int N> VISSIAM_LANES_INLINE void log_each(vec<W> (&v)[N], int count) {
#pragma GCC unroll 1
  for (int i = 0; i < count; ++i) v[i] = log_normal(v[i]);
}
template <int W, int N> VISSIAM_LANES_INLINE void log1p_each(vec<W> (&v)[N], int count) {
#pragma GCC unroll 1
  for (int i = 0; i < count; ++i) v[i] = log1p_finite(v[i]);
}

// vissiam::detail::stirling_remainder, lane-wise.
template <int W> VISSIAM_LANES_INLINE vec<W> stirling_remainder(vec<W> x) {
  const vec<W> r = 1.0 / x;
  const vec<W> r2 = r * r;
  return r * (1.0 / 12 + r2 * (-1.0 / 360 + r2 * (1.0 / 1260 + r2 * (-1.0 / 1680 +
         r2 * (1.0 / 1188 + r2 * (-691.0 / 360360 + r2 * (1.0 / 156 +
         r2 * (-3617.0 / 122400))))))));
}

// vissiam::detail::digamma_series, lane-wise.
template <int W> VISSIAM_LANES_INLINE vec<W> digamma_series(vec<W> x) {
  const vec<W> r2 = 1.0 / (x * x);
  return r2 * (1.0 / 12 + r2 * (-1.0 / 120 + r2 * (1.0 / 252 + r2 * (-1.0 / 240 +
         r2 * (1.0 / 132 + r2 * (-691.0 / 32760 + r2 * (1.0 / 12)))))));
}

// vissiam::detail::olver_correction, lane-wise p, common nu.
template <int W> VISSIAM_LANES_INLINE vec<W> olver_correction(vec<W> p, double nu) {
  const vec<W> p2 = p * p;
  const vec<W> u1 = p * (3.0 - 5.0 * p2) / 24.0;
  const vec<W> u2 = p2 * (81.0 + p2 * (-462.0 + p2 * 385.0)) / 1152.0;
  const vec<W> u3 = p * p2 * (30375.0 + p2 * (-369603.0 + p2 * (765765.0 +
                    p2 * (-425425.0)))) / 414720.0;
  const vec<W> u4 = p2 * p2 * (4465125.0 + p2 * (-94121676.0 + p2 * (349922430.0 +
                    p2 * (-446185740.0 + p2 * 185910725.0)))) / 39813120.0;
  const vec<W> u5 = p * p2 * p2 * (1519035525.0 + p2 * (-49286948607.0 +
                    p2 * (284499769554.0 + p2 * (-614135872350.0 +
                    p2 * (566098157625.0 + p2 * (-188699385875.0)))))) / 6688604160.0;
  const double r = 1.0 / nu;
  return r * (u1 + r * (u2 + r * (u3 + r * (u4 + r * u5))));
}

template <int W> struct RowLossLanes {
  vec<W> nll, dnll_dcos, dnll_dkappa;
};

// Power spherical rows (row_loss, kPowerSpherical), beta = (d-1)/2 common:
//   nll = (alpha + beta) log 2 + beta log pi + lgamma_difference(alpha, beta) - kappa log(1 + c)
//   dnll/dkappa = log2_plus_digamma_difference(alpha, beta) - log(1 + c)
// The two differences share their shift of a = alpha up to 10 (the same steps for both).
template <int W> VISSIAM_LANES_INLINE RowLossLanes<W> power_spherical_rows(vec<W> c, vec<W> kappa,
                                                                           double dim) {
  const double b = 0.5 * (dim - 1.0);  // beta
  const vec<W> one_plus_cos = 1.0 + c;
  const mask<W> floored = ~(one_plus_cos > kPowerSphericalOnePlusCosFloor);
  const vec<W> alpha = b + kappa;
  // Shift steps (at most 10 for a > 0; none for b >= 10, d >= 21): log1p(b / a_j) for the lanes
  // still below 10, else log1p(0) = 0, which leaves the (non-negative) sum as it is; evaluated
  // below together with the other log1p's.
  constexpr int kMaxSteps = 11;
  vec<W> arg1p[kMaxSteps + 2];
  vec<W> a = alpha;
  vec<W> shifted_digamma = splat<W>(0.0);
  int steps = 0;
  if (b < kAsymptoticMinArgument) {
    while (steps < kMaxSteps) {
      const mask<W> on = a < kAsymptoticMinArgument;
      if (!any(on)) break;
      arg1p[steps] = select(on, b / a, 0.0);
      shifted_digamma = select(on, shifted_digamma - b / (a * (a + b)), shifted_digamma);
      a = select(on, a + 1.0, a);
      ++steps;
    }
  }
  const vec<W> apb = a + b;
  arg1p[steps] = b / a;
  arg1p[steps + 1] = (a - b) / apb;
  log1p_each(arg1p, steps + 2);
  vec<W> logs[2] = {select(floored, kPowerSphericalOnePlusCosFloor, one_plus_cos), apb};
  log_each(logs, 2);
  const vec<W> log1p_cos = logs[0];
  vec<W> shifted_lgamma = splat<W>(0.0);
  for (int j = 0; j < steps; ++j) shifted_lgamma = shifted_lgamma + arg1p[j];
  // lgamma_difference(alpha, b) (0 for b = 0, d = 1)
  const vec<W> lgamma_difference =
      b == 0.0 ? splat<W>(0.0)
               : shifted_lgamma - (a - 0.5) * arg1p[steps] - b * logs[1] + b +
                     stirling_remainder(a) - stirling_remainder(apb);
  // log2_plus_digamma_difference(alpha, b)
  const vec<W> log2_plus_digamma_difference = shifted_digamma + arg1p[steps + 1] -
                                              b / (2.0 * a * apb) -
                                              (digamma_series(a) - digamma_series(apb));
  RowLossLanes<W> out;
  // -power_spherical_log_normalizer - kappa log1p_cos
  out.nll = (alpha + b) * kLog2 + b * kLogPi + lgamma_difference - kappa * log1p_cos;
  out.dnll_dcos = select(floored, 0.0, -kappa / one_plus_cos);
  out.dnll_dkappa = log2_plus_digamma_difference - log1p_cos;
  return out;
}

// vissiam::log_bessel_i_scaled_and_ratio(nu, x) for a common nu >= 0, nu != 1/2, as
//   log I_nu(x) - nu log x  -> log_scaled,   I_{nu+1}(x) / I_nu(x) -> ratio.
// olver_log_bessel_i_scaled and olver_bessel_ratio at the top order share hypot(top, x) and
// log1p(u(top / S0, top)), which the scalar code computes twice (to the same values).
template <int W> VISSIAM_LANES_INLINE void log_bessel_i_scaled_and_ratio(double nu, vec<W> x,
                                                                         vec<W>& log_scaled,
                                                                         vec<W>& ratio) {
  const int n = vissiam::detail::olver_shift(nu);
  const double top = nu + n;
  const vec<W> s0 = hypot_order(top, x);
  const vec<W> s1 = hypot_order(top + 1.0, x);
  const vec<W> ds = (2.0 * top + 1.0) / (s1 + s0);  // olver_log_ratio_rest
  vec<W> l1p[5] = {olver_correction(top / s0, top), (1.0 + ds) / (top + s0), ds / s0,
                   olver_correction((top + 1.0) / s1, top + 1.0), x};
  log1p_each(l1p, n == 0 ? 4 : 5);
  const vec<W> rest = ds - top * l1p[1] - 0.5 * l1p[2] + l1p[3] - l1p[0];
  ratio = x / (top + 1.0 + s1) * exp(rest);  // olver_bessel_ratio(top, x)
  vec<W> product = splat<W>(1.0);
  if (n > 0) {
    const vec<W> scale = 1.0 / (1.0 + x);
    for (int j = n - 1; j >= 0; --j) {
      const vec<W> denominator = 2.0 * (nu + j + 1.0) + x * ratio;
      product *= denominator * scale;
      ratio = x / denominator;
    }
  }
  vec<W> logs[3] = {top + s0, s0, product};
  log_each(logs, n == 0 ? 2 : 3);
  // olver_log_bessel_i_scaled(top, x)
  const vec<W> log_scaled_top = s0 - top * logs[0] - 0.5 * kLog2Pi - 0.5 * logs[1] + l1p[0];
  log_scaled = n == 0 ? log_scaled_top : log_scaled_top + n * l1p[4] + logs[2];
}

// log I_nu(x) - nu log x alone, for nu in Olver's range (olver_shift(nu) == 0): the terms of
// log_bessel_i_scaled_and_ratio that the value needs, by the same operations (bitwise the same
// value), without the ratio's second order, correction and exp.
template <int W> VISSIAM_LANES_INLINE vec<W> olver_log_bessel_i_scaled(double nu, vec<W> x) {
  const vec<W> s0 = hypot_order(nu, x);
  vec<W> l1p[1] = {olver_correction(nu / s0, nu)};
  log1p_each(l1p, 1);
  vec<W> logs[2] = {nu + s0, s0};
  log_each(logs, 2);
  return s0 - nu * logs[0] - 0.5 * kLog2Pi - 0.5 * logs[1] + l1p[0];
}

// d = 3 (nu = 1/2): kHalfLogTwoOverPi + log_sinh_over_x(x) and langevin(x), sharing expm1(-2x).
template <int W> VISSIAM_LANES_INLINE void log_bessel_i_scaled_and_ratio_half(vec<W> x,
                                                                              vec<W>& log_scaled,
                                                                              vec<W>& ratio) {
  const vec<W> em1 = expm1(-2.0 * x);  // e^{-2x} - 1
  // log_sinh_over_x: x < 1: x + log(-em1 / (2x));  else x + log(-em1) - log 2 - log x;  0 at 0.
  const mask<W> small = x < 1.0;
  vec<W> logs[2] = {select(small, -em1 / (2.0 * x), -em1), x};
  const bool all_small = all(small);
  log_each(logs, all_small ? 1 : 2);
  vec<W> log_sinh_over_x = x + logs[0];
  if (!all_small) log_sinh_over_x = select(small, log_sinh_over_x, log_sinh_over_x - kLog2 - logs[1]);
  log_sinh_over_x = select(x == 0.0, 0.0, log_sinh_over_x);
  log_scaled = vissiam::detail::kHalfLogTwoOverPi + log_sinh_over_x;
  // langevin: below 1/2 the Taylor series, else (1 + e^{-2x}) / -expm1(-2x) - 1/x, with
  // e^{-2x} = 1 + em1 (exact for x >= 1/2, where em1 lies in [-1, -0.63]).
  const vec<W> x2 = x * x;
  const vec<W> series =
      x * (1.0 / 3 + x2 * (-0.022222222222222223 + x2 * (0.0021164021164021165 +
      x2 * (-0.00021164021164021165 + x2 * (2.1377799155576935e-05 +
      x2 * (-2.1644042808063972e-06 + x2 * (2.1925947851873778e-07 +
      x2 * (-2.2214608789979678e-08 + x2 * (2.2507846516808994e-09 +
      x2 * (-2.2805151204592183e-10))))))))));
  const vec<W> closed = (1.0 + (1.0 + em1)) / -em1 - 1.0 / x;
  ratio = select(x < 0.5, series, closed);
}

// row_loss for up to 8 rows, W doubles per hardware vector.
// Without `with_derivatives` only out[i].nll is meant to be read (dnll_dcos and dnll_dkappa may be
// left out: NaN); it saves the vMF Bessel ratio in Olver's range (d >= 62), half that row math.
template <int W> VISSIAM_LANES_INLINE void row_loss_block(int family, const double* cos,
                                                          const double* kappa, double dim, int n,
                                                          RowLoss* out, bool with_derivatives) {
  if (n <= 0) return;
  if (n > kRowLanes) n = kRowLanes;
  if (family == kCosine) {  // SimSiam's D(p, z): nothing to vectorize
    for (int i = 0; i < n; ++i) out[i] = RowLoss{-cos[i], -1.0, 0.0};
    return;
  }
  double c_in[kRowLanes], k_in[kRowLanes];
  for (int i = 0; i < kRowLanes; ++i) {  // padding lanes: cos = 0, kappa = 1
    c_in[i] = i < n ? cos[i] : 0.0;
    k_in[i] = i < n ? kappa[i] : 1.0;
  }
  constexpr int kGroup = vec<W>::kSize;  // 8, or 2 for W = 2 (then four passes, fewer at a tail)
#pragma GCC unroll 1
  for (int g = 0; g < n; g += kGroup) {
    const vec<W> c = load<W>(c_in + g);
    const vec<W> k = load<W>(k_in + g);
    RowLossLanes<W> r;
    if (family == kPowerSpherical) {
      r = power_spherical_rows(c, k, dim);
    } else {
      const double nu = 0.5 * dim - 1.0;
      vec<W> log_scaled, ratio;
      if (!with_derivatives && vissiam::detail::olver_shift(nu) == 0) {
        log_scaled = olver_log_bessel_i_scaled(nu, k);
        ratio = splat<W>(__builtin_nan(""));
      } else if (nu == 0.5) {
        log_bessel_i_scaled_and_ratio_half(k, log_scaled, ratio);
      } else {
        log_bessel_i_scaled_and_ratio(nu, k, log_scaled, ratio);
      }
      r.nll = (nu + 1.0) * kLog2Pi + log_scaled - k * c;
      r.dnll_dcos = -k;
      r.dnll_dkappa = ratio - c;
    }
    for (int i = 0; i < kGroup && g + i < n; ++i) {
      out[g + i].nll = r.nll[i];
      out[g + i].dnll_dcos = r.dnll_dcos[i];
      out[g + i].dnll_dkappa = r.dnll_dkappa[i];
    }
  }
}

}  // namespace detail
}  // namespace lanes

// For n in [1, 8] rows: out[i] = row_loss(family, cos[i], kappa[i], dim) for i < n. Lanes >= n
// are padding (cos = 0, kappa = 1), their results not written. kappa is not read for kCosine
// (it may be null there). with_derivatives = false: only out[i].nll is computed for sure (see
// row_loss_block).
inline void row_loss_lanes_w2(int family, const double* cos, const double* kappa, double dim,
                              int n, RowLoss* out, bool with_derivatives = true) {
  lanes::detail::row_loss_block<2>(family, cos, kappa, dim, n, out, with_derivatives);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define VISSIAM_ROW_LANES_X86 1
// AVX2 + FMA: two vectors of 4 lanes.
__attribute__((target("avx2,fma"))) inline void row_loss_lanes_w4(int family, const double* cos,
                                                                  const double* kappa, double dim,
                                                                  int n, RowLoss* out,
                                                                  bool with_derivatives = true) {
  lanes::detail::row_loss_block<4>(family, cos, kappa, dim, n, out, with_derivatives);
}
// AVX-512: one vector of 8 lanes.
__attribute__((target("avx512f,avx512dq,avx2,fma"))) inline void row_loss_lanes_w8(
    int family, const double* cos, const double* kappa, double dim, int n, RowLoss* out,
    bool with_derivatives = true) {
  lanes::detail::row_loss_block<8>(family, cos, kappa, dim, n, out, with_derivatives);
}
#endif

// Lanes per hardware vector that row_loss_lanes uses on this CPU: 8, 4 or 2.
inline int row_loss_lanes_width() {
#if defined(VISSIAM_ROW_LANES_X86)
  static const int width = [] {
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) return 8;
    return avx2 ? 4 : 2;
  }();
  return width;
#else
  return 2;
#endif
}

inline void row_loss_lanes(int family, const double* cos, const double* kappa, double dim, int n,
                           RowLoss* out, bool with_derivatives = true) {
#if defined(VISSIAM_ROW_LANES_X86)
  switch (row_loss_lanes_width()) {
    case 8:
      return row_loss_lanes_w8(family, cos, kappa, dim, n, out, with_derivatives);
    case 4:
      return row_loss_lanes_w4(family, cos, kappa, dim, n, out, with_derivatives);
    default:
      break;
  }
#endif
  row_loss_lanes_w2(family, cos, kappa, dim, n, out, with_derivatives);
}

}  // namespace vissiam
