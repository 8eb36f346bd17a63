// The CPU op of the exact kappa-derivative of sampled angles (schema in csrc/ops.cpp; the per-row
// quadrature is csrc/include/vissiam/angle_law.h, tested against the float64 reference
// vissiam_kernels/distributions/_angle_law.py). Rows run in parallel; each row is computed by the
// same operations whatever the thread count, so results are bitwise deterministic.
//
// Where the CPU has AVX2 and FMA, a panel's eight nodes are evaluated at once in eight lanes of
// double: log1p and exp per node by vissiam/vector_math.h (fdlibm's, < 1 ulp), the panel's two
// sincos by SLEEF's 1-ulp Sleef_sincosd4_u10avx2 (exported by libtorch_cpu, which ATen's vector
// code uses); scalar libm calls made a row cost ~15 us. The SLEEF symbol is declared weak: a torch
// build without it gets the scalar path, which vectorized=false also takes
// (tests/test_angle_law_kernel.py checks both).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include "vissiam/angle_law.h"
#include "vissiam/op_checks.h"
#include "vissiam/op_codes.h"
#include "vissiam/vector_math.h"

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
using Lanes = lanes::vec<4>;  // eight lanes of double as two AVX2 vectors (vissiam/vector_math.h)

// A panel's eight nodes in the eight lanes: lanes 0-3 the nodes -x_k, lanes 4-7 the nodes +x_k
// (x_k > 0 ascending, kGaussX[4..8)), so one SLEEF sincos of the four a x_k gives all of them (sin is
// odd, cos even); exp and log1p are fdlibm's lane functions (< 1 ulp).
struct Avx2Math {
  using V = Lanes;
  static constexpr int kChunks = 1;
  static constexpr int kPositive = angle_law::kGaussNodes / 2;
  static void panel_nodes(int, double a, V* sin_ax, V* cos_ax, V* weight) {
    const Sleef___m256d_2 both = Sleef_sincosd4_u10avx2(
        _mm256_mul_pd(_mm256_set1_pd(a), _mm256_loadu_pd(angle_law::kGaussX + kPositive)));
    const double4 sines = (double4)both.x, cosines = (double4)both.y;
    const double4 weights = (double4)_mm256_loadu_pd(angle_law::kGaussW + kPositive);
    sin_ax->p[0] = -sines;
    sin_ax->p[1] = sines;
    cos_ax->p[0] = cosines;
    cos_ax->p[1] = cosines;
    weight->p[0] = weights;
    weight->p[1] = weights;
  }
  static angle_law::NodePlace outer_node(bool lo_side) { return {0, lo_side ? kPositive - 1 : 2 * kPositive - 1}; }
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
  static V log1p(V x) { return lanes::log1p(x); }
  static V exp(V x) { return lanes::exp(x); }
  static V max(V x, double floor) { return lanes::select(x > floor, x, floor); }  // NaN -> floor
  static V abs(V x) { return lanes::select(x < 0.0, -x, x); }
  static V positive_or_zero(V w, V x) { return lanes::select(w > 0.0, x, 0.0); }
  static double lane(V v, int i) { return v[i]; }
  static double sum(V v) {
    const double4 both = v.p[0] + v.p[1];
    return (both[0] + both[1]) + (both[2] + both[3]);
  }
};

// flatten: the header's templates are inlined here and compiled for this target (called, they would be
// compiled without AVX and pass vectors through memory).
__attribute__((flatten)) void kappa_derivatives(const double* theta, const double* kappa, double* out, int64_t begin,
                                                int64_t end, int64_t dim, bool vmf) {
  for (int64_t i = begin; i < end; ++i) out[i] = angle_law::kappa_derivative<Avx2Math>(theta[i], kappa[i], dim, vmf);
}

}  // namespace angle_avx2
}  // namespace vissiam
#pragma GCC pop_options

namespace vissiam {

namespace {

// Whether the AVX2 path runs: the CPU has AVX2 and FMA, and libtorch exports SLEEF's sincos.
bool angle_law_uses_avx2() {
  static const bool use = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          Sleef_sincosd4_u10avx2 != nullptr;
  return use;
}

// Rows per parallel task: a row costs ~10 panels of 8 nodes (about 2 microseconds).
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
