// Op schemas of the vissiam_kernels namespace. Implementations register per
// dispatch key (csrc/cpu for CPU, csrc/cuda for CUDA); fake tensors and
// autograd are registered from Python (vissiam_kernels/_ops.py).
#include <torch/library.h>

TORCH_LIBRARY(vissiam_kernels, m) {
  // Per-row negative log-likelihood of target[v][i] under the distribution
  // `family` (0 cosine, 1 vMF, 2 power spherical) centred on mu[v][i] with
  // concentration kappa[v][i], for every view v, rows concatenated:
  //   mu[v], target[v]: (B_v, D);  kappa[v]: (B_v,) (empty list for cosine).
  // Returns nll: (sum B_v,) in float32 (float64 if any input is float64) and
  // row_state: (sum B_v, 4) float64 = [mu_coef, target_coef, cross_coef,
  // dnll_dkappa], from which the gradients are formed without a second
  // reduction pass (see spherical_math.h, RowGradientCoefficients).
  m.def("spherical_nll(Tensor[] mu, Tensor[] target, Tensor[] kappa, int family)"
        " -> (Tensor nll, Tensor row_state)");
  // out[v][i, :] = scale[i] * (coef_x[i] * x[v][i, :] + coef_y[i] * y[v][i, :]),
  // rows i numbered across views; out[v] has x[v]'s shape and dtype.
  m.def("scaled_row_combination(Tensor scale, Tensor coef_x, Tensor coef_y,"
        " Tensor[] x, Tensor[] y) -> Tensor[]");
  // Elementwise quantity of the normalizer of `family` (1 vMF, 2 power
  // spherical) in dimension `dim`: 0 log C, 1 dlogC/dkappa, 2 d2logC/dkappa2,
  // 3 entropy, 4 KL to the uniform distribution. Output: kappa's shape, float32
  // (float64 for float64 kappa).
  m.def("normalizer_quantity(Tensor kappa, int dim, int family, int quantity) -> Tensor");
  // The minimum-traffic training form of spherical_nll (CPU C++ and Triton; see
  // vissiam_kernels/_fused_training.py): the same outputs, and in the same pass
  // over the rows the input gradients for the upstream gradient grad_weight per
  // row: grad_mu[v] = grad_weight * dNLL/dmu[v] (if grad_mu), the same for
  // target; applied (sum B_v,) float64 records the weight each row holds.
  m.def("spherical_nll_with_grad(Tensor[] mu, Tensor[] target, Tensor[] kappa, int family,"
        " float grad_weight, bool grad_mu, bool grad_target)"
        " -> (Tensor nll, Tensor row_state, Tensor[] grad_mu, Tensor[] grad_target, Tensor applied)");
  // In place: every row r of the gradient buffers (rows numbered across views)
  // whose applied[r] differs from upstream[r] is scaled by upstream[r] / applied[r],
  // and applied[r] becomes upstream[r]; rows already right are not touched.
  m.def("rescale_rows_(Tensor(a!)[] grad_mu, Tensor(b!)[] grad_target, Tensor(c!) applied,"
        " Tensor upstream) -> ()");
  // The header's special functions elementwise on float64 tensors a, b (same
  // shape), for testing the shared math through the CPU build: name is one of
  // lgamma_difference(a, b), digamma_difference(a, b), trigamma_difference(a, b),
  // log2_plus_digamma_difference(a, b), log_bessel_i(nu=a, x=b),
  // log_bessel_i_scaled(nu=a, x=b), bessel_ratio(nu=a, x=b), bessel_ratio_complement(nu=a, x=b).
  m.def("special_function(str name, Tensor a, Tensor b) -> Tensor");
}
