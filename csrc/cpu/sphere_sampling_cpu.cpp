// Fused CPU kernels of the sampling transform (issue 13; schemas in csrc/ops.cpp, the reference is
// vissiam_kernels/sampling_reference.py):
//
//   x = H [t, s v],  v = z / |z|,  mu = l / r,  r = max(|l|, eps)
//
// with l = loc[i, :], z = noise[i, :], t, s the row's cosine and sine, H the Householder reflection
// taking e1 to mu. m = mu_tail = mu[1:], q = |m|^2, a = m.v,
//   u1 = q / (1 + mu1)  if mu1 > 0   (1 - mu1 without cancellation as mu -> e1)
//      = 1 - mu1        otherwise,
//   rho = a / u1 (0 where u1 = 0, i.e. mu = e1 exactly: H = I there), c = t - s rho,
//   x1 = mu1 t + s a,   x_tail = s v + c m = (s / |z|) z + (c / r) l_tail.
//
// Forward, per row: one pass over (l_tail, z) for |l_tail|^2, |z|^2, l_tail.z (row_dots of
// row_streams.h), the scalars above in double, then one pass writing x_tail = cz z + cl l_tail
// (row_combination) while the row is still in cache.
//
// Backward (derived by hand; tests/test_sampling_transform.py gradchecks it against the reference's
// autograd). With g = grad_x, g1 = g[0], G = g[1:], Gm = G.m, Gv = G.v, the output's pullback
// L = g.x = g1 (mu1 t + s a) + s Gv + Gm c gives
//   dL/dt = g1 mu1 + Gm
//   dL/ds = g1 a + Gv - Gm rho
//   dL/da  = s (g1 - Gm / u1)                        (u1 > 0; s g1 where u1 = 0)
//   dL/du1 = Gm s a / u1^2 = Gm s rho / u1  =: w     (u1 > 0; 0 where u1 = 0: rho is a constant 0 there)
// and, with u1's own partial derivatives (mu1 > 0: du1/dmu1 = -u1 / (1 + mu1), du1/dm = 2 m / (1 + mu1);
// mu1 <= 0: du1/dmu1 = -1, du1/dm = 0), the gradient to mu = (mu1, m):
//   gamma1     = g1 t + w du1/dmu1
//   gamma_tail = c G + (dL/da) v + w du1/dm
// Then through mu = l / max(|l|, eps): where |l| > eps,
//   dL/dl = (gamma - mu (mu.gamma)) / |l|,
//   mu.gamma = mu1 gamma1 + c Gm + (dL/da) a + w (m . du1/dm),
// and dL/dl = gamma / eps where |l| <= eps (the clamp passes no gradient to |l|; torch's clamp_min
// rule at equality). In the rows' own vectors:
//   grad_l1     = (gamma1 - mu1 P) / r
//   grad_l_tail = (c / r) G + (dL/da / (|z| r)) z + ((w 2 / (1 + mu1) [mu1 > 0]) - P) / r^2 l_tail,
// P = mu.gamma where |l| > eps, else 0. So the backward is two passes per row: five sums over
// (l_tail, z, G) (sphere_sampling_rows.inc), then one three-row combination. Every quantity is
// finite at mu = e1 exactly (u1 = 0: w = 0, dL/da = s g1) and at l = 0 (mu = 0, u1 = 1).
// Near mu = e1 the gradient to l grows like 1/|m|: the reflection's action on the tangent space
// turns with the direction of m (H is not continuous at e1), which is the function's own derivative.
//
// The noise gets no gradient (it is a draw; the schema's backward returns none for it). Rows run in
// parallel (at::parallel_for); each row is computed by the same operations whatever the thread
// count: results are bitwise deterministic.
//
// The seeded ops (sphere_sample_seeded and its backward) are the same kernels with the noise drawn
// inside: each row's (D - 1) normals are generated from Philox4x32-10 under seed = (key, offset)
// (philox_normal.inc) into a one-row buffer that stays in cache, then read by the same row code
// (the Noise template parameter: TensorNoise or PhiloxNoise). The backward draws the row again, so
// no (N, D - 1) noise is written, read from memory or kept for the backward. sphere_sample_noise
// returns that noise as a tensor: sphere_sample_seeded(loc, t, s, seed) equals
// sphere_sample_transform(loc, t, s, sphere_sample_noise(seed, N, D - 1, dtype)) bit for bit.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "gradient_buffer_pool.h"
#include "row_streams.h"
#include "vissiam/op_checks.h"
#include "vissiam/spherical_math.h"

