// Fused CPU kernels of the vissiam_kernels ops (schemas in csrc/ops.cpp).
//
// spherical_nll: one pass over each (mu, target) row accumulates |mu|^2, |t|^2
// and mu.t in double, then the per-row scalar math (spherical_math.h) gives the
// NLL and the gradient coefficients. scaled_row_combination is the whole
// backward: one pass reading mu and target and writing a gradient. Rows run in
// parallel (at::parallel_for, so torch.set_num_threads applies); every row is
// computed by the same sequence of operations whatever the thread count, so
// results are bitwise deterministic.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "vissiam/op_checks.h"
#include "vissiam/special_function_table.h"
#include "vissiam/spherical_math.h"

// Runtime ISA dispatch for the row loops (AVX-512 / AVX2 / baseline), so the
// extension is portable yet uses wide vectors where present.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VISSIAM_ISA_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VISSIAM_ISA_CLONES
#endif

namespace vissiam {
namespace {

#define CHECK_ARG VISSIAM_CHECK_ARG

// Eight lanes of double, through GCC/Clang vector extensions: the same lane
// arithmetic whatever ISA clone runs (AVX-512, AVX2 or SSE2 split it
// differently), so sums do not depend on the machine's vector width.
typedef float f32x8 __attribute__((vector_size(32)));
typedef double f64x8 __attribute__((vector_size(64)));

template <typename scalar_t>
inline f64x8 load8(const scalar_t* p) {
  f32x8 v;
  for (int j = 0; j < 8; ++j) v[j] = static_cast<float>(p[j]);
  return __builtin_convertvector(v, f64x8);
}
template <>
inline f64x8 load8<float>(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof(v));
  return __builtin_convertvector(v, f64x8);
}
template <>
inline f64x8 load8<double>(const double* p) {
  f64x8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename scalar_t>
inline void store8(scalar_t* p, f64x8 v) {
  for (int j = 0; j < 8; ++j) p[j] = static_cast<scalar_t>(v[j]);
}
template <>
inline void store8<float>(float* p, f64x8 v) {
  const f32x8 narrow = __builtin_convertvector(v, f32x8);
  std::memcpy(p, &narrow, sizeof(narrow));
}
template <>
inline void store8<double>(double* p, f64x8 v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename T>
inline double to_double(T x) {
  return static_cast<double>(static_cast<float>(x));
}
template <>
inline double to_double<double>(double x) {
  return x;
}

inline double horizontal_sum(f64x8 v) {
  return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}

// |a|^2, |b|^2 and a.b over n elements, accumulated in double: two sets of
// eight lanes (for instruction-level parallelism), summed in a fixed order.
template <typename scalar_t>
VISSIAM_ISA_CLONES RowDots row_dots(const scalar_t* a, const scalar_t* b, int64_t n) {
  f64x8 aa0 = {}, bb0 = {}, ab0 = {}, aa1 = {}, bb1 = {}, ab1 = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const f64x8 x0 = load8(a + i), y0 = load8(b + i);
    const f64x8 x1 = load8(a + i + 8), y1 = load8(b + i + 8);
    aa0 += x0 * x0;
    bb0 += y0 * y0;
    ab0 += x0 * y0;
    aa1 += x1 * x1;
    bb1 += y1 * y1;
    ab1 += x1 * y1;
  }
  double aa = horizontal_sum(aa0 + aa1), bb = horizontal_sum(bb0 + bb1), ab = horizontal_sum(ab0 + ab1);
  for (; i < n; ++i) {
    const double x = to_double(a[i]);
    const double y = to_double(b[i]);
    aa += x * x;
    bb += y * y;
    ab += x * y;
  }
  return RowDots{aa, bb, ab};
}

// out = cx * x + cy * y over n elements, computed in double and rounded once
// (x and y nearly parallel make the float32 difference lose digits).
template <typename scalar_t>
VISSIAM_ISA_CLONES void row_combination(const scalar_t* x, const scalar_t* y, scalar_t* out,
                                        int64_t n, double cx, double cy) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    store8(out + i, cx * load8(x + i) + cy * load8(y + i));
  }
  for (; i < n; ++i) {
    out[i] = static_cast<scalar_t>(cx * to_double(x[i]) + cy * to_double(y[i]));
  }
}

