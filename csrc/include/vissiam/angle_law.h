// The exact kappa-derivative of a sampled angle (implicit reparameterization), one row at a time:
// the fused form of vissiam_kernels/distributions/_angle_law.py, which states the math and is the
// float64 reference these functions are tested against (tests/test_angle_law_kernel.py).
//
// The angle theta in [0, pi] between a draw and the mean direction has the density
// q~(theta) / Z(kappa) with q~ = exp(kappa T(theta)) sin^{d-2}(theta) (vMF: T = cos; power spherical:
// T = log(1 + cos)), and at fixed F(theta; kappa)
//
//   d theta / d kappa = -(J0_> J1_< + J0_< J1_>) / (J0_< + J0_>),
//   J0 = int r,  J1 = int |T(phi) - T(theta)| r  over [0, theta] (<) and [theta, pi] (>),
//   r(phi) = q~(phi) / q~(theta).
//
// The quadrature is the reference's: 8-node Gauss-Legendre panels between the same breakpoints
// (0, pi, theta, mode +- sigma 2^j, theta +- h 2^j where h < sigma / 2, j < 9, and for the power
// spherical family pi - pi 4^-j, j = 1..22), the same integrand formulas (differences of cosines and
// sines as products of sines, log r from log1p of ratios; the sines of a panel's nodes by addition
// formulas). What is new is that panels that cannot matter are never evaluated: r is unimodal on
// [0, pi] with its peak at the analytic mode, so on each side of theta the peak of r is known before
// any panel is summed (r(mode) on the side that holds the mode, r(theta) = 1 on the other). Panels
// are summed outward from the peak, and the march stops on a side once a panel's outermost node is
// below the peak by kPruneLogRatio: every panel beyond it has smaller r (unimodality), so what is
// left out is below e^-100 of the peak per node, far under float64 rounding of the kept sum. That
// leaves about 10 panels a row (d from 3 to 2048, kappa from 1 to 1e5, angles drawn near the mode),
// of up to 37 (vMF) or 59 (power spherical).
// Each side's terms are scaled by its peak, so a theta far in a tail (r ~ e^{+-1000}) stays finite.
#pragma once

#include <cmath>
#include <cstdint>

#include "vissiam/special_functions.h"  // VISSIAM_HD