namespace vissiam {

// The five sums of a backward row (see sphere_sampling_rows.inc).
struct SphereBackwardDots {
  double loc_loc;     // |l_tail|^2
  double noise_noise; // |z|^2
  double loc_noise;   // l_tail.z
  double grad_loc;    // G.l_tail
  double grad_noise;  // G.z
};

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
namespace streams_portable {
#include "sphere_sampling_rows.inc"
#include "philox_normal.inc"
}  // namespace streams_portable
#if defined(VISSIAM_ROW_STREAMS_X86)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace streams_avx2 {
#include "sphere_sampling_rows.inc"
#define VISSIAM_PHILOX_AVX2 1  // philox_normal.inc: vpmuludq and vsqrtps (the target pragma defines no __AVX2__)
#include "philox_normal.inc"
#undef VISSIAM_PHILOX_AVX2
}  // namespace streams_avx2
#pragma GCC pop_options
#endif
#pragma GCC diagnostic pop

namespace {

template <typename scalar_t>
SphereBackwardDots sphere_backward_dots(const scalar_t* l, const scalar_t* z, const scalar_t* g, int64_t n) {
#if defined(VISSIAM_ROW_STREAMS_X86)
  if (row_streams_use_avx2()) return streams_avx2::sphere_backward_dots(l, z, g, n);
#endif
  return streams_portable::sphere_backward_dots(l, z, g, n);
}

template <typename scalar_t>
void sphere_backward_combination(const scalar_t* g, const scalar_t* z, const scalar_t* l, scalar_t* out, int64_t n,
                                 double cg, double cz, double cl, bool stream) {
#if defined(VISSIAM_ROW_STREAMS_X86)
  if (row_streams_use_avx2()) return streams_avx2::sphere_backward_combination(g, z, l, out, n, cg, cz, cl, stream);
#endif
  streams_portable::sphere_backward_combination(g, z, l, out, n, cg, cz, cl, stream);
}

template <typename scalar_t>
void philox_normal_row(uint64_t key, uint64_t offset, uint64_t row, scalar_t* out, int64_t n) {
#if defined(VISSIAM_ROW_STREAMS_X86)
  if (row_streams_use_avx2()) return streams_avx2::philox_normal_row(key, offset, row, out, n);
#endif
  streams_portable::philox_normal_row(key, offset, row, out, n);
}

// Where a row's noise comes from: a (N, D - 1) tensor (TensorNoise), or drawn in place from Philox
// (PhiloxNoise, philox_normal.inc) into a per-task buffer of one row that stays in cache. The
// kernels below take either through one template parameter; the row arithmetic is the same.
template <typename scalar_t>
struct TensorNoise {
  static constexpr bool kGenerated = false;
  const scalar_t* data;
  int64_t stride;
  const scalar_t* row(int64_t i, scalar_t* /*buffer*/, int64_t /*n*/) const { return data + i * stride; }
};

template <typename scalar_t>
struct PhiloxNoise {
  static constexpr bool kGenerated = true;
  uint64_t key;
  uint64_t offset;
  const scalar_t* row(int64_t i, scalar_t* buffer, int64_t n) const {
    philox_normal_row(key, offset, static_cast<uint64_t>(i), buffer, n);
    return buffer;
  }
};

template <typename scalar_t>
TensorNoise<scalar_t> tensor_noise(const at::Tensor& noise) {
  return {noise.data_ptr<scalar_t>(), noise.stride(0)};
}

// seed: (2,) int64 on the CPU, (key, offset) read as 64-bit patterns.
template <typename scalar_t>
PhiloxNoise<scalar_t> philox_noise(const at::Tensor& seed) {
  const at::Tensor values = seed.contiguous();
  const int64_t* data = values.data_ptr<int64_t>();
  return {static_cast<uint64_t>(data[0]), static_cast<uint64_t>(data[1])};
}

// Elements before `out` reaches a 16-byte boundary (the tail of an output row starts one element
// past the row, so it is never aligned itself): those are written with plain stores, the rest may
// stream. Elementwise arithmetic: the split does not change any value.
template <typename scalar_t>
int64_t unaligned_head(const scalar_t* out, int64_t n) {
  const uintptr_t misalign = reinterpret_cast<uintptr_t>(out) % 16;
  if (misalign == 0 || misalign % sizeof(scalar_t) != 0) return 0;
  return std::min<int64_t>(n, static_cast<int64_t>((16 - misalign) / sizeof(scalar_t)));
}

// Rows per parallel task: about 64K elements of work each (the scalar math of a row costs about
// as much as streaming 64 elements).
int64_t transform_grain(int64_t dim) { return std::max<int64_t>(1, (int64_t{1} << 16) / (dim + 64)); }

// The per-row scalars of the transform (see the top of the file), from the row sums.
struct TransformRow {
  double norm;   // |l|
  double r;      // max(|l|, eps)
  double mu1;
  double q;      // |m|^2
  double noise_norm;
  double a;      // m.v
  double u1;
  double rho;    // a / u1, 0 where u1 = 0
};

TransformRow transform_row(double l1, double loc_loc_tail, double noise_noise, double loc_noise) {
  TransformRow row;
  row.norm = std::sqrt(l1 * l1 + loc_loc_tail);
  row.r = row.norm > kNormalizeEps ? row.norm : kNormalizeEps;
  row.mu1 = l1 / row.r;
  row.q = loc_loc_tail / (row.r * row.r);
  row.noise_norm = std::sqrt(noise_noise);
  row.a = loc_noise / (row.r * row.noise_norm);
  // 1 - mu1 = (1 - mu1^2) / (1 + mu1) = |m|^2 / (1 + mu1) for a unit mu: no cancellation as mu1 -> 1
  row.u1 = row.mu1 > 0.0 ? row.q / (1.0 + row.mu1) : 1.0 - row.mu1;
  row.rho = row.u1 > 0.0 ? row.a / row.u1 : 0.0;
  return row;
}

// A (N,) float64 tensor read with its stride.
struct StridedDoubles {
  const double* data;
  int64_t stride;
  explicit StridedDoubles(const at::Tensor& x) : data(x.data_ptr<double>()), stride(x.stride(0)) {}
  double operator()(int64_t i) const { return data[i * stride]; }
};

// A (B, D) view with unit stride along D (any row stride, including 0).
at::Tensor unit_inner_stride(const at::Tensor& x) {
  return x.size(1) <= 1 || x.stride(1) == 1 ? x : x.contiguous();
}

// loc (N, D), D >= 2, floating; t, s (N,) float64; grad_x (when given) (N, D) in loc's dtype; all on
// one CPU device.
void check_row_inputs(const at::Tensor& loc, const at::Tensor& t, const at::Tensor& s, const at::Tensor* grad_x) {
  VISSIAM_CHECK_ARG(loc.device().type() == at::kCPU, "loc must be a CPU tensor for the CPU kernel; got ",
                    loc.device());
  VISSIAM_CHECK_ARG(loc.dim() == 2 && loc.size(1) >= 2, "loc must have shape (N, D) with D >= 2; got ",
                    loc.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(loc.scalar_type()), "loc must be a floating point tensor; got ",
                   loc.scalar_type());
  const int64_t rows = loc.size(0);
  const at::Device device = loc.device();
  VISSIAM_CHECK_ON_DEVICE(t, device, "t");
  VISSIAM_CHECK_ON_DEVICE(s, device, "s");
  VISSIAM_CHECK_ARG(t.dim() == 1 && t.size(0) == rows, "t must have shape (", rows, ",) (one per row of loc); got ",
                    t.sizes());
  VISSIAM_CHECK_ARG(s.dim() == 1 && s.size(0) == rows, "s must have shape (", rows, ",) (one per row of loc); got ",
                    s.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kDouble, "t must be a float64 tensor; got ", t.scalar_type());
  TORCH_CHECK_TYPE(s.scalar_type() == at::kDouble, "s must be a float64 tensor; got ", s.scalar_type());
  if (grad_x != nullptr) {
    VISSIAM_CHECK_ON_DEVICE(*grad_x, device, "grad_x");
    VISSIAM_CHECK_ARG(grad_x->sizes() == loc.sizes(), "grad_x must have loc's shape ", loc.sizes(), "; got ",
                      grad_x->sizes());
    TORCH_CHECK_TYPE(grad_x->scalar_type() == loc.scalar_type(), "grad_x must have loc's dtype ",
                     loc.scalar_type(), "; got ", grad_x->scalar_type());
  }
}

// ... and noise (N, D - 1) in loc's dtype, on loc's device.
void check_transform_inputs(const at::Tensor& loc, const at::Tensor& t, const at::Tensor& s, const at::Tensor& noise,
                            const at::Tensor* grad_x) {
  check_row_inputs(loc, t, s, grad_x);
  const int64_t rows = loc.size(0), dim = loc.size(1);
  VISSIAM_CHECK_ON_DEVICE(noise, loc.device(), "noise");
  VISSIAM_CHECK_ARG(noise.dim() == 2 && noise.size(0) == rows && noise.size(1) == dim - 1,
                    "noise must have shape (", rows, ", ", dim - 1, ") (loc's rows, D - 1 columns); got ",
                    noise.sizes());
  TORCH_CHECK_TYPE(noise.scalar_type() == loc.scalar_type(), "noise must have loc's dtype ", loc.scalar_type(),
                   "; got ", noise.scalar_type());
}

// seed: (2,) int64 (key, offset) on `device`; rows < 2^32 (the row is one 32-bit word of the counter).
void check_seed(const at::Tensor& seed, const at::Device& device, int64_t rows) {
  VISSIAM_CHECK_ON_DEVICE(seed, device, "seed");
  VISSIAM_CHECK_ARG(seed.dim() == 1 && seed.size(0) == 2, "seed must have shape (2,) (key, offset); got ",
                    seed.sizes());
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong, "seed must be an int64 tensor; got ", seed.scalar_type());
  VISSIAM_CHECK_ARG(rows < (int64_t{1} << 32), "loc must have fewer than 2^32 rows for the seeded sampler; got ",
                    rows);
}