// row *= c in place, computed in double and rounded once. Not row_combination(row, row, row, c, 0.0):
// 0 * inf is NaN, which turned a gradient that overflowed the dtype (inf) into NaN.
template <typename scalar_t>
VISSIAM_ISA_CLONES void row_scale(scalar_t* row, int64_t n, double c) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    store8(row + i, c * load8(row + i));
  }
  for (; i < n; ++i) {
    row[i] = static_cast<scalar_t>(c * to_double(row[i]));
  }
}

// Rows per parallel task: about 64K elements of work each, a row costing its D elements plus
// ``row_math`` element-equivalents of per-row scalar work. The forward's special functions take
// 0.05-0.5 us a row, the time of streaming ~256 elements: counting them lets small D split over
// the threads (d = 3 ran on one thread up to B = 21845 rows when only D was counted).
constexpr int64_t kRowMathElements = 256;
int64_t row_grain(int64_t dim, int64_t row_math = 0) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(dim + row_math, 1));
}

// A (B, D) view with unit stride along D (any row stride, including 0).
at::Tensor unit_inner_stride(const at::Tensor& x) {
  return x.size(1) <= 1 || x.stride(1) == 1 ? x : x.contiguous();
}

// The fused forward over all views. With grad_mu / grad_target it also writes,
// while the row is still in cache, the input gradients for upstream gradient
// grad_weight (the training form: one pass over mu and target per step).
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor>
spherical_nll_forward_cpu(at::TensorList mu, at::TensorList target, at::TensorList kappa,
                          int64_t family, double grad_weight, bool grad_mu, bool grad_target) {
  check_nll_views(mu, target, kappa, family, at::kCPU);
  const int64_t dim = mu[0].size(1);
  int64_t total_rows = 0;
  bool any_double = false;
  for (size_t v = 0; v < mu.size(); ++v) {
    total_rows += mu[v].size(0);
    any_double |= mu[v].scalar_type() == at::kDouble;
    if (family != kCosine) any_double |= kappa[v].scalar_type() == at::kDouble;
  }
  auto double_options = mu[0].options().dtype(at::kDouble);
  at::Tensor nll = at::empty({total_rows}, double_options);
  at::Tensor row_state = at::empty({total_rows, 4}, double_options);
  at::Tensor applied = at::empty({grad_mu || grad_target ? total_rows : 0}, double_options);
  double* nll_out = nll.data_ptr<double>();
  double* state_out = row_state.data_ptr<double>();
  double* applied_out = applied.data_ptr<double>();
  std::vector<at::Tensor> grads_mu, grads_target;

  int64_t row_offset = 0;
  for (size_t v = 0; v < mu.size(); ++v) {
    const at::Tensor m = unit_inner_stride(mu[v]);
    const at::Tensor t = unit_inner_stride(target[v]);
    const at::Tensor k = family == kCosine ? at::Tensor() : kappa[v].to(at::kDouble).contiguous();
    const double* k_ptr = family == kCosine ? nullptr : k.data_ptr<double>();
    const int64_t rows = m.size(0);
    const int64_t m_stride = m.stride(0), t_stride = t.stride(0);
    at::Tensor gm = grad_mu ? at::empty({rows, dim}, m.options()) : at::Tensor();
    at::Tensor gt = grad_target ? at::empty({rows, dim}, t.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, m.scalar_type(), "spherical_nll_cpu", [&] {
      const scalar_t* m_ptr = m.data_ptr<scalar_t>();
      const scalar_t* t_ptr = t.data_ptr<scalar_t>();
      scalar_t* gm_ptr = grad_mu ? gm.data_ptr<scalar_t>() : nullptr;
      scalar_t* gt_ptr = grad_target ? gt.data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, rows, row_grain(dim, kRowMathElements), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const double kappa_i = k_ptr ? k_ptr[i] : 0.0;
          CHECK_ARG(valid_kappa(kappa_i), "kappa must be finite and >= 0; got ", kappa_i,
                    " in row ", i, " of view ", v);
          const scalar_t* m_row = m_ptr + i * m_stride;
          const scalar_t* t_row = t_ptr + i * t_stride;
          const RowDots dots = row_dots(m_row, t_row, dim);
          const RowLoss loss = row_loss(static_cast<int>(family), row_cosine(dots), kappa_i,
                                        static_cast<double>(dim));
          const RowGradientCoefficients g = row_gradient_coefficients(dots, loss.dnll_dcos);
          const int64_t r = row_offset + i;
          nll_out[r] = loss.nll;
          state_out[4 * r + 0] = g.mu_coef;
          state_out[4 * r + 1] = g.target_coef;
          state_out[4 * r + 2] = g.cross_coef;
          state_out[4 * r + 3] = loss.dnll_dkappa;
          if (gm_ptr) {
            row_combination(m_row, t_row, gm_ptr + i * dim, dim, grad_weight * g.mu_coef,
                            grad_weight * g.cross_coef);
          }
          if (gt_ptr) {
            row_combination(t_row, m_row, gt_ptr + i * dim, dim, grad_weight * g.target_coef,
                            grad_weight * g.cross_coef);
          }
          if (gm_ptr || gt_ptr) applied_out[r] = grad_weight;
        }
      });
    });
    if (grad_mu) grads_mu.push_back(gm);
    if (grad_target) grads_target.push_back(gt);
    row_offset += rows;
  }
  return {any_double ? nll : nll.to(at::kFloat), row_state, grads_mu, grads_target, applied};
}

