// spherical_loss: the op behind every public loss, from the user's tensors to one scalar (or one
// value per row), with its autograd here in C++ (as torchvision registers roi_align's), so an eager
// call is one op call and one autograd node: no Python between the public function and the kernel.
//
//   canonical_views   the argument checks, once, with the messages of the Python API (naming p1,
//                     z2, kappa1, ...), and the reshape of (..., D) / kappa forms to (B, D) / (B,)
//   SphericalLoss     the autograd Function; its forward calls spherical_loss_forward below
//                     autograd, its backward hands out the gradients
//   CompositeExplicitAutograd kernels: spherical_loss without autograd (inference mode), and
//                     spherical_loss_forward on devices with no fused kernel (CUDA: per-row op +
//                     ATen reductions; the CPU library registers its fused kernel on the CPU key)
//
// The training path is decided in one place, write_gradients_in_forward():
//   fused (CPU kernels, reduction mean or sum, not float16): the forward writes dOut/dmu while each
//     row is in cache, and backward() hands that buffer out as the gradient: read p, z and write
//     grad p, 3S of traffic per step (S = bytes of one (B, D) tensor). An upstream gradient g != 1
//     (a loss weight, a GradScaler) costs one in-place pass, g * buffer, and stays exact.
//   deferred (everything else): the forward keeps p, z and the per-row coefficients; backward writes
//     g[r] * (mu_coef mu + cross_coef z) in one pass (5S). float16 takes it because a gradient
//     buffer made at the 1/B scale of a mean underflows in float16 where the real upstream (a
//     GradScaler's 2^16/B) would not; reduction "none" because its upstream is per row.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "vissiam/op_checks.h"

namespace vissiam {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ---------------------------------------------------------------- argument checks, once

// "(4, 8)", "(4,)", "()": shapes as the Python API prints them.
std::string shape_string(at::IntArrayRef sizes) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << (sizes.size() == 1 ? ",)" : ")");
  return out.str();
}

struct ViewNames {
  std::string mu, target, kappa;
};

// Three names per view from "p1 z2 kappa1 p2 z1 kappa2"; default mu/target/kappa.
std::vector<ViewNames> parse_names(c10::string_view names, size_t views) {
  std::vector<std::string> words;
  std::istringstream in{std::string(names)};
  for (std::string word; in >> word;) words.push_back(word);
  std::vector<ViewNames> out(views);
  for (size_t v = 0; v < views; ++v) {
    if (words.size() >= 3 * (v + 1)) {
      out[v] = {words[3 * v], words[3 * v + 1], words[3 * v + 2]};
    } else {
      const std::string suffix = views > 1 ? "[" + std::to_string(v) + "]" : "";
      out[v] = {"mu" + suffix, "target" + suffix, "kappa" + suffix};
    }
  }
  return out;
}

void check_floating(const at::Tensor& x, const std::string& name) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), name,
                   " must have a floating dtype (float16, bfloat16, float32, float64); got ",
                   x.scalar_type());
}

// The views in the kernels' form: mu[v], target[v] (B, D) of one dtype per view, kappa[v] (B,).
struct CanonicalViews {
  std::vector<at::Tensor> mu, target, kappa;
  std::vector<int64_t> rows_shape;  // the user's mu.shape[:-1]: the shape of reduction "none"
};

