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

}  // namespace vissiam