std::tuple<at::Tensor, at::Tensor> spherical_nll_cpu(at::TensorList mu, at::TensorList target,
                                                     at::TensorList kappa, int64_t family) {
  auto out = spherical_nll_forward_cpu(mu, target, kappa, family, 0.0, false, false);
  return {std::get<0>(out), std::get<1>(out)};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor>
spherical_nll_with_grad_cpu(at::TensorList mu, at::TensorList target, at::TensorList kappa,
                            int64_t family, double grad_weight, bool grad_mu, bool grad_target) {
  return spherical_nll_forward_cpu(mu, target, kappa, family, grad_weight, grad_mu, grad_target);
}

void rescale_rows_cpu(at::TensorList grad_mu, at::TensorList grad_target, const at::Tensor& applied,
                      const at::Tensor& upstream) {
  const int64_t total_rows = applied.numel();
  CHECK_ARG(applied.scalar_type() == at::kDouble && applied.dim() == 1 && applied.is_contiguous(),
            "applied must be a contiguous float64 vector");
  CHECK_ARG(upstream.dim() == 1 && upstream.size(0) == total_rows, "upstream must have shape (",
            total_rows, ",); got ", upstream.sizes());
  const at::Tensor u = upstream.to(at::kDouble).contiguous();
  const double* u_ptr = u.data_ptr<double>();
  double* a_ptr = applied.data_ptr<double>();
  for (at::TensorList buffers : {grad_mu, grad_target}) {
    int64_t row_offset = 0;
    for (const at::Tensor& g : buffers) {
      CHECK_ARG(g.dim() == 2 && g.is_contiguous(), "gradient buffers must be contiguous (B, D) tensors");
      const int64_t rows = g.size(0), dim = g.size(1);
      CHECK_ARG(row_offset + rows <= total_rows, "gradient buffers hold more rows than applied");
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "rescale_rows_cpu", [&] {
        scalar_t* g_ptr = g.data_ptr<scalar_t>();
        at::parallel_for(0, rows, row_grain(dim), [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            const int64_t r = row_offset + i;
            if (u_ptr[r] == a_ptr[r]) continue;
            const double factor = u_ptr[r] / a_ptr[r];
            row_scale(g_ptr + i * dim, dim, factor);
          }
        });
      });
      row_offset += rows;
    }
  }
  for (int64_t r = 0; r < total_rows; ++r) a_ptr[r] = u_ptr[r];
}