CanonicalViews canonical_views(at::TensorList mu, at::TensorList target, at::TensorList kappa, int64_t family,
                               c10::string_view names_text) {
  VISSIAM_CHECK_ARG(!mu.empty() && mu.size() == target.size(),
                    "mu and target must hold one tensor per view; got ", mu.size(), " and ", target.size());
  VISSIAM_CHECK_ARG(family == kCosine || family == kVonMisesFisher || family == kPowerSpherical,
                    "family must be 0 (cosine), 1 (vMF) or 2 (power spherical); got ", family);
  VISSIAM_CHECK_ARG(family == kCosine ? kappa.empty() : kappa.size() == mu.size(),
                    "kappa must hold one tensor per view (none for the cosine family); got ", kappa.size(),
                    " for ", mu.size(), " views");
  const std::vector<ViewNames> names = parse_names(names_text, mu.size());
  CanonicalViews out;
  out.rows_shape = mu[0].sizes().vec();
  if (!out.rows_shape.empty()) out.rows_shape.pop_back();
  for (size_t v = 0; v < mu.size(); ++v) {
    const ViewNames& name = names[v];
    at::Tensor m = mu[v], t = target[v];
    check_floating(m, name.mu);
    check_floating(t, name.target);
    VISSIAM_CHECK_ARG(m.dim() > 0, name.mu, " must have shape (..., D); got a 0-dim tensor");
    VISSIAM_CHECK_ARG(m.sizes() == t.sizes(), name.mu, " and ", name.target,
                      " must have the same shape (..., D); got ", shape_string(m.sizes()), " and ",
                      shape_string(t.sizes()));
    VISSIAM_CHECK_ARG(m.device() == t.device(), name.mu, " and ", name.target,
                      " must be on the same device; got ", m.device(), " and ", t.device());
    const int64_t dim = m.size(-1);
    VISSIAM_CHECK_ARG(dim >= 2, "the last dimension D of ", name.mu,
                      " must be >= 2 (vectors on the sphere S^(D-1)); got D = ", dim);
    if (v > 0) {
      VISSIAM_CHECK_ARG(m.sizes() == mu[0].sizes() && m.device() == mu[0].device(),
                        "both views must have one shape and device; got ", names[0].mu, " ",
                        shape_string(mu[0].sizes()), " on ", mu[0].device(), " and ", name.mu, " ",
                        shape_string(m.sizes()), " on ", m.device());
    }
    if (m.scalar_type() != t.scalar_type()) {
      const at::ScalarType common = at::promote_types(m.scalar_type(), t.scalar_type());
      m = m.to(common);
      t = t.to(common);
    }
    const at::IntArrayRef rows_shape = m.sizes().slice(0, m.dim() - 1);
    const int64_t rows = c10::multiply_integers(rows_shape);
    out.mu.push_back(m.dim() == 2 ? m : m.reshape({rows, dim}));
    out.target.push_back(t.dim() == 2 ? t : t.reshape({rows, dim}));
    if (family == kCosine) continue;
    const at::Tensor& k = kappa[v];
    check_floating(k, name.kappa);
    VISSIAM_CHECK_ARG(k.device() == m.device(), name.kappa, " must be on the same device as the vectors (",
                      m.device(), "); got ", k.device());
    if (k.dim() == 0) {
      out.kappa.push_back(k.expand({rows}));
    } else if (k.sizes() == rows_shape ||
               (k.dim() == m.dim() && k.size(-1) == 1 && k.sizes().slice(0, k.dim() - 1) == rows_shape)) {
      out.kappa.push_back(k.dim() == 1 ? k : k.reshape({rows}));
    } else {
      std::vector<int64_t> with_one(rows_shape.begin(), rows_shape.end());
      with_one.push_back(1);
      VISSIAM_CHECK_ARG(false, name.kappa, " must hold one concentration per row: shape ",
                        shape_string(rows_shape), " or ", shape_string(with_one), " (or a scalar); got ",
                        shape_string(k.sizes()));
    }
  }
  return out;
}

// ---------------------------------------------------------------- the ops this file calls

using LossForwardOutputs = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>;

LossForwardOutputs call_loss_forward(const CanonicalViews& views, int64_t family, int64_t reduction,
                                     double kl_weight, bool with_row_gradient, bool grad_mu, bool grad_target) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vissiam_kernels::spherical_loss_forward", "")
                             .typed<LossForwardOutputs(at::TensorList, at::TensorList, at::TensorList, int64_t,
                                                       int64_t, double, bool, bool, bool)>();
  return op.call(views.mu, views.target, views.kappa, family, reduction, kl_weight, with_row_gradient, grad_mu,
                 grad_target);
}

std::vector<at::Tensor> call_scaled_row_combination(const at::Tensor& scale, const at::Tensor& coef_x,
                                                    const at::Tensor& coef_y, at::TensorList x, at::TensorList y) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vissiam_kernels::scaled_row_combination", "")
                             .typed<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                            const at::Tensor&, at::TensorList, at::TensorList)>();
  return op.call(scale, coef_x, coef_y, x, y);
}

// ---------------------------------------------------------------- the training path

// The one rule (see the file's header): write the input gradients in the forward pass, or defer them.
bool write_gradients_in_forward(const at::Tensor& mu, int64_t reduction) {
  return mu.device().is_cpu() && mu.scalar_type() != at::kHalf && reduction != kReductionNone;
}

// Whether this call runs under tracing (torch.compile / AOTAutograd / opcheck's fake tensors): then
// nothing may be modified in place behind the tracer's back, and values cannot be read.
bool traced(const at::Tensor& t) {
  const c10::DispatchKeySet keys = t.key_set();
  return keys.has(c10::DispatchKey::Python) || keys.has(c10::DispatchKey::Functionalize) || t.is_meta();
}