// Noise: TensorNoise or PhiloxNoise (a generated row is drawn into `buffer`, one row per task).
template <typename scalar_t, typename Noise>
void transform_forward_rows(const at::Tensor& loc, const Noise& noise, StridedDoubles t, StridedDoubles s,
                            at::Tensor& x) {
  const int64_t rows = loc.size(0), dim = loc.size(1), tail = dim - 1;
  const scalar_t* l_ptr = loc.data_ptr<scalar_t>();
  scalar_t* x_ptr = x.data_ptr<scalar_t>();
  const int64_t l_stride = loc.stride(0);
  // read loc, noise (generated: none); write x
  const bool stream = stream_output((Noise::kGenerated ? 2 : 3) * static_cast<size_t>(x.nbytes()));
  at::parallel_for(0, rows, transform_grain(dim), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> buffer(Noise::kGenerated ? tail : 0);
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* l = l_ptr + i * l_stride;
      const scalar_t* z = noise.row(i, buffer.data(), tail);
      scalar_t* out = x_ptr + i * dim;
      RowDots dots;  // mu_mu = |l_tail|^2, target_target = |z|^2, mu_target = l_tail.z
      row_dots_block(l + 1, l_stride, z, 0, 1, tail, &dots);
      const double l1 = static_cast<double>(l[0]);
      const TransformRow row = transform_row(l1, dots.mu_mu, dots.target_target, dots.mu_target);
      const double ti = t(i), si = s(i);
      out[0] = static_cast<scalar_t>(row.mu1 * ti + si * row.a);
      const double coef_loc = (ti - si * row.rho) / row.r;  // c / r
      const double coef_noise = si / row.noise_norm;        // s / |z|
      const int64_t head = stream ? unaligned_head(out + 1, tail) : 0;
      if (head > 0) row_combination(l + 1, z, out + 1, head, coef_loc, coef_noise, false);
      row_combination(l + 1 + head, z + head, out + 1 + head, tail - head, coef_loc, coef_noise, stream);
    }
    if (stream) row_streams_fence();
  });
}