std::vector<at::Tensor> scaled_row_combination_cpu(const at::Tensor& scale, const at::Tensor& coef_x,
                                                   const at::Tensor& coef_y, at::TensorList x,
                                                   at::TensorList y) {
  CHECK_ARG(x.size() == y.size(), "x and y must hold the same number of views");
  int64_t total_rows = 0;
  for (size_t v = 0; v < x.size(); ++v) {
    CHECK_ARG(x[v].dim() == 2 && y[v].sizes() == x[v].sizes(), "x[", v, "] and y[", v,
              "] must be matching (B, D) tensors; got ", x[v].sizes(), " and ", y[v].sizes());
    CHECK_ARG(y[v].scalar_type() == x[v].scalar_type(), "y[", v, "] must have x's dtype");
    total_rows += x[v].size(0);
  }
  for (const at::Tensor* c : {&scale, &coef_x, &coef_y}) {
    CHECK_ARG(c->dim() == 1 && c->size(0) == total_rows, "scale and coefficients must have shape (",
              total_rows, ",); got ", c->sizes());
  }
  const at::Tensor s = scale.to(at::kDouble).contiguous();
  const at::Tensor cx = coef_x.to(at::kDouble).contiguous();
  const at::Tensor cy = coef_y.to(at::kDouble).contiguous();
  const double *s_ptr = s.data_ptr<double>(), *cx_ptr = cx.data_ptr<double>(),
               *cy_ptr = cy.data_ptr<double>();

  std::vector<at::Tensor> outputs;
  int64_t row_offset = 0;
  for (size_t v = 0; v < x.size(); ++v) {
    const at::Tensor xv = unit_inner_stride(x[v]);
    const at::Tensor yv = unit_inner_stride(y[v]);
    at::Tensor out = at::empty(xv.sizes(), xv.options().memory_format(at::MemoryFormat::Contiguous));
    const int64_t rows = xv.size(0), dim = xv.size(1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xv.scalar_type(), "scaled_row_combination_cpu", [&] {
      const scalar_t* x_ptr = xv.data_ptr<scalar_t>();
      const scalar_t* y_ptr = yv.data_ptr<scalar_t>();
      scalar_t* o_ptr = out.data_ptr<scalar_t>();
      const int64_t x_stride = xv.stride(0), y_stride = yv.stride(0);
      at::parallel_for(0, rows, row_grain(dim), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t r = row_offset + i;
          row_combination(x_ptr + i * x_stride, y_ptr + i * y_stride, o_ptr + i * dim, dim,
                          s_ptr[r] * cx_ptr[r], s_ptr[r] * cy_ptr[r]);
        }
      });
    });
    outputs.push_back(out);
    row_offset += rows;
  }
  return outputs;
}

at::Tensor normalizer_quantity_cpu(const at::Tensor& kappa, int64_t dim, int64_t family,
                                   int64_t quantity) {
  CHECK_ARG(dim >= 2, "dim must be >= 2; got ", dim);
  CHECK_ARG(family == kVonMisesFisher || family == kPowerSpherical,
            "family must be 1 (vMF) or 2 (power spherical); got ", family);
  CHECK_ARG(quantity >= kLogNormalizer && quantity <= kKlUniform, "quantity must be in [0, 4]; got ",
            quantity);
  TORCH_CHECK_TYPE(at::isFloatingType(kappa.scalar_type()),
                   "kappa must be a floating point tensor; got ", kappa.scalar_type());
  const at::Tensor k = kappa.to(at::kDouble).contiguous();
  at::Tensor out = at::empty(k.sizes(), k.options());
  const double* k_ptr = k.data_ptr<double>();
  double* o_ptr = out.data_ptr<double>();
  at::parallel_for(0, k.numel(), 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      CHECK_ARG(valid_kappa(k_ptr[i]), "kappa must be finite and >= 0; got ", k_ptr[i],
                " at flat index ", i);
      o_ptr[i] = normalizer_quantity(static_cast<int>(family), static_cast<int>(quantity), k_ptr[i],
                                     static_cast<double>(dim));
    }
  });
  return kappa.scalar_type() == at::kDouble ? out : out.to(at::kFloat);
}

at::Tensor special_function_cpu(c10::string_view name, const at::Tensor& a, const at::Tensor& b) {
  CHECK_ARG(a.sizes() == b.sizes(), "a and b must have the same shape; got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK_TYPE(a.scalar_type() == at::kDouble && b.scalar_type() == at::kDouble,
                   "a and b must be float64 tensors");
  const SpecialFunction code = special_function_code(name);
  CHECK_ARG(code != kUnknownSpecialFunction, "unknown special function name: ", name);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor out = at::empty(ac.sizes(), ac.options());
  const double *a_ptr = ac.data_ptr<double>(), *b_ptr = bc.data_ptr<double>();
  double* o_ptr = out.data_ptr<double>();
  for (int64_t i = 0; i < ac.numel(); ++i) o_ptr[i] = evaluate_special_function(code, a_ptr[i], b_ptr[i]);
  return out;
}

}  // namespace
}  // namespace vissiam

TORCH_LIBRARY_IMPL(vissiam_kernels, CPU, m) {
  m.impl("spherical_nll", &vissiam::spherical_nll_cpu);
  m.impl("spherical_nll_with_grad", &vissiam::spherical_nll_with_grad_cpu);
  m.impl("rescale_rows_", &vissiam::rescale_rows_cpu);
  m.impl("scaled_row_combination", &vissiam::scaled_row_combination_cpu);
  m.impl("normalizer_quantity", &vissiam::normalizer_quantity_cpu);
  m.impl("special_function", &vissiam::special_function_cpu);
}
