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

#include "gradient_buffer_pool.h"
#include "row_streams.h"
#include "vissiam/op_checks.h"
#include "vissiam/row_math_lanes.h"
#include "vissiam/special_function_table.h"
#include "vissiam/spherical_math.h"

namespace vissiam {
namespace {

#define CHECK_ARG VISSIAM_CHECK_ARG

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

// kappa[i] of a (B,) tensor of any floating dtype and stride, as double, without a conversion pass.
struct KappaReader {
  const void* data = nullptr;
  int64_t stride = 0;
  at::ScalarType type = at::kDouble;

  explicit KappaReader(const at::Tensor& kappa) {
    if (!kappa.defined()) return;
    data = kappa.data_ptr();
    stride = kappa.stride(0);
    type = kappa.scalar_type();
  }
  double operator()(int64_t i) const {
    if (data == nullptr) return 0.0;  // cosine: no concentration
    const int64_t k = i * stride;
    switch (type) {
      case at::kDouble: return static_cast<const double*>(data)[k];
      case at::kFloat: return static_cast<const float*>(data)[k];
      case at::kHalf: return static_cast<float>(static_cast<const at::Half*>(data)[k]);
      default: return static_cast<float>(static_cast<const at::BFloat16*>(data)[k]);
    }
  }
};

// What one pass over the rows of all views computes. Per row r (rows numbered across views):
//   value[r] = NLL + kl_weight * KL(q || uniform)
//   state[r] = weight * (mu_coef, target_coef, cross_coef, dvalue/dkappa)   (RowStateColumn order)
// and, with gradient buffers, grad_mu[r, :] = weight * dvalue/dmu (the same for the target), written
// while the row is still in cache. weight is what the caller's reduction gives each row.
struct RowPass {
  int family;
  double dim;
  double kl_weight;
  double weight;
  bool grad_mu;
  bool grad_target;
};

struct ViewBuffers {
  at::Tensor mu, target;            // (B, D), unit inner stride
  KappaReader kappa;
  at::Tensor grad_mu, grad_target;  // (B, D) contiguous, or undefined
};

// KL(q || uniform) and its kappa-derivative -kappa d2logC/dkappa2 (only when a KL term is asked for).
std::pair<double, double> kl_uniform_and_derivative(int family, double kappa, double dim) {
  return {normalizer_quantity(family, kKlUniform, kappa, dim),
          -kappa * normalizer_quantity(family, kLogNormalizerSecondDerivative, kappa, dim)};
}

template <typename scalar_t>
void row_pass_view(const RowPass& pass, const ViewBuffers& view, int64_t view_index, double* value_out,
                   double* state_out) {
  const int64_t rows = view.mu.size(0), dim = view.mu.size(1);
  const scalar_t* m_ptr = view.mu.data_ptr<scalar_t>();
  const scalar_t* t_ptr = view.target.data_ptr<scalar_t>();
  scalar_t* gm_ptr = pass.grad_mu ? view.grad_mu.data_ptr<scalar_t>() : nullptr;
  scalar_t* gt_ptr = pass.grad_target ? view.grad_target.data_ptr<scalar_t>() : nullptr;
  const int64_t m_stride = view.mu.stride(0), t_stride = view.target.stride(0);
  const double w = pass.weight;
  const size_t row_bytes = static_cast<size_t>(rows * dim) * sizeof(scalar_t);  // one (B, D) tensor
  const bool stream = stream_output(row_bytes * (2 + (gm_ptr ? 1 : 0) + (gt_ptr ? 1 : 0)));
  at::parallel_for(0, rows, row_grain(dim, kRowMathElements), [&](int64_t begin, int64_t end) {
    // Rows in blocks of kRowLanes: the dot products row by row (streaming the rows), the special
    // functions of the block's rows at once in vector lanes (row_math_lanes.h), then the gradient
    // rows, read again while the block is still in cache. Each row's result does not depend on
    // the block it falls in: bitwise the same for any thread count.
    RowDots dots[kRowLanes];
    double cosines[kRowLanes], kappas[kRowLanes];
    RowLoss losses[kRowLanes];
    RowGradientCoefficients coefficients[kRowLanes];
    const bool need_coefficients = state_out != nullptr || gm_ptr != nullptr || gt_ptr != nullptr;
    for (int64_t first = begin; first < end; first += kRowLanes) {
      const int n = static_cast<int>(std::min<int64_t>(kRowLanes, end - first));
      bool kappas_valid = true;
      for (int j = 0; j < n; ++j) {
        kappas[j] = view.kappa(first + j);
        kappas_valid &= valid_kappa(kappas[j]);
      }
      if (!kappas_valid) {
        for (int j = 0; j < n; ++j) {
          CHECK_ARG(valid_kappa(kappas[j]), "kappa must be finite and >= 0; got ", kappas[j], " in row ",
                    first + j, " of view ", view_index);
        }
      }
      // the block's rows are read in one call; the per-row math after it runs as n independent chains
      row_dots_block(m_ptr + first * m_stride, m_stride, t_ptr + first * t_stride, t_stride, n, dim, dots);
      for (int j = 0; j < n; ++j) cosines[j] = row_cosine(dots[j]);
      row_loss_lanes(pass.family, cosines, kappas, pass.dim, n, losses, /*with_derivatives=*/need_coefficients);
      if (need_coefficients) {
        for (int j = 0; j < n; ++j) coefficients[j] = row_gradient_coefficients(dots[j], losses[j].dnll_dcos);
      }
      for (int j = 0; j < n; ++j) {
        const int64_t i = first + j;
        const RowLoss& loss = losses[j];
        double value = loss.nll, dvalue_dkappa = loss.dnll_dkappa;
        if (pass.kl_weight != 0.0) {
          const auto kl = kl_uniform_and_derivative(pass.family, kappas[j], pass.dim);
          value += pass.kl_weight * kl.first;
          dvalue_dkappa += pass.kl_weight * kl.second;
        }
        value_out[i] = value;
        if (!need_coefficients) continue;
        const RowGradientCoefficients& g = coefficients[j];
        if (state_out != nullptr) {
          double* state = state_out + kRowStateColumns * i;
          state[kMuCoefColumn] = w * g.mu_coef;
          state[kTargetCoefColumn] = w * g.target_coef;
          state[kCrossCoefColumn] = w * g.cross_coef;
          state[kKappaGradColumn] = w * dvalue_dkappa;
        }
        const scalar_t* m_row = m_ptr + i * m_stride;
        const scalar_t* t_row = t_ptr + i * t_stride;
        if (gm_ptr) row_combination(m_row, t_row, gm_ptr + i * dim, dim, w * g.mu_coef, w * g.cross_coef, stream);
        if (gt_ptr) row_combination(t_row, m_row, gt_ptr + i * dim, dim, w * g.target_coef, w * g.cross_coef, stream);
      }
    }
    if (stream) row_streams_fence();
  });
}

// The pass over every view; values (sum B_v,) and state (sum B_v, 4) are float64, gradient buffers
// are made here in each view's dtype.
void row_pass(const RowPass& pass, at::TensorList mu, at::TensorList target, at::TensorList kappa,
              double* values, double* state, std::vector<at::Tensor>& grads_mu,
              std::vector<at::Tensor>& grads_target) {
  int64_t row_offset = 0;
  for (size_t v = 0; v < mu.size(); ++v) {
    ViewBuffers view{unit_inner_stride(mu[v]), unit_inner_stride(target[v]),
                     KappaReader(pass.family == kCosine ? at::Tensor() : kappa[v]), {}, {}};
    if (pass.grad_mu) view.grad_mu = GradientBufferPool::empty(view.mu.sizes(), view.mu.options());
    if (pass.grad_target) view.grad_target = GradientBufferPool::empty(view.target.sizes(), view.target.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, view.mu.scalar_type(), "row_pass_cpu", [&] {
      row_pass_view<scalar_t>(pass, view, static_cast<int64_t>(v), values + row_offset,
                              state == nullptr ? nullptr : state + kRowStateColumns * row_offset);
    });
    if (pass.grad_mu) grads_mu.push_back(view.grad_mu);
    if (pass.grad_target) grads_target.push_back(view.grad_target);
    row_offset += view.mu.size(0);
  }
}

int64_t total_rows(at::TensorList mu) {
  int64_t rows = 0;
  for (const at::Tensor& m : mu) rows += m.size(0);
  return rows;
}

std::tuple<at::Tensor, at::Tensor> spherical_nll_cpu(at::TensorList mu, at::TensorList target,
                                                     at::TensorList kappa, int64_t family) {
  check_nll_views(mu, target, kappa, family, at::kCPU);
  const auto options = mu[0].options().dtype(at::kDouble);
  at::Tensor nll = at::empty({total_rows(mu)}, options);
  at::Tensor row_state = at::empty({nll.size(0), kRowStateColumns}, options);
  std::vector<at::Tensor> unused_mu, unused_target;
  const RowPass pass{static_cast<int>(family), static_cast<double>(mu[0].size(1)), 0.0, 1.0, false, false};
  row_pass(pass, mu, target, kappa, nll.data_ptr<double>(), row_state.data_ptr<double>(), unused_mu,
           unused_target);
  return {loss_dtype(mu, kappa) == at::kDouble ? nll : nll.to(at::kFloat), row_state};
}

// The loss of spherical_loss (csrc/ops.cpp) over canonical views, the reduction inside:
// out[r] = (1/V) sum_v value_v[r]; "mean" = mean_r out[r], "sum" = sum_r out[r]. The row state and
// the gradient buffers carry the reduction's weight per row (1/(V B) for a mean, 1/V otherwise), so
// they are the gradients of the op's output. The sums run serially in row order: bitwise the same
// result for any thread count.
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
spherical_loss_forward_cpu(at::TensorList mu, at::TensorList target, at::TensorList kappa, int64_t family,
                           int64_t reduction, double kl_weight, bool with_row_gradient, bool grad_mu,
                           bool grad_target) {
  check_loss_views(mu, target, kappa, family, reduction, kl_weight, at::kCPU);
  const int64_t views = static_cast<int64_t>(mu.size());
  const int64_t rows = mu[0].size(0);
  const RowPass pass{static_cast<int>(family), static_cast<double>(mu[0].size(1)), kl_weight,
                     reduction_row_weight(reduction, views, rows), grad_mu, grad_target};
  const auto double_options = mu[0].options().dtype(at::kDouble);
  at::Tensor row_state = at::empty({with_row_gradient ? views * rows : 0, kRowStateColumns}, double_options);
  std::vector<double> values(static_cast<size_t>(views * rows));
  std::vector<at::Tensor> grads_mu, grads_target;
  row_pass(pass, mu, target, kappa, values.data(), with_row_gradient ? row_state.data_ptr<double>() : nullptr,
           grads_mu, grads_target);

  const auto out_options = mu[0].options().dtype(loss_dtype(mu, kappa));
  at::Tensor loss;
  if (reduction == kReductionNone) {
    at::Tensor per_row = at::empty({rows}, double_options);
    double* out = per_row.data_ptr<double>();
    for (int64_t r = 0; r < rows; ++r) {
      double sum = 0.0;
      for (int64_t v = 0; v < views; ++v) sum += values[v * rows + r];
      out[r] = sum / static_cast<double>(views);
    }
    loss = out_options.dtype() == at::kDouble ? per_row : per_row.to(at::kFloat);
  } else {
    double sum = 0.0;
    for (double value : values) sum += value;
    const double divisor = reduction == kReductionMean ? static_cast<double>(views * rows) : views;
    loss = at::empty({}, out_options);
    if (loss.scalar_type() == at::kDouble) {
      *loss.data_ptr<double>() = sum / divisor;
    } else {
      *loss.data_ptr<float>() = static_cast<float>(sum / divisor);
    }
  }
  return {loss, row_state, grads_mu, grads_target};
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
    at::Tensor out = GradientBufferPool::empty(xv.sizes(), xv.options());
    const int64_t rows = xv.size(0), dim = xv.size(1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xv.scalar_type(), "scaled_row_combination_cpu", [&] {
      const scalar_t* x_ptr = xv.data_ptr<scalar_t>();
      const scalar_t* y_ptr = yv.data_ptr<scalar_t>();
      scalar_t* o_ptr = out.data_ptr<scalar_t>();
      const int64_t x_stride = xv.stride(0), y_stride = yv.stride(0);
      const bool stream = stream_output(3 * static_cast<size_t>(out.nbytes()));  // read x, y; write out
      at::parallel_for(0, rows, row_grain(dim), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t r = row_offset + i;
          row_combination(x_ptr + i * x_stride, y_ptr + i * y_stride, o_ptr + i * dim, dim,
                          s_ptr[r] * cx_ptr[r], s_ptr[r] * cy_ptr[r], stream);
        }
        if (stream) row_streams_fence();
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
  m.impl("spherical_loss_forward", &vissiam::spherical_loss_forward_cpu);
  m.impl("scaled_row_combination", &vissiam::scaled_row_combination_cpu);
  m.impl("normalizer_quantity", &vissiam::normalizer_quantity_cpu);
  m.impl("special_function", &vissiam::special_function_cpu);
}