template <typename scalar_t, typename Noise>
void transform_backward_rows(const at::Tensor& grad_x, const at::Tensor& loc, const Noise& noise,
                             StridedDoubles t, StridedDoubles s, at::Tensor& grad_loc, double* grad_t,
                             double* grad_s) {
  const int64_t rows = loc.size(0), dim = loc.size(1), tail = dim - 1;
  const scalar_t* g_ptr = grad_x.data_ptr<scalar_t>();
  const scalar_t* l_ptr = loc.data_ptr<scalar_t>();
  scalar_t* out_ptr = grad_loc.data_ptr<scalar_t>();
  const int64_t g_stride = grad_x.stride(0), l_stride = loc.stride(0);
  // read grad_x, loc, noise (generated: none); write grad_loc
  const bool stream = stream_output((Noise::kGenerated ? 3 : 4) * static_cast<size_t>(grad_loc.nbytes()));
  at::parallel_for(0, rows, transform_grain(dim), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> buffer(Noise::kGenerated ? tail : 0);
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* g = g_ptr + i * g_stride;
      const scalar_t* l = l_ptr + i * l_stride;
      const scalar_t* z = noise.row(i, buffer.data(), tail);
      scalar_t* out = out_ptr + i * dim;
      const SphereBackwardDots dots = sphere_backward_dots(l + 1, z, g + 1, tail);
      const TransformRow row = transform_row(static_cast<double>(l[0]), dots.loc_loc, dots.noise_noise,
                                             dots.loc_noise);
      const double ti = t(i), si = s(i), g1 = static_cast<double>(g[0]);
      const double grad_m = dots.grad_loc / row.r;           // Gm = G.m
      const double grad_v = dots.grad_noise / row.noise_norm;  // Gv = G.v
      const double c = ti - si * row.rho;
      grad_t[i] = g1 * row.mu1 + grad_m;
      grad_s[i] = g1 * row.a + grad_v - grad_m * row.rho;
      const bool reflects = row.u1 > 0.0;  // u1 = 0: mu = e1 exactly, H = I and rho a constant 0
      const double dl_da = si * (g1 - (reflects ? grad_m / row.u1 : 0.0));
      const double dl_du1 = reflects ? grad_m * si * row.rho / row.u1 : 0.0;
      // du1/dmu1 and du1/dm = dm_coef * m of the branch u1 was formed by
      const double du1_dmu1 = row.mu1 > 0.0 ? -row.u1 / (1.0 + row.mu1) : -1.0;
      const double dm_coef = row.mu1 > 0.0 ? 2.0 / (1.0 + row.mu1) : 0.0;
      const double gamma1 = g1 * ti + dl_du1 * du1_dmu1;
      // mu.gamma, the radial part removed by the normalization (none where |l| <= eps: clamped)
      const double radial = row.norm > kNormalizeEps
                                ? row.mu1 * gamma1 + c * grad_m + dl_da * row.a + dl_du1 * dm_coef * row.q
                                : 0.0;
      out[0] = static_cast<scalar_t>((gamma1 - row.mu1 * radial) / row.r);
      const double coef_grad = c / row.r;
      const double coef_noise = dl_da / (row.noise_norm * row.r);
      const double coef_loc = (dl_du1 * dm_coef - radial) / (row.r * row.r);
      const int64_t head = stream ? unaligned_head(out + 1, tail) : 0;
      if (head > 0) sphere_backward_combination(g + 1, z, l + 1, out + 1, head, coef_grad, coef_noise, coef_loc, false);
      sphere_backward_combination(g + 1 + head, z + head, l + 1 + head, out + 1 + head, tail - head, coef_grad,
                                  coef_noise, coef_loc, stream);
    }
    if (stream) row_streams_fence();
  });
}