// The upstream gradient of a reduced loss as a number, read without a dispatch (eager CPU float32 /
// float64, the usual loss.backward()); nullopt elsewhere (CUDA: reading it would synchronize).
std::optional<double> upstream_value(const at::Tensor& g, int64_t reduction) {
  if (reduction == kReductionNone || !g.device().is_cpu() || g.numel() != 1 || traced(g)) return std::nullopt;
  if (g.scalar_type() == at::kFloat) return static_cast<double>(*g.const_data_ptr<float>());
  if (g.scalar_type() == at::kDouble) return *g.const_data_ptr<double>();
  return std::nullopt;
}

// g * row_gradient[first_row + r, kKappaGradColumn] for the rows of one view, written straight into
// a tensor of kappa's dtype and shape (summed for a 0-dim kappa): no ATen op on the hot path.
at::Tensor kappa_gradient_cpu(const at::Tensor& row_gradient, int64_t first_row, int64_t rows, double g,
                              at::ScalarType dtype, at::IntArrayRef shape) {
  const double* state = row_gradient.const_data_ptr<double>() + first_row * kRowStateColumns + kKappaGradColumn;
  at::Tensor out = at::empty(shape, row_gradient.options().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "kappa_gradient_cpu", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    if (shape.empty()) {
      double sum = 0.0;
      for (int64_t r = 0; r < rows; ++r) sum += g * state[r * kRowStateColumns];
      o[0] = static_cast<scalar_t>(sum);
    } else {
      for (int64_t r = 0; r < rows; ++r) o[r] = static_cast<scalar_t>(g * state[r * kRowStateColumns]);
    }
  });
  return out;
}

class SphericalLoss : public torch::autograd::Function<SphericalLoss> {
 public:
  static at::Tensor forward(AutogradContext* ctx, at::TensorList mu, at::TensorList target, at::TensorList kappa,
                            int64_t family, int64_t reduction, double kl_weight, c10::string_view names) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    CanonicalViews views = canonical_views(mu, target, kappa, family, names);
    const bool needs_mu = std::any_of(mu.begin(), mu.end(), [](const at::Tensor& t) { return t.requires_grad(); });
    const bool needs_target =
        std::any_of(target.begin(), target.end(), [](const at::Tensor& t) { return t.requires_grad(); });
    const bool fused = (needs_mu || needs_target) && write_gradients_in_forward(views.mu[0], reduction);
    auto [loss, row_gradient, grad_mu, grad_target] =
        call_loss_forward(views, family, reduction, kl_weight, true, fused && needs_mu, fused && needs_target);

    ctx->saved_data["views"] = static_cast<int64_t>(mu.size());
    ctx->saved_data["fused"] = fused;
    ctx->saved_data["needs_mu"] = needs_mu;
    ctx->saved_data["needs_target"] = needs_target;
    ctx->saved_data["reduction"] = reduction;
    // The deferred path keeps the canonical views (views of the inputs, no copies) for backward.
    std::vector<at::Tensor> to_save{row_gradient};
    if (!fused && (needs_mu || needs_target)) {
      to_save.insert(to_save.end(), views.mu.begin(), views.mu.end());
      to_save.insert(to_save.end(), views.target.begin(), views.target.end());
    }
    ctx->save_for_backward(to_save);
    ctx->saved_data["grad_mu"] = c10::List<at::Tensor>(grad_mu);
    ctx->saved_data["grad_target"] = c10::List<at::Tensor>(grad_target);
    ctx->saved_data["mu_shape"] = mu[0].sizes().vec();  // every view's (checked)
    std::vector<int64_t> kappa_shapes;  // per view: its dim, then its sizes
    for (const at::Tensor& k : kappa) {
      kappa_shapes.push_back(k.dim());
      kappa_shapes.insert(kappa_shapes.end(), k.sizes().begin(), k.sizes().end());
    }
    ctx->saved_data["kappa_shapes"] = kappa_shapes;
    std::vector<int64_t> kappa_dtypes;
    for (const at::Tensor& k : kappa) kappa_dtypes.push_back(static_cast<int64_t>(k.scalar_type()));
    ctx->saved_data["kappa_dtypes"] = kappa_dtypes;
    return reduction == kReductionNone ? loss.view(views.rows_shape) : loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor& grad = grad_outputs[0];
    const int64_t views = ctx->saved_data["views"].toInt();
    const std::vector<int64_t> kappa_dtypes = ctx->saved_data["kappa_dtypes"].toIntVector();
    const int64_t n_kappa = static_cast<int64_t>(kappa_dtypes.size());
    // one gradient per input: mu (V), target (V), kappa (V or 0), then family, reduction, kl_weight, names
    variable_list out(2 * views + n_kappa + 4);
    if (!grad.defined()) return out;
    const bool eager = !traced(grad);
    TORCH_CHECK_NOT_IMPLEMENTED(!(eager && at::GradMode::is_enabled()),
                                "double backward (create_graph=True) through the losses of vissiam_kernels is not "
                                "supported; the normalizers (vmf_log_normalizer, ...) are twice differentiable");
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& row_gradient = saved[0];
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    const int64_t rows = row_gradient.size(0) / views;
    const std::optional<double> g = upstream_value(grad, reduction);
    // Each row's upstream gradient as a (V B,) tensor, where a kernel or ATen needs it.
    const auto upstream_rows = [&]() {
      return reduction == kReductionNone ? grad.reshape({rows}).to(at::kDouble).repeat({views})
                                         : grad.to(at::kDouble).expand({views * rows});
    };

