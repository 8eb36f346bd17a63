// The integer codes and table layouts that cross the boundary between Python and
// the kernels: defined here once. C++ and CUDA include this header; Python
// (vissiam_kernels/_codes.py, which the Triton kernels and the fake kernels use)
// reads the enumerators below from this file at import, so the two cannot differ.
// Keep every enumerator on its own line as `kName = value,`: that is the form it parses.
#pragma once

namespace vissiam {

// The `family` argument of the ops: which likelihood a row's NLL is.
enum Family : int {
  kCosine = 0,          // SimSiam's D(p, z) = -cos(p, z); no concentration
  kVonMisesFisher = 1,  // vMF(mu, kappa)
  kPowerSpherical = 2,  // power spherical(mu, kappa)
};

// The `quantity` argument of normalizer_quantity.
enum Quantity : int {
  kLogNormalizer = 0,
  kLogNormalizerDerivative = 1,        // d/dkappa log C
  kLogNormalizerSecondDerivative = 2,  // d^2/dkappa^2 log C
  kEntropy = 3,
  kKlUniform = 4,
};

// The `reduction` argument of spherical_loss (the strings of the Python API).
enum Reduction : int {
  kReductionNone = 0,
  kReductionMean = 1,
  kReductionSum = 2,
};

// Columns of the (rows, 4) float64 row_state of spherical_nll and row_gradient of
// spherical_loss_forward: per row, dLoss/dmu = mu_coef * mu + cross_coef * target,
// dLoss/dtarget = target_coef * target + cross_coef * mu, and dLoss/dkappa.
enum RowStateColumn : int {
  kMuCoefColumn = 0,
  kTargetCoefColumn = 1,
  kCrossCoefColumn = 2,
  kKappaGradColumn = 3,
  kRowStateColumns = 4,
};

// The output dtype rule of every loss and normalizer op: float64 when any floating
// input (vectors or kappa) is float64, else float32 (float16 / bfloat16 inputs give
// float32 losses: the NLL reaches about -9000 at d = 2048, where bfloat16 resolves
// only +-32). Gradients come back in each input's own dtype. C++: loss_dtype() in
// op_checks.h; Python: vissiam_kernels._codes.loss_dtype.

}  // namespace vissiam