// x = H [t, s noise/|noise|] of each row, noise from `make_noise` (TensorNoise or PhiloxNoise):
// loc (N, D), t, s (N,) float64 -> x (N, D) in loc's dtype, contiguous.
template <typename MakeNoise>
at::Tensor transform_forward(const at::Tensor& loc, const at::Tensor& t, const at::Tensor& s,
                             MakeNoise make_noise) {
  const at::Tensor l = unit_inner_stride(loc);
  at::Tensor x = GradientBufferPool::empty(l.sizes(), l.options());
  if (l.size(0) == 0) return x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "sphere_sampling_forward_cpu", [&] {
    transform_forward_rows<scalar_t>(l, make_noise(scalar_t{}), StridedDoubles(t), StridedDoubles(s), x);
  });
  return x;
}

// The pullback for grad_x (N, D): grad_loc (N, D) in loc's dtype (contiguous), grad_t, grad_s (N,) float64.
template <typename MakeNoise>
std::tuple<at::Tensor, at::Tensor, at::Tensor> transform_backward(const at::Tensor& grad_x,
                                                                  const at::Tensor& loc, const at::Tensor& t,
                                                                  const at::Tensor& s, MakeNoise make_noise) {
  const at::Tensor g = unit_inner_stride(grad_x), l = unit_inner_stride(loc);
  at::Tensor grad_loc = GradientBufferPool::empty(l.sizes(), l.options());
  const auto double_options = l.options().dtype(at::kDouble);
  at::Tensor grad_t = at::empty({l.size(0)}, double_options);
  at::Tensor grad_s = at::empty({l.size(0)}, double_options);
  if (l.size(0) == 0) return {grad_loc, grad_t, grad_s};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "sphere_sampling_backward_cpu", [&] {
    transform_backward_rows<scalar_t>(g, l, make_noise(scalar_t{}), StridedDoubles(t), StridedDoubles(s), grad_loc,
                                      grad_t.data_ptr<double>(), grad_s.data_ptr<double>());
  });
  return {grad_loc, grad_t, grad_s};
}