namespace vissiam {
namespace angle_law {

constexpr double kPi = 3.141592653589793;

// Gauss-Legendre nodes (ascending) and weights on [-1, 1], 8 points (numpy.polynomial.legendre.leggauss(8)).
constexpr int kGaussNodes = 8;
constexpr double kGaussX[kGaussNodes] = {-0.9602898564975362, -0.7966664774136267, -0.525532409916329,
                                         -0.18343464249564978, 0.18343464249564978, 0.525532409916329,
                                         0.7966664774136267,  0.9602898564975362};
constexpr double kGaussW[kGaussNodes] = {0.10122853629037706, 0.22238103445337443, 0.3137066458778869,
                                         0.36268378337836166, 0.36268378337836166, 0.3137066458778869,
                                         0.22238103445337443, 0.10122853629037706};

// Breakpoint offsets 2^j, j < kOffsets, on each side of the mode (units of sigma) and of
// theta (units of h); the power spherical grading towards pi: pi 4^-j, j = 1..kPiGrading.
constexpr int kOffsets = 9;
constexpr int kPiGrading = 22;
constexpr int kMaxPoints = 3 + 4 * kOffsets + kPiGrading;

// theta gets its own grading when its decay length h is under kSteepTheta sigma (the reference's STEEP_THETA).
constexpr double kSteepTheta = 0.5;

// A panel whose outermost node has log r below the side's peak by this much ends the march.
constexpr double kPruneLogRatio = 100.0;

// log1p's argument floor for log(cos(phi/2) / cos(theta/2)) (the reference's _NEAR_MINUS_ONE).
constexpr double kNearMinusOne = -1.0 + 1.1102230246251565e-16;

// Per-row constants of the integrand.
struct AngleRow {
  double theta, kappa, dm2;  // dm2 = d - 2
  bool vmf, curved;          // curved: d > 2 (the sin^{d-2} factor is present)
  double sin_theta;          // vMF
  double cos_half, sin_half; // power spherical: cos(theta/2), sin(theta/2)
};

VISSIAM_HD AngleRow make_angle_row(double theta, double kappa, int64_t dim, bool vmf) {
  AngleRow row;
  row.theta = theta;
  row.kappa = kappa;
  row.dm2 = static_cast<double>(dim - 2);
  row.vmf = vmf;
  row.curved = dim > 2;
  row.sin_theta = std::sin(theta);
  row.cos_half = std::cos(0.5 * theta);
  row.sin_half = std::sin(0.5 * theta);
  return row;
}

// The mode m of q~ in [0, pi] and sigma = (-d^2 log q~/dtheta^2 at m)^(-1/2) (inf where q~ is flat).
VISSIAM_HD void mode_and_width(const AngleRow& row, double& mode, double& sigma) {
  const double kappa = row.kappa, dm2 = row.dm2;
  if (!row.curved) {  // d = 2: the mode is at 0; curvature kappa (vMF) or kappa / 2 (power spherical)
    mode = 0.0;
    sigma = 1.0 / std::sqrt(row.vmf ? kappa : 0.5 * kappa);
    return;
  }
  if (row.vmf) {
    // kappa c^2 + (d-2) c - kappa = 0, c = cos m; 1 - c = (d-2 + (d-2)^2 / (root + 2 kappa)) / (d-2 + root)
    const double root = std::sqrt(dm2 * dm2 + 4 * kappa * kappa);
    const double c = 2 * kappa / (dm2 + root);
    const double one_minus_c = (dm2 + dm2 * dm2 / (root + 2 * kappa)) / (dm2 + root);
    const double sin_sq = one_minus_c * (1 + c);
    mode = std::atan2(std::sqrt(sin_sq), c);
    sigma = 1.0 / std::sqrt(kappa * c + dm2 / sin_sq);
    return;
  }
  // power spherical: tan^2(m/2) = (d-2)/(2 kappa + d - 2); curvature kappa + d - 2
  mode = 2 * std::atan(std::sqrt(dm2 / (2 * kappa + dm2)));
  sigma = 1.0 / std::sqrt(kappa + dm2);
}

// d log q~ / dtheta at theta.
VISSIAM_HD double log_q_slope(const AngleRow& row) {
  const double theta = row.theta;
  if (row.vmf) {
    double slope = -row.kappa * std::sin(theta);
    if (row.curved) slope += row.dm2 / std::tan(theta);
    return slope;
  }
  const double half = 0.5 * theta;
  double slope = -(row.kappa + 0.5 * row.dm2) * std::tan(half);
  if (row.curved) slope += 0.5 * row.dm2 / std::tan(half);
  return slope;
}

// The integrand's arithmetic on V = double, one node at a time (ScalarMath, below), or on lanes of
// double holding a whole panel (csrc/cpu/angle_law_cpu.cpp's AVX2 math). A Math provides:
//   kChunks                       the number of V a panel's kGaussNodes nodes take;
//   panel_nodes(chunk, a, s, c, w)  for the nodes x_k of that chunk: sin(a x_k), cos(a x_k) and w_k;
//   outer_node(lo_side)           the chunk and lane of the node x = -x_max (lo_side) or +x_max;
//   sincos_pair(a, b, out)        sin a, cos a, sin b, cos b of two scalars;
//   log1p, exp, max(x, floor) (NaN -> floor), abs, positive_or_zero(w, x) (x where w > 0, else 0),
//   lane(v, i) and sum(v).
struct NodePlace {
  int chunk, lane;
};

struct ScalarMath {
  using V = double;
  static constexpr int kChunks = kGaussNodes;
  VISSIAM_HD static void panel_nodes(int chunk, double a, V* sin_ax, V* cos_ax, V* weight) {
    *sin_ax = std::sin(a * kGaussX[chunk]);
    *cos_ax = std::cos(a * kGaussX[chunk]);
    *weight = kGaussW[chunk];
  }
  VISSIAM_HD static NodePlace outer_node(bool lo_side) { return {lo_side ? 0 : kGaussNodes - 1, 0}; }
  VISSIAM_HD static void sincos_pair(double a, double b, double* out) {  // out = sin a, cos a, sin b, cos b
    out[0] = std::sin(a);
    out[1] = std::cos(a);
    out[2] = std::sin(b);
    out[3] = std::cos(b);
  }
  VISSIAM_HD static V log1p(V x) { return std::log1p(x); }
  VISSIAM_HD static V exp(V x) { return std::exp(x); }
  VISSIAM_HD static V max(V x, double floor) { return x > floor ? x : floor; }  // NaN -> floor, as fmax
  VISSIAM_HD static V abs(V x) { return std::fabs(x); }
  VISSIAM_HD static V positive_or_zero(V w, V x) { return w > 0 ? x : 0.0; }
  VISSIAM_HD static double lane(V v, int) { return v; }
  VISSIAM_HD static double sum(V v) { return v; }
};

// The angle unit of the integrand's products: vMF works in (theta +- phi)/2, power spherical in
// (theta +- phi)/4 (its T and sines are of half angles).
VISSIAM_HD double product_angle_scale(const AngleRow& row) { return row.vmf ? 0.5 : 0.25; }

// log r(phi) = log q~(phi) - log q~(theta); *contrast = |T(phi) - T(theta)|; lane by lane, from the
// sine of g = c (theta - phi) and the sine and cosine of u = c (theta + phi), c = product_angle_scale.
template <class Math>
VISSIAM_HD typename Math::V log_ratio(const AngleRow& row, typename Math::V sin_gap, typename Math::V sin_sum,
                                      typename Math::V cos_sum, typename Math::V* contrast) {
  using V = typename Math::V;
  // sin phi - sin theta = -2 cos((theta + phi)/2) sin((theta - phi)/2) (vMF; half angles for PS)
  const V d_sin = -2 * cos_sum * sin_gap;
  if (row.vmf) {
    // cos phi - cos theta = 2 sin((theta + phi)/2) sin((theta - phi)/2)
    const V difference = 2 * sin_sum * sin_gap;
    V log_r = row.kappa * difference;
    if (row.curved) log_r = log_r + row.dm2 * Math::log1p(Math::max(d_sin / row.sin_theta, -1.0));
    *contrast = Math::abs(difference);
    return log_r;
  }
  // power spherical, half angles: T = 2 log cos(phi/2) + log 2, sin^{d-2} phi = 2^{d-2} (sin cos)^{d-2}(phi/2)
  const V log_cos_ratio = Math::log1p(Math::max(2 * sin_sum * sin_gap / row.cos_half, kNearMinusOne));
  V log_r = (2 * row.kappa + row.dm2) * log_cos_ratio;
  if (row.curved) log_r = log_r + row.dm2 * Math::log1p(Math::max(d_sin / row.sin_half, -1.0));
  *contrast = 2 * Math::abs(log_cos_ratio);
  return log_r;
}

// log r at one angle phi.
VISSIAM_HD double log_ratio_at(const AngleRow& row, double phi, double* contrast) {
  const double scale = product_angle_scale(row);
  const double sum = scale * (row.theta + phi);
  return log_ratio<ScalarMath>(row, std::sin(scale * (row.theta - phi)), std::sin(sum), std::cos(sum), contrast);
}

VISSIAM_HD double clamp_angle(double x) { return x > 0.0 ? (x < kPi ? x : kPi) : 0.0; }

// Merges ascending a[0..na) and b[0..nb) into out (ascending).
VISSIAM_HD int merge_ascending(const double* a, int na, const double* b, int nb, double* out) {
  int i = 0, j = 0, k = 0;
  while (i < na && j < nb) out[k++] = (b[j] < a[i]) ? b[j++] : a[i++];
  while (i < na) out[k++] = a[i++];
  while (j < nb) out[k++] = b[j++];
  return k;
}

// The reference's breakpoints, ascending, clamped to [0, pi]; returns their count.
VISSIAM_HD int breakpoints(const AngleRow& row, double mode, double sigma, double* points) {
  sigma = std::fmin(sigma, kPi);
  double local = 1.0 / std::fabs(log_q_slope(row));  // the integrand's decay length at theta
  if (std::isnan(local) || !(local < sigma)) local = sigma;
  const bool steep = local < kSteepTheta * sigma;  // else the mode's grading resolves theta's neighbourhood
  double around_mode[2 * kOffsets], around_theta[2 * kOffsets];
  double offset = 1.0;
  for (int j = 0; j < kOffsets; ++j, offset *= 2) {
    around_mode[kOffsets - 1 - j] = clamp_angle(mode - sigma * offset);
    around_mode[kOffsets + j] = clamp_angle(mode + sigma * offset);
    around_theta[kOffsets - 1 - j] = clamp_angle(row.theta - local * offset);
    around_theta[kOffsets + j] = clamp_angle(row.theta + local * offset);
  }
  double merged[4 * kOffsets + kPiGrading + 1];
  int count = merge_ascending(around_mode, 2 * kOffsets, around_theta, steep ? 2 * kOffsets : 0, merged);
  double theta_only[1] = {row.theta};
  double with_theta[4 * kOffsets + kPiGrading + 1];
  count = merge_ascending(merged, count, theta_only, 1, with_theta);
  points[0] = 0.0;
  if (row.vmf) {
    for (int k = 0; k < count; ++k) points[1 + k] = with_theta[k];
  } else {
    double grading[kPiGrading];
    double step = kPi;
    for (int j = 0; j < kPiGrading; ++j) {
      step *= 0.25;
      grading[j] = kPi - step;  // ascending towards pi
    }
    count = merge_ascending(with_theta, count, grading, kPiGrading, points + 1);
  }
  points[1 + count] = kPi;
  return count + 2;
}

// One side's running sums, terms scaled by exp(-peak).
struct SideSums {
  double peak = 0.0, j0 = 0.0, j1 = 0.0;
};

// Adds panel [lo, hi]'s terms to `side`; returns log r at the node nearest the outer end (lo if
// outer_is_lo, else hi). The nodes are m + a x_k (m the centre, a = half the width), so the sines
// and cosines of the product angles come from those of the centre's and of a x_k by the addition
// formulas: with lanes, two sincos calls a panel instead of three per node. (Next to theta,
// g = c (theta - phi) is formed as sin(A) cos(a) - cos(A) sin(a) with A and a within a factor
// 1 / (1 - x_max) = 25 of their difference: ~25 ulp relative in sin g, where log r is ~0.)
template <class Math>
VISSIAM_HD double add_panel(const AngleRow& row, double lo, double hi, bool outer_is_lo, SideSums& side) {
  using V = typename Math::V;
  const double half = 0.5 * (hi - lo), centre = lo + half, scale = product_angle_scale(row);
  double at_centre[4];  // sin A, cos A, sin B, cos B; A = c (theta - centre), B = c (theta + centre)
  Math::sincos_pair(scale * (row.theta - centre), scale * (row.theta + centre), at_centre);
  const double sin_a = at_centre[0], cos_a = at_centre[1], sin_b = at_centre[2], cos_b = at_centre[3];
  double j0 = 0.0, j1 = 0.0, outer = 0.0;
  for (int chunk = 0; chunk < Math::kChunks; ++chunk) {
    V sin_offset, cos_offset, weight;  // of the nodes' offsets c (phi - centre)
    Math::panel_nodes(chunk, scale * half, &sin_offset, &cos_offset, &weight);
    const V sin_gap = sin_a * cos_offset - cos_a * sin_offset;  // sin(A - offset)
    const V sin_sum = sin_b * cos_offset + cos_b * sin_offset;  // sin(B + offset)
    const V cos_sum = cos_b * cos_offset - sin_b * sin_offset;  // cos(B + offset)
    V contrast;
    const V log_r = log_ratio<Math>(row, sin_gap, sin_sum, cos_sum, &contrast);
    const V wr = half * weight * Math::exp(log_r - side.peak);
    j0 += Math::sum(wr);
    j1 += Math::sum(Math::positive_or_zero(wr, wr * contrast));  // r = 0 where the contrast may be inf
    const NodePlace outer_place = Math::outer_node(outer_is_lo);
    if (chunk == outer_place.chunk) outer = Math::lane(log_r, outer_place.lane);
  }
  side.j0 += j0;
  side.j1 += j1;
  return outer;
}

// Sums panels [first, last) of `points` (one side of theta) outward from panel `start`.
template <class Math>
VISSIAM_HD void sum_side(const AngleRow& row, const double* points, int first, int last, int start, SideSums& side) {
  const double stop = side.peak - kPruneLogRatio;
  for (int k = start; k >= first; --k) {  // downward, including the peak's panel
    if (!(points[k + 1] > points[k])) continue;  // zero length (clipped breakpoints): no terms
    if (add_panel<Math>(row, points[k], points[k + 1], true, side) < stop) break;
  }
  for (int k = start + 1; k < last; ++k) {  // upward
    if (!(points[k + 1] > points[k])) continue;
    if (add_panel<Math>(row, points[k], points[k + 1], false, side) < stop) break;
  }
}

// The panel of [first, last) that holds x (points[k] <= x <= points[k + 1]), clamped to the range.
VISSIAM_HD int panel_holding(const double* points, int first, int last, double x) {
  int k = first;
  while (k + 1 < last && points[k + 1] <= x) ++k;
  return k;
}

// d theta / d kappa at fixed F(theta; kappa), <= 0; theta is clamped to [0, pi]. At theta = 0 and
// pi, F is 0 and 1 whatever kappa: the derivative is 0 there (the integrals would give inf / inf).
template <class Math = ScalarMath>
VISSIAM_HD double kappa_derivative(double theta, double kappa, int64_t dim, bool vmf) {
  if (!(theta > 0.0 && theta < kPi)) return std::isnan(theta) ? theta : 0.0;
  const AngleRow row = make_angle_row(theta, kappa, dim, vmf);
  double mode, sigma;
  mode_and_width(row, mode, sigma);
  double points[kMaxPoints];
  const int count = breakpoints(row, mode, sigma, points);
  int theta_index = 0;  // the first breakpoint equal to theta: panels below it lie under theta
  while (points[theta_index] < row.theta) ++theta_index;
  const int panels = count - 1;
  SideSums below, above;
  double unused;
  // the peak of r on each side: at the mode on the side that holds it, at theta (r = 1) on the other
  if (mode < row.theta) below.peak = log_ratio_at(row, mode, &unused);
  if (mode > row.theta) above.peak = log_ratio_at(row, mode, &unused);
  if (!std::isfinite(below.peak)) below.peak = 0.0;
  if (!std::isfinite(above.peak)) above.peak = 0.0;
  if (theta_index > 0) {
    const int start = mode < row.theta ? panel_holding(points, 0, theta_index, mode) : theta_index - 1;
    sum_side<Math>(row, points, 0, theta_index, start, below);
  }
  if (theta_index < panels) {
    const int start = mode > row.theta ? panel_holding(points, theta_index, panels, mode) : theta_index;
    sum_side<Math>(row, points, theta_index, panels, start, above);
  }
  // -(J0_> J1_< + J0_< J1_>) / (J0_< + J0_>) in log space, each side's scale added back
  const double j0_lo = std::log(below.j0) + below.peak, j0_hi = std::log(above.j0) + above.peak;
  const double j1_lo = std::log(below.j1) + below.peak, j1_hi = std::log(above.j1) + above.peak;
  const double larger = std::fmax(j0_lo, j0_hi);
  const double log_j0 = larger + std::log(std::exp(j0_lo - larger) + std::exp(j0_hi - larger));
  return -(std::exp(j1_lo + j0_hi - log_j0) + std::exp(j1_hi + j0_lo - log_j0));
}

}  // namespace angle_law
}  // namespace vissiam
