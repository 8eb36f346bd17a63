// Op schemas of the vissiam_kernels namespace. Implementations register per
// dispatch key (csrc/cpu for CPU, csrc/cuda for CUDA). spherical_loss, the op of
// the public losses, has its autograd in C++ (csrc/loss_autograd.cpp); the other
// ops' autograd and every op's fake kernel are registered from Python
// (vissiam_kernels/_ops.py). Codes (family, quantity, reduction) and the row-state
// columns: csrc/include/vissiam/op_codes.h.
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
  // The loss of the public API in one call (autograd in csrc/loss_autograd.cpp):
  //   out[r] = (1/V) sum_v [NLL(target[v][r] | mu[v][r], kappa[v][r]) + kl_weight KL(q_v[r] || U)]
  // reduced by `reduction` (0 none: out, of the rows' shape; 1 mean; 2 sum). mu[v], target[v]:
  // (..., D) as the user gave them (normalized inside, F.normalize semantics; promoted to one
  // dtype); kappa[v]: the rows' shape, that shape + (1,), or 0-dim (one for every row); no kappa
  // for the cosine family. All views share one shape. `names` names the arguments in errors:
  // three per view ("mu target kappa", "p1 z2 kappa1 p2 z1 kappa2"). Output dtype: op_codes.h.
  m.def("spherical_loss(Tensor[] mu, Tensor[] target, Tensor[] kappa, int family, int reduction,"
        " float kl_weight, str names) -> Tensor");
  // The same loss over canonical views (mu[v], target[v]: (B, D); kappa[v]: (B,)), and per row the
  // gradient coefficients of the output (row_gradient: (V B, 4) float64, RowStateColumn order,
  // the reduction's weight included; (0, 4) unless with_row_gradient). With grad_mu / grad_target it
  // also writes, in the same pass over the rows, the input gradients of the output:
  // grad_mu[v] = dOut/dmu[v], (B, D) in mu's dtype.
  m.def("spherical_loss_forward(Tensor[] mu, Tensor[] target, Tensor[] kappa, int family, int reduction,"
        " float kl_weight, bool with_row_gradient, bool grad_mu, bool grad_target)"
        " -> (Tensor loss, Tensor row_gradient, Tensor[] grad_mu, Tensor[] grad_target)");
  // The header's special functions elementwise on float64 tensors a, b (same
  // shape), for testing the shared math through the CPU build: name is one of
  // lgamma_difference(a, b), digamma_difference(a, b), trigamma_difference(a, b),
  // log2_plus_digamma_difference(a, b), log_bessel_i(nu=a, x=b),
  // log_bessel_i_scaled(nu=a, x=b), bessel_ratio(nu=a, x=b), bessel_ratio_complement(nu=a, x=b).
  m.def("special_function(str name, Tensor a, Tensor b) -> Tensor");
  // The sampling transform of the spherical distributions (csrc/cpu/sphere_sampling_cpu.cpp; the
  // reference is vissiam_kernels/sampling_reference.py): per row, x = H [t, s noise/|noise|] with H the
  // Householder reflection taking e1 to loc/max(|loc|, eps) (H = I at loc/|loc| = e1 exactly).
  //   loc: (N, D), D >= 2, floating; t, s: (N,) float64; noise: (N, D-1) in loc's dtype;
  //   x: (N, D) in loc's dtype. Arithmetic in float64. The noise gets no gradient.
  m.def("sphere_sample_transform(Tensor loc, Tensor t, Tensor s, Tensor noise) -> Tensor");
  // Its pullback for grad_x (N, D) in loc's dtype: grad_loc (N, D) in loc's dtype, grad_t and grad_s
  // (N,) float64.
  m.def("sphere_sample_transform_backward(Tensor grad_x, Tensor loc, Tensor t, Tensor s, Tensor noise)"
        " -> (Tensor grad_loc, Tensor grad_t, Tensor grad_s)");
  // The same transform with the noise drawn inside the kernel (csrc/cpu/philox_normal.inc): element
  // (i, j) of the (N, D-1) noise is a Box-Muller normal of Philox4x32-10 at counter (j/4, i, offset),
  // key = seed[0]; seed: (2,) int64 (key, offset) on loc's device. The backward draws it again.
  m.def("sphere_sample_seeded(Tensor loc, Tensor t, Tensor s, Tensor seed) -> Tensor");
  m.def("sphere_sample_seeded_backward(Tensor grad_x, Tensor loc, Tensor t, Tensor s, Tensor seed)"
        " -> (Tensor grad_loc, Tensor grad_t, Tensor grad_s)");
  // The noise those ops draw: (rows, cols) in dtype, on seed's device.
  m.def("sphere_sample_noise(Tensor seed, int rows, int cols, ScalarType dtype) -> Tensor");
  // d theta / d kappa of sampled angles at fixed CDF (the implicit reparameterization gradient of
  // the spherical distributions; csrc/include/vissiam/angle_law.h): theta, kappa (N,) float64,
  // family 1 (vMF) or 2 (power spherical), dim = D; out (N,) float64, <= 0. vectorized: SIMD lanes
  // where the CPU has them (false: one node at a time; the same values to rounding). CPU only (GPUs
  // run the reference, vissiam_kernels/distributions/_angle_law.py).
  m.def("angle_kappa_derivative(Tensor theta, Tensor kappa, int dim, int family, bool vectorized=True) -> Tensor");
}