// The noise of a tensor (N, D - 1), read with unit inner stride.
auto noise_of(const at::Tensor& noise) {
  return [z = unit_inner_stride(noise)](auto zero) { return tensor_noise<decltype(zero)>(z); };
}

// The noise drawn from Philox under seed = (key, offset).
auto noise_of_seed(const at::Tensor& seed) {
  return [&seed](auto zero) { return philox_noise<decltype(zero)>(seed); };
}

at::Tensor sphere_sample_transform_cpu(const at::Tensor& loc, const at::Tensor& t, const at::Tensor& s,
                                       const at::Tensor& noise) {
  check_transform_inputs(loc, t, s, noise, nullptr);
  return transform_forward(loc, t, s, noise_of(noise));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sphere_sample_transform_backward_cpu(
    const at::Tensor& grad_x, const at::Tensor& loc, const at::Tensor& t, const at::Tensor& s,
    const at::Tensor& noise) {
  check_transform_inputs(loc, t, s, noise, &grad_x);
  return transform_backward(grad_x, loc, t, s, noise_of(noise));
}

// The same with the noise drawn inside from seed (2,) int64 = (key, offset) (philox_normal.inc):
// no (N, D - 1) tensor is read or kept; the backward draws the same noise again.
at::Tensor sphere_sample_seeded_cpu(const at::Tensor& loc, const at::Tensor& t, const at::Tensor& s,
                                    const at::Tensor& seed) {
  check_row_inputs(loc, t, s, nullptr);
  check_seed(seed, loc.device(), loc.size(0));
  return transform_forward(loc, t, s, noise_of_seed(seed));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sphere_sample_seeded_backward_cpu(
    const at::Tensor& grad_x, const at::Tensor& loc, const at::Tensor& t, const at::Tensor& s,
    const at::Tensor& seed) {
  check_row_inputs(loc, t, s, &grad_x);
  check_seed(seed, loc.device(), loc.size(0));
  return transform_backward(grad_x, loc, t, s, noise_of_seed(seed));
}

// The noise those ops draw: (rows, cols) in `dtype` (a floating type), for the tests and the reference.
at::Tensor sphere_sample_noise_cpu(const at::Tensor& seed, int64_t rows, int64_t cols, at::ScalarType dtype) {
  check_seed(seed, seed.device(), rows);
  VISSIAM_CHECK_ARG(seed.device().type() == at::kCPU, "seed must be a CPU tensor for the CPU kernel; got ",
                    seed.device());
  VISSIAM_CHECK_ARG(rows >= 0 && cols >= 0, "rows and cols must be >= 0; got ", rows, " and ", cols);
  TORCH_CHECK_TYPE(at::isFloatingType(dtype), "dtype must be a floating point type; got ", dtype);
  at::Tensor noise = at::empty({rows, cols}, seed.options().dtype(dtype));
  if (rows == 0 || cols == 0) return noise;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "sphere_sample_noise_cpu", [&] {
    const PhiloxNoise<scalar_t> source = philox_noise<scalar_t>(seed);
    scalar_t* data = noise.data_ptr<scalar_t>();
    at::parallel_for(0, rows, transform_grain(cols + 1), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) source.row(i, data + i * cols, cols);
    });
  });
  return noise;
}

}  // namespace
}  // namespace vissiam

TORCH_LIBRARY_IMPL(vissiam_kernels, CPU, m) {
  m.impl("sphere_sample_transform", &vissiam::sphere_sample_transform_cpu);
  m.impl("sphere_sample_transform_backward", &vissiam::sphere_sample_transform_backward_cpu);
  m.impl("sphere_sample_seeded", &vissiam::sphere_sample_seeded_cpu);
  m.impl("sphere_sample_seeded_backward", &vissiam::sphere_sample_seeded_backward_cpu);
  m.impl("sphere_sample_noise", &vissiam::sphere_sample_noise_cpu);
}
