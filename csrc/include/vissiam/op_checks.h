// Argument checks at the C++ entry of the ops, shared by the CPU and CUDA
// implementations (host code only). Messages name the argument and what was
// expected; TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface as Python ValueError / TypeError.
#pragma once

#include <ATen/ATen.h>

#include "vissiam/spherical_math.h"

#define VISSIAM_CHECK_ARG(cond, ...) TORCH_CHECK_VALUE(cond, __VA_ARGS__)

// Every tensor an op reads must sit on the device of its first input; the
// kernels dereference raw pointers, so a tensor elsewhere would be a crash.
#define VISSIAM_CHECK_ON_DEVICE(tensor_, device_, ...)                                     \
  VISSIAM_CHECK_ARG((tensor_).device() == (device_), __VA_ARGS__, " must be on ", (device_), \
                    " (the device of the other inputs); got ", (tensor_).device())

namespace vissiam {

// The views of spherical_nll: mu[v], target[v] of one shape (B_v, D), D >= 2,
// one floating dtype per view, kappa[v] of shape (B_v,) (none for cosine), all on
// one device of type `device_type`.
inline void check_nll_views(at::TensorList mu, at::TensorList target, at::TensorList kappa,
                            int64_t family, at::DeviceType device_type) {
  VISSIAM_CHECK_ARG(family == kCosine || family == kVonMisesFisher || family == kPowerSpherical,
                    "family must be 0 (cosine), 1 (vMF) or 2 (power spherical); got ", family);
  VISSIAM_CHECK_ARG(!mu.empty(), "mu must hold at least one view");
  VISSIAM_CHECK_ARG(mu.size() == target.size(),
                    "mu and target must hold the same number of views; got ", mu.size(), " and ",
                    target.size());
  VISSIAM_CHECK_ARG(family == kCosine ? kappa.empty() : kappa.size() == mu.size(),
                    "kappa must hold one tensor per view (none for the cosine family); got ",
                    kappa.size(), " for ", mu.size(), " views");
  const at::Device device = mu[0].device();
  VISSIAM_CHECK_ARG(device.type() == device_type, "mu[0] must be a ", device_type,
                    " tensor; got ", device);
  const int64_t dim = mu[0].dim() == 2 ? mu[0].size(1) : -1;
  for (size_t v = 0; v < mu.size(); ++v) {
    VISSIAM_CHECK_ON_DEVICE(mu[v], device, "mu[", v, "]");
    VISSIAM_CHECK_ON_DEVICE(target[v], device, "target[", v, "]");
    VISSIAM_CHECK_ARG(mu[v].dim() == 2 && mu[v].size(1) == dim, "mu[", v,
                      "] must have shape (B, ", dim, "); got ", mu[v].sizes());
    VISSIAM_CHECK_ARG(target[v].sizes() == mu[v].sizes(), "target[", v, "] must have mu[", v,
                      "]'s shape ", mu[v].sizes(), "; got ", target[v].sizes());
    VISSIAM_CHECK_ARG(target[v].scalar_type() == mu[v].scalar_type(), "target[", v,
                      "] must have mu's dtype ", mu[v].scalar_type(), "; got ",
                      target[v].scalar_type());
    TORCH_CHECK_TYPE(at::isFloatingType(mu[v].scalar_type()), "mu[", v,
                     "] must be a floating point tensor; got ", mu[v].scalar_type());
    if (family != kCosine) {
      VISSIAM_CHECK_ON_DEVICE(kappa[v], device, "kappa[", v, "]");
      VISSIAM_CHECK_ARG(kappa[v].dim() == 1 && kappa[v].size(0) == mu[v].size(0), "kappa[", v,
                        "] must have shape (", mu[v].size(0), ",); got ", kappa[v].sizes());
      TORCH_CHECK_TYPE(at::isFloatingType(kappa[v].scalar_type()), "kappa[", v,
                       "] must be a floating point tensor; got ", kappa[v].scalar_type());
    }
  }
  VISSIAM_CHECK_ARG(dim >= 2, "the dimension D of mu and target must be >= 2; got ", dim);
}

// The output dtype rule of op_codes.h: float64 when any vector or kappa is float64, else float32.
inline at::ScalarType loss_dtype(at::TensorList mu, at::TensorList kappa) {
  for (const at::Tensor& t : mu) if (t.scalar_type() == at::kDouble) return at::kDouble;
  for (const at::Tensor& t : kappa) if (t.scalar_type() == at::kDouble) return at::kDouble;
  return at::kFloat;
}

// dOutput/dvalue[r] of spherical_loss for each of the V * B row values: out[r] = (1/V) sum_v value_v[r],
// then the mean over B rows or the sum.
inline double reduction_row_weight(int64_t reduction, int64_t views, int64_t rows) {
  const double per_view = 1.0 / static_cast<double>(views);
  return reduction == kReductionMean ? per_view / static_cast<double>(rows) : per_view;
}

// The canonical views of spherical_loss_forward: those of spherical_nll, all with one row count (the
// views are averaged row by row), a known reduction and a finite kl_weight >= 0 (0 for cosine).
inline void check_loss_views(at::TensorList mu, at::TensorList target, at::TensorList kappa, int64_t family,
                             int64_t reduction, double kl_weight, at::DeviceType device_type) {
  check_nll_views(mu, target, kappa, family, device_type);
  for (size_t v = 1; v < mu.size(); ++v) {
    VISSIAM_CHECK_ARG(mu[v].size(0) == mu[0].size(0), "every view must have ", mu[0].size(0),
                      " rows (the views are averaged row by row); view ", v, " has ", mu[v].size(0));
  }
  VISSIAM_CHECK_ARG(reduction == kReductionNone || reduction == kReductionMean || reduction == kReductionSum,
                    "reduction must be 0 (none), 1 (mean) or 2 (sum); got ", reduction);
  VISSIAM_CHECK_ARG(std::isfinite(kl_weight) && kl_weight >= 0.0, "kl_weight must be finite and >= 0; got ",
                    kl_weight);
  VISSIAM_CHECK_ARG(family != kCosine || kl_weight == 0.0,
                    "kl_weight needs a distribution; distribution='none' has no KL term");
}

}  // namespace vissiam