    std::vector<at::Tensor> grad_mu, grad_target;
    if (ctx->saved_data["fused"].toBool()) {
      // The buffers hold dOut/dinput: scaled by g unless g == 1. In place when this is their last
      // use (eager, graph freed); otherwise a copy, so that a gradient handed out while the graph
      // is kept never changes later.
      const bool last_use = eager && !torch::autograd::get_current_graph_task_keep_graph();
      for (const char* key : {"grad_mu", "grad_target"}) {
        std::vector<at::Tensor> buffers = ctx->saved_data[key].toTensorVector();
        if (last_use) ctx->saved_data.erase(key);  // p.grad may then take the buffer itself
        for (at::Tensor& b : buffers) {
          if (last_use && g == 1.0) continue;
          const at::Tensor factor = grad.to(b.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
          b = last_use ? b.mul_(factor) : (b * factor).to(b.scalar_type());
        }
        (key[5] == 'm' ? grad_mu : grad_target) = std::move(buffers);
      }
    } else if (saved.size() > 1) {
      const std::vector<at::Tensor> mu(saved.begin() + 1, saved.begin() + 1 + views);
      const std::vector<at::Tensor> target(saved.begin() + 1 + views, saved.begin() + 1 + 2 * views);
      const at::Tensor upstream = upstream_rows();
      const at::Tensor cross = row_gradient.select(1, kCrossCoefColumn);
      if (ctx->saved_data["needs_mu"].toBool()) {
        grad_mu = call_scaled_row_combination(upstream, row_gradient.select(1, kMuCoefColumn), cross, mu, target);
      }
      if (ctx->saved_data["needs_target"].toBool()) {
        grad_target =
            call_scaled_row_combination(upstream, row_gradient.select(1, kTargetCoefColumn), cross, target, mu);
      }
    }
    const std::vector<int64_t> mu_shape = ctx->saved_data["mu_shape"].toIntVector();
    for (int64_t v = 0; v < views; ++v) {
      const auto shaped = [&](const at::Tensor& g) { return g.sizes() == mu_shape ? g : g.view(mu_shape); };
      if (v < static_cast<int64_t>(grad_mu.size())) out[v] = shaped(grad_mu[v]);
      if (v < static_cast<int64_t>(grad_target.size())) out[views + v] = shaped(grad_target[v]);
    }
    const std::vector<int64_t> kappa_shapes = ctx->saved_data["kappa_shapes"].toIntVector();
    at::Tensor per_row;
    for (int64_t v = 0, at_shape = 0; v < n_kappa; ++v) {
      const auto first = kappa_shapes.begin() + at_shape + 1;
      const std::vector<int64_t> shape(first, first + kappa_shapes[at_shape]);
      at_shape += 1 + static_cast<int64_t>(shape.size());
      if (!ctx->needs_input_grad(2 * views + v)) continue;
      const auto dtype = static_cast<at::ScalarType>(kappa_dtypes[v]);
      if (g) {
        out[2 * views + v] = kappa_gradient_cpu(row_gradient, v * rows, rows, *g, dtype, shape);
        continue;
      }
      if (!per_row.defined()) per_row = upstream_rows() * row_gradient.select(1, kKappaGradColumn);
      const at::Tensor rows_gradient = per_row.narrow(0, v * rows, rows);
      out[2 * views + v] = (shape.empty() ? rows_gradient.sum() : rows_gradient.reshape(shape)).to(dtype);
    }
    return out;
  }
};

