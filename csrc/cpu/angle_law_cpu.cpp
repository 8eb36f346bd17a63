// The CPU op of the exact kappa-derivative of sampled angles (schema in csrc/ops.cpp; the per-row
// quadrature is csrc/include/vissiam/angle_law.h, tested against the float64 reference
// vissiam_kernels/distributions/_angle_law.py). Rows run in parallel; each row is computed by the
// same operations whatever the thread count, so results are bitwise deterministic.
//
// Where the CPU has AVX2 and FMA, a panel's eight nodes are evaluated four at a time with SLEEF's
// 1-ulp double-precision vector functions (Sleef_*d4_u10avx2, exported by libtorch_cpu, which the
// ATen vector code uses): the integrand is log1p and exp per node and two sincos per panel, and scalar libm calls
// made the row cost ~15 us. The symbols are declared weak: a torch build without them gets the
// scalar path, which vectorized=false also takes (tests/test_angle_law_kernel.py checks both).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include "vissiam/angle_law.h"
#include "vissiam/op_checks.h"
#include "vissiam/op_codes.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
extern "C" {
struct Sleef___m256d_2 {  // SLEEF's pair of vectors (sleef.h)
  __m256d x, y;
};
Sleef___m256d_2 Sleef_sincosd4_u10avx2(__m256d) __attribute__((weak));
}

namespace vissiam {
namespace angle_avx2 {

typedef double double4 __attribute__((vector_size(32)));

typedef long long long4 __attribute__((vector_size(32)));
typedef unsigned long long ulong4 __attribute__((vector_size(32)));  // left shifts (of negatives too)

// Integer <-> double of small integers (|i| < 2^51) through the bits of 1.5 2^52 + i: AVX2 has no
// 64-bit integer conversions (a __builtin_convertvector becomes four scalar ones).
constexpr double kIntegerMagic = 6755399441055744.0;  // 1.5 2^52
constexpr long long kIntegerMagicBits = 0x4338000000000000LL;
inline long4 integral_to_long(double4 integral) { return (long4)(integral + kIntegerMagic) - kIntegerMagicBits; }
inline double4 long_to_double(long4 i) { return (double4)(i + kIntegerMagicBits) - kIntegerMagic; }

// c[0] x^(N-1) + c[1] x^(N-2) + ... + c[N-1], by Horner's rule.
template <int N>
inline double4 polynomial(double4 x, const double (&c)[N]) {
  double4 p = x * c[0] + c[1];
  for (int k = 2; k < N; ++k) p = p * x + c[k];
  return p;
}

// 1/k!, k = 13 ... 0: e^r's Taylor polynomial.
constexpr double kExpTaylor[14] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                   1.0 / 362880.0,     1.0 / 40320.0,     1.0 / 5040.0,       1.0 / 720.0,
                                   1.0 / 120.0,        1.0 / 24.0,        1.0 / 6.0,          0.5,
                                   1.0,                1.0};
// 1/(2k+1), k = 10 ... 1: atanh(s)/s - 1 = s^2 (1/3 + s^2/5 + ...).
constexpr double kAtanhSeries[10] = {1.0 / 21.0, 1.0 / 19.0, 1.0 / 17.0, 1.0 / 15.0, 1.0 / 13.0,
                                     1.0 / 11.0, 1.0 / 9.0,  1.0 / 7.0,  1.0 / 5.0,  1.0 / 3.0};

// exp(x) for x <= ~710: x = n log 2 + r, |r| <= log(2)/2 (log 2 in two parts, Cody-Waite), e^r by its
// Taylor polynomial of degree 13 (truncation < 4e-18 relative), times 2^n through the exponent
// bits; 0 below -708 (terms that small are far below the kept sum: they are scaled by the side's
// peak). About 2 ulp; NaN stays NaN.
inline double4 exp_lanes(double4 x) {
  const double4 n = (double4)_mm256_round_pd((__m256d)(x * 1.4426950408889634), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const double4 r = (x - n * 0.6931471803691238) - n * 1.9082149292705877e-10;
  const double4 p = polynomial(r, kExpTaylor);
  const ulong4 scale = (ulong4)(integral_to_long(n) + 1023) << 52;  // 2^n, n in [-1022, 1023]
  const double4 result = p * (double4)scale;
  return (x < -708.0) ? double4{} : result;
}

// log1p(x) for x >= -1: u = 1 + x rounded, log1p(x) = log(u) + (x - (u - 1)) / u (the rounding of u
// put back); log u = e log 2 + log m, u = m 2^e with m in [sqrt(1/2), sqrt(2)), and
// log m = 2 atanh(s) = 2 (s + s^3/3 + ... + s^21/21), s = (m - 1)/(m + 1), |s| <= 0.172 (truncation
// < 1e-18). -inf at x = -1. About 2 ulp.
inline double4 log1p_lanes(double4 x) {
  const double4 u = x + 1.0;
  const double4 correction = (x - (u - 1.0)) / u;
  const long4 bits = (long4)u;
  // exponent of u relative to sqrt(1/2): m = u 2^-e in [sqrt(1/2), sqrt(2))
  const long4 shifted = bits - (long4){0x3FE6A09E667F3BCDLL, 0x3FE6A09E667F3BCDLL, 0x3FE6A09E667F3BCDLL, 0x3FE6A09E667F3BCDLL};
  const long4 e = shifted >> 52;  // arithmetic shift: floor(log2(u / sqrt(1/2)))
  const double4 m = (double4)((ulong4)bits - ((ulong4)e << 52));
  const double4 s = (m - 1.0) / (m + 1.0), s2 = s * s;
  const double4 p = polynomial(s2, kAtanhSeries);
  const double4 log_m = 2.0 * s + 2.0 * s * s2 * p;
  const double4 ef = long_to_double(e);
  const double4 result = ef * 0.6931471803691238 + (log_m + correction + ef * 1.9082149292705877e-10);
  const double4 minus_inf = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
  return (u == 0.0) ? minus_inf : ((x != x) ? x : result);
}

struct Avx2Math {
  using V = double4;
  static constexpr int kLanes = 4;
  static void sincos(V x, V* sin_x, V* cos_x) {
    const Sleef___m256d_2 both = Sleef_sincosd4_u10avx2((__m256d)x);
    *sin_x = (V)both.x;
    *cos_x = (V)both.y;
  }
  static void sincos_pair(double a, double b, double* out) {  // out = sin a, cos a, sin b, cos b
    const Sleef___m256d_2 both = Sleef_sincosd4_u10avx2(_mm256_setr_pd(a, b, 0.0, 0.0));
    double sines[4], cosines[4];
    _mm256_storeu_pd(sines, both.x);
    _mm256_storeu_pd(cosines, both.y);
    out[0] = sines[0];
    out[1] = cosines[0];
    out[2] = sines[1];
    out[3] = cosines[1];
  }
  static V log1p(V x) { return log1p_lanes(x); }
  static V exp(V x) { return exp_lanes(x); }
  static V max(V x, double floor) { return (V)_mm256_max_pd((__m256d)x, _mm256_set1_pd(floor)); }
  static V abs(V x) { return (V)_mm256_andnot_pd(_mm256_set1_pd(-0.0), (__m256d)x); }
};

// flatten: the header's templates are inlined here and compiled for this target (called, they would be
// compiled without AVX and pass vectors through memory).
__attribute__((flatten)) void kappa_derivatives(const double* theta, const double* kappa, double* out, int64_t begin,
                                                int64_t end, int64_t dim,
                       bool vmf) {
  for (int64_t i = begin; i < end; ++i) out[i] = angle_law::kappa_derivative<Avx2Math>(theta[i], kappa[i], dim, vmf);
}

}  // namespace angle_avx2
}  // namespace vissiam
#pragma GCC pop_options

