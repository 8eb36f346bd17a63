// Per-row math of the spherical likelihoods: log-normalizers, their kappa
// derivatives, entropies, and the negative log-likelihood of one row given
// c = cos(mu, x) and kappa. Double precision, __host__ __device__.
//
// d = ambient dimension (the sphere is S^{d-1}), c = cos(mu, x).
// Power spherical (De Cao & Aziz 2020), beta = (d-1)/2, alpha = beta + kappa:
//   log C_PS = -[(alpha+beta) log 2 + beta log pi + lgamma(alpha) - lgamma(alpha+beta)]
//   NLL_PS   = -log C_PS - kappa log1p(c)
// von Mises-Fisher, nu = d/2 - 1:
//   log C_vMF = nu log kappa - (nu+1) log(2 pi) - log I_nu(kappa)
//   NLL_vMF   = -log C_vMF - kappa c
// Both: entropy H = -log C + kappa dlogC/dkappa, KL(q || uniform) = log|S^{d-1}| - H.
#pragma once

#include "vissiam/op_codes.h"
#include "vissiam/special_functions.h"

namespace vissiam {

// F.normalize's eps: x / max(|x|, eps).
constexpr double kNormalizeEps = 1e-12;

// The power spherical density vanishes at the antipode (c = -1), where
// log1p(c) = -inf. 1 + c is floored here so that antipodal targets give the
// finite NLL -log C + kappa * 27.63 (and 0 for kappa = 0) with zero gradient
// to c; the floor lies far below what float32 vectors can resolve.
constexpr double kPowerSphericalOnePlusCosFloor = 1e-12;

// log |S^{d-1}| = log 2 + (d/2) log pi - lgamma(d/2).
VISSIAM_HD double log_sphere_area(double dim) {
  return kLog2 + 0.5 * dim * kLogPi - ::lgamma(0.5 * dim);
}

VISSIAM_HD double power_spherical_log_normalizer(double kappa, double dim) {
  const double beta = 0.5 * (dim - 1.0);
  const double alpha = beta + kappa;
  return -((alpha + beta) * kLog2 + beta * kLogPi + lgamma_difference(alpha, beta));
}

VISSIAM_HD double power_spherical_dlog_normalizer(double kappa, double dim) {
  const double beta = 0.5 * (dim - 1.0);
  return -log2_plus_digamma_difference(beta + kappa, beta);
}

VISSIAM_HD double power_spherical_d2log_normalizer(double kappa, double dim) {
  const double beta = 0.5 * (dim - 1.0);
  return -trigamma_difference(beta + kappa, beta);
}

VISSIAM_HD double vmf_log_normalizer(double kappa, double dim) {
  const double nu = 0.5 * dim - 1.0;
  return -(nu + 1.0) * kLog2Pi - log_bessel_i_scaled(nu, kappa);
}

// d/dkappa log C_vMF = -A_d(kappa) = -I_{d/2}(kappa) / I_{d/2-1}(kappa).
VISSIAM_HD double vmf_dlog_normalizer(double kappa, double dim) {
  return -bessel_ratio(0.5 * dim - 1.0, kappa);
}

// A'(kappa) = 1 - A^2 - (d-1) A / kappa, and A'(0) = 1/d. Where A is near 1 the
// terms cancel to O(1/kappa^2); there it is evaluated from q = 1 - A, computed
// to full relative precision, as q (2 - q) - (d-1)(1 - q)/kappa.
VISSIAM_HD double vmf_d2log_normalizer(double kappa, double dim) {
  if (kappa == 0.0) return -1.0 / dim;
  const double nu = 0.5 * dim - 1.0;
  const double q = bessel_ratio_complement(nu, kappa);
  if (q < 0.5) return -(q * (2.0 - q) - (dim - 1.0) * (1.0 - q) / kappa);
  const double ratio = bessel_ratio(nu, kappa);
  return -(1.0 - ratio * ratio - (dim - 1.0) * ratio / kappa);
}

VISSIAM_HD double log_normalizer(int family, double kappa, double dim) {
  return family == kPowerSpherical ? power_spherical_log_normalizer(kappa, dim)
                                   : vmf_log_normalizer(kappa, dim);
}

VISSIAM_HD double dlog_normalizer(int family, double kappa, double dim) {
  return family == kPowerSpherical ? power_spherical_dlog_normalizer(kappa, dim)
                                   : vmf_dlog_normalizer(kappa, dim);
}

VISSIAM_HD double d2log_normalizer(int family, double kappa, double dim) {
  return family == kPowerSpherical ? power_spherical_d2log_normalizer(kappa, dim)
                                   : vmf_d2log_normalizer(kappa, dim);
}

// Any of the Quantity codes for one kappa.
VISSIAM_HD double normalizer_quantity(int family, int quantity, double kappa, double dim) {
  switch (quantity) {
    case kLogNormalizer:
      return log_normalizer(family, kappa, dim);
    case kLogNormalizerDerivative:
      return dlog_normalizer(family, kappa, dim);
    case kLogNormalizerSecondDerivative:
      return d2log_normalizer(family, kappa, dim);
    default: {
      double log_c, dlog_c;
      if (family == kPowerSpherical) {
        log_c = power_spherical_log_normalizer(kappa, dim);
        dlog_c = power_spherical_dlog_normalizer(kappa, dim);
      } else {  // one Bessel recurrence for both
        const double nu = 0.5 * dim - 1.0;
        const LogBesselAndRatio bessel = log_bessel_i_scaled_and_ratio(nu, kappa);
        log_c = -(nu + 1.0) * kLog2Pi - bessel.log_scaled;
        dlog_c = -bessel.ratio;
      }
      const double entropy = -log_c + (kappa == 0.0 ? 0.0 : kappa * dlog_c);
      return quantity == kEntropy ? entropy : log_sphere_area(dim) - entropy;
    }
  }
}

struct RowLoss {
  double nll;          // negative log-likelihood of the row
  double dnll_dcos;    // d NLL / d c
  double dnll_dkappa;  // d NLL / d kappa
};

// NLL of one row. For kCosine (SimSiam's D(p, z)) the "NLL" is -c and kappa is unused.
VISSIAM_HD RowLoss row_loss(int family, double cos, double kappa, double dim) {
  RowLoss out;
  if (family == kCosine) {
    out.nll = -cos;
    out.dnll_dcos = -1.0;
    out.dnll_dkappa = 0.0;
  } else if (family == kPowerSpherical) {
    const double one_plus_cos = 1.0 + cos;
    const bool floored = !(one_plus_cos > kPowerSphericalOnePlusCosFloor);
    const double log1p_cos = ::log(floored ? kPowerSphericalOnePlusCosFloor : one_plus_cos);
    out.nll = -power_spherical_log_normalizer(kappa, dim) - kappa * log1p_cos;
    out.dnll_dcos = floored ? 0.0 : -kappa / one_plus_cos;
    out.dnll_dkappa = -power_spherical_dlog_normalizer(kappa, dim) - log1p_cos;
  } else {
    // -log C_vMF and -dlogC/dkappa = A_d(kappa) from one Bessel recurrence
    const double nu = 0.5 * dim - 1.0;
    const LogBesselAndRatio bessel = log_bessel_i_scaled_and_ratio(nu, kappa);
    out.nll = (nu + 1.0) * kLog2Pi + bessel.log_scaled - kappa * cos;
    out.dnll_dcos = -kappa;
    out.dnll_dkappa = bessel.ratio - cos;
  }
  return out;
}

// Per-row coefficients of the input gradients. With inv_m = 1/max(|mu|, eps),
// inv_t = 1/max(|t|, eps) and c = (mu . t) inv_m inv_t (F.normalize semantics),
//   dc/dmu = inv_m inv_t t - [|mu| > eps] c inv_m^2 mu
// (inside the eps ball the normalization is linear: no projection term), so
//   dNLL/dmu     = mu_coef * mu + cross_coef * t
//   dNLL/dtarget = target_coef * t + cross_coef * mu.
struct RowGradientCoefficients {
  double mu_coef;
  double target_coef;
  double cross_coef;
};

struct RowDots {
  double mu_mu;
  double target_target;
  double mu_target;
};

VISSIAM_HD double inverse_norm(double squared_norm) {
  const double norm = ::sqrt(squared_norm);
  return 1.0 / (norm > kNormalizeEps ? norm : kNormalizeEps);
}

VISSIAM_HD double row_cosine(const RowDots& dots) {
  return dots.mu_target * inverse_norm(dots.mu_mu) * inverse_norm(dots.target_target);
}

VISSIAM_HD RowGradientCoefficients row_gradient_coefficients(const RowDots& dots,
                                                             double dnll_dcos) {
  const double inv_mu = inverse_norm(dots.mu_mu);
  const double inv_target = inverse_norm(dots.target_target);
  const double cos = dots.mu_target * inv_mu * inv_target;
  RowGradientCoefficients g;
  g.cross_coef = dnll_dcos * inv_mu * inv_target;
  g.mu_coef = ::sqrt(dots.mu_mu) > kNormalizeEps ? -dnll_dcos * cos * inv_mu * inv_mu : 0.0;
  g.target_coef =
      ::sqrt(dots.target_target) > kNormalizeEps ? -dnll_dcos * cos * inv_target * inv_target : 0.0;
  return g;
}

// The value of kappa is valid: finite and >= 0 (NaN fails).
VISSIAM_HD bool valid_kappa(double kappa) { return kappa >= 0.0 && kappa <= 1.7976931348623157e308; }

}  // namespace vissiam