// Without autograd (no_grad, inference mode, or called below it): the loss only.
at::Tensor spherical_loss_no_grad(at::TensorList mu, at::TensorList target, at::TensorList kappa, int64_t family,
                                  int64_t reduction, double kl_weight, c10::string_view names) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const CanonicalViews views = canonical_views(mu, target, kappa, family, names);
  const at::Tensor loss =
      std::get<0>(call_loss_forward(views, family, reduction, kl_weight, false, false, false));
  return reduction == kReductionNone ? loss.view(views.rows_shape) : loss;
}

at::Tensor spherical_loss_autograd(at::TensorList mu, at::TensorList target, at::TensorList kappa, int64_t family,
                                   int64_t reduction, double kl_weight, c10::string_view names) {
  const auto requires_grad = [](at::TensorList list) {
    return std::any_of(list.begin(), list.end(), [](const at::Tensor& t) { return t.requires_grad(); });
  };
  // No graph to record (no_grad, or nothing requires a gradient): no node, and no gradient buffers.
  if (!at::GradMode::is_enabled() || !(requires_grad(mu) || requires_grad(target) || requires_grad(kappa))) {
    return spherical_loss_no_grad(mu, target, kappa, family, reduction, kl_weight, names);
  }
  return SphericalLoss::apply(mu, target, kappa, family, reduction, kl_weight, names);
}

// spherical_loss_forward where no fused kernel is registered (CUDA): the per-row op, then ATen.
LossForwardOutputs spherical_loss_forward_composite(at::TensorList mu, at::TensorList target, at::TensorList kappa,
                                                    int64_t family, int64_t reduction, double kl_weight,
                                                    bool with_row_gradient, bool grad_mu, bool grad_target) {
  static const auto nll_op = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("vissiam_kernels::spherical_nll", "")
                                 .typed<std::tuple<at::Tensor, at::Tensor>(at::TensorList, at::TensorList,
                                                                           at::TensorList, int64_t)>();
  static const auto quantity_op = c10::Dispatcher::singleton()
                                      .findSchemaOrThrow("vissiam_kernels::normalizer_quantity", "")
                                      .typed<at::Tensor(const at::Tensor&, int64_t, int64_t, int64_t)>();
  check_loss_views(mu, target, kappa, family, reduction, kl_weight, mu[0].device().type());
  const int64_t views = static_cast<int64_t>(mu.size()), rows = mu[0].size(0), dim = mu[0].size(1);
  auto [nll, row_state] = nll_op.call(mu, target, kappa, family);
  at::Tensor values = nll.to(at::kDouble);
  at::Tensor state = row_state.clone();
  if (kl_weight != 0.0) {
    const at::Tensor k = at::cat(kappa).to(at::kDouble);
    values = values + kl_weight * quantity_op.call(k, dim, family, kKlUniform);
    state.select(1, kKappaGradColumn)
        .sub_(kl_weight * k * quantity_op.call(k, dim, family, kLogNormalizerSecondDerivative));
  }
  state.mul_(reduction_row_weight(reduction, views, rows));
  const at::Tensor per_row = values.view({views, rows}).mean(0);
  at::Tensor loss = reduction == kReductionNone ? per_row
                    : reduction == kReductionMean ? per_row.mean()
                                                  : per_row.sum();
  loss = loss.to(loss_dtype(mu, kappa));
  std::vector<at::Tensor> out_mu, out_target;
  const at::Tensor ones = at::ones({views * rows}, state.options());
  const at::Tensor cross = state.select(1, kCrossCoefColumn);
  if (grad_mu) out_mu = call_scaled_row_combination(ones, state.select(1, kMuCoefColumn), cross, mu, target);
  if (grad_target) {
    out_target = call_scaled_row_combination(ones, state.select(1, kTargetCoefColumn), cross, target, mu);
  }
  return {loss, with_row_gradient ? state : state.narrow(0, 0, 0), out_mu, out_target};
}

}  // namespace
}  // namespace vissiam

TORCH_LIBRARY_IMPL(vissiam_kernels, Autograd, m) {
  m.impl("spherical_loss", &vissiam::spherical_loss_autograd);
}

TORCH_LIBRARY_IMPL(vissiam_kernels, CompositeExplicitAutograd, m) {
  m.impl("spherical_loss", &vissiam::spherical_loss_no_grad);
  m.impl("spherical_loss_forward", &vissiam::spherical_loss_forward_composite);
}