namespace vissiam {

// Whether the AVX2 path runs: the CPU has AVX2 and FMA, and libtorch exports SLEEF's functions.
bool angle_law_uses_avx2() {
  static const bool use = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          Sleef_sincosd4_u10avx2 != nullptr;
  return use;
}

namespace {

// Rows per parallel task: a row costs ~200 integrand evaluations (a few microseconds).
constexpr int64_t kAngleRowsPerTask = 16;

at::Tensor angle_kappa_derivative_cpu(const at::Tensor& theta, const at::Tensor& kappa, int64_t dim, int64_t family,
                                      bool vectorized) {
  VISSIAM_CHECK_ARG(family == kVonMisesFisher || family == kPowerSpherical,
                    "family must be ", static_cast<int>(kVonMisesFisher), " (vMF) or ",
                    static_cast<int>(kPowerSpherical), " (power spherical); got ", family);
  VISSIAM_CHECK_ARG(dim >= 2, "dim must be an integer >= 2; got ", dim);
  VISSIAM_CHECK_ARG(theta.dim() == 1 && theta.sizes() == kappa.sizes(),
                    "theta and kappa must be 1-D tensors of one length; got shapes ", theta.sizes(), " and ",
                    kappa.sizes());
  TORCH_CHECK_TYPE(theta.scalar_type() == at::kDouble && kappa.scalar_type() == at::kDouble,
                   "theta and kappa must be float64 tensors; got ", theta.scalar_type(), " and ", kappa.scalar_type());
  const at::Tensor theta_c = theta.contiguous(), kappa_c = kappa.contiguous();
  at::Tensor out = at::empty_like(theta_c);
  const double *theta_ptr = theta_c.data_ptr<double>(), *kappa_ptr = kappa_c.data_ptr<double>();
  double* out_ptr = out.data_ptr<double>();
  const bool vmf = family == kVonMisesFisher;
  const bool avx2 = vectorized && angle_law_uses_avx2();
  at::parallel_for(0, theta_c.numel(), kAngleRowsPerTask, [&](int64_t begin, int64_t end) {
    if (avx2) return angle_avx2::kappa_derivatives(theta_ptr, kappa_ptr, out_ptr, begin, end, dim, vmf);
    for (int64_t i = begin; i < end; ++i) out_ptr[i] = angle_law::kappa_derivative(theta_ptr[i], kappa_ptr[i], dim, vmf);
  });
  return out;
}

}  // namespace
}  // namespace vissiam

TORCH_LIBRARY_IMPL(vissiam_kernels, CPU, m) { m.impl("angle_kappa_derivative", &vissiam::angle_kappa_derivative_cpu); }
