// Checks vissiam/row_math_lanes.h and vissiam/vector_math.h against the scalar header and libm.
//
//   g++ -O2 -std=c++17 -I csrc/include tests/row_math_lanes_check.cpp -o row_math_lanes_check
//   ./row_math_lanes_check [--golden tests/data/golden_normalizers.csv] [--bench | --bench-only]
//                          [--quick]
//
// 1. log, log1p, exp, expm1 (and the hypot of the vMF rows) on millions of random inputs over
//    the whole double range: error in ulps against long double (x87) references, for ours and
//    for libm's; special values against libm's.
// 2. row_loss_lanes against row_loss over families x dims x kappas x cosines, in blocks of
//    n = 1..8 rows (tail masking; lanes >= n must stay unwritten). Each output must agree to
//    1e-13 relative to max(|scalar value|, its scale), the scale being the sum of the absolute
//    values of the terms the output is made of (where the value cancels to ~0, that is the size
//    of the rounding either side makes); non-finite values must match in kind.
// 3. --golden: both against the mpmath golden table (nll at cos = 0 is -log C, dnll/dkappa at
//    cos = 0 is -dlog C/dkappa): the lanes must be no less accurate than the scalar code.
// 4. --bench: ns per row, scalar row_loss vs row_loss_lanes (single thread).
// Exit status 0 when every check passes.
#include "vissiam/row_math_lanes.h"

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using vissiam::RowLoss;
namespace lanes = vissiam::lanes;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CHECK_ISA_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CHECK_ISA_CLONES
#endif

namespace {

int g_failures = 0;

void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void fail(const char* fmt, ...) {
  if (++g_failures <= 30) {
    va_list args;
    va_start(args, fmt);
    std::fputs("FAIL: ", stdout);
    std::vprintf(fmt, args);
    std::fputc('\n', stdout);
    va_end(args);
  }
}

// ---------------------------------------------------------------------------------------------
// Row blocks: row_loss_lanes (its own run-time choice of width) called from a target_clones
// function, as the CPU kernel would, or from a plain one; one width forced; the scalar loop.

typedef void (*BlockFn)(int, const double*, const double*, double, int, RowLoss*, bool);

CHECK_ISA_CLONES __attribute__((noinline)) void lanes_block_clones(int family, const double* cos,
                                                                    const double* kappa, double dim,
                                                                    int n, RowLoss* out) {
  vissiam::row_loss_lanes(family, cos, kappa, dim, n, out);
}

CHECK_ISA_CLONES __attribute__((noinline)) void lanes_rows_clones(int family, const double* cos,
                                                                   const double* kappa, double dim,
                                                                   int64_t rows, RowLoss* out) {
  for (int64_t i = 0; i < rows; i += vissiam::kRowLanes) {
    const int n = static_cast<int>(std::min<int64_t>(vissiam::kRowLanes, rows - i));
    vissiam::row_loss_lanes(family, cos + i, kappa + i, dim, n, out + i);
  }
}

template <BlockFn F>
__attribute__((noinline)) void lanes_rows(int family, const double* cos, const double* kappa,
                                          double dim, int64_t rows, RowLoss* out) {
  for (int64_t i = 0; i < rows; i += vissiam::kRowLanes) {
    const int n = static_cast<int>(std::min<int64_t>(vissiam::kRowLanes, rows - i));
    F(family, cos + i, kappa + i, dim, n, out + i, true);
  }
}

__attribute__((noinline)) void scalar_rows(int family, const double* cos, const double* kappa,
                                           double dim, int64_t rows, RowLoss* out) {
  for (int64_t i = 0; i < rows; ++i) out[i] = vissiam::row_loss(family, cos[i], kappa[i], dim);
}

struct Width {
  int lanes;  // doubles per hardware vector
  const char* name;
  BlockFn block;
  void (*rows)(int, const double*, const double*, double, int64_t, RowLoss*);
};

// The widths this CPU can run, narrowest first.
std::vector<Width> available_widths() {
  std::vector<Width> w = {{2, "w2", vissiam::row_loss_lanes_w2, lanes_rows<vissiam::row_loss_lanes_w2>}};
#if defined(VISSIAM_ROW_LANES_X86)
  if (vissiam::row_loss_lanes_width() >= 4)
    w.push_back({4, "w4", vissiam::row_loss_lanes_w4, lanes_rows<vissiam::row_loss_lanes_w4>});
  if (vissiam::row_loss_lanes_width() >= 8)
    w.push_back({8, "w8", vissiam::row_loss_lanes_w8, lanes_rows<vissiam::row_loss_lanes_w8>});
#endif
  return w;
}

// The elementary functions at each width.
enum ElementaryFn { kFnLog, kFnLog1p, kFnExp, kFnExpm1, kFnHypot };

template <int W>
__attribute__((always_inline)) inline void apply_elementary(int fn, double a, const double* in, double* out,
                                                            size_t count) {
  constexpr size_t kSize = lanes::vec<W>::kSize;
  for (size_t i = 0; i < count; i += kSize) {
    double buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const size_t n = std::min<size_t>(kSize, count - i);
    std::memcpy(buf, in + i, n * 8);
    const lanes::vec<W> v = lanes::load<W>(buf);
    lanes::vec<W> y;
    switch (fn) {
      case kFnLog: y = lanes::log(v); break;
      case kFnLog1p: y = lanes::log1p(v); break;
      case kFnExp: y = lanes::exp(v); break;
      case kFnExpm1: y = lanes::expm1(v); break;
      default: y = lanes::hypot_order(a, v); break;
    }
    for (size_t j = 0; j < n; ++j) out[i + j] = y[j];
  }
}
__attribute__((noinline)) void apply_elementary_w2(int fn, double a, const double* in, double* out, size_t n) {
  apply_elementary<2>(fn, a, in, out, n);
}
#if defined(VISSIAM_ROW_LANES_X86)
__attribute__((noinline, target("avx2,fma"))) void apply_elementary_w4(int fn, double a, const double* in,
                                                                       double* out, size_t n) {
  apply_elementary<4>(fn, a, in, out, n);
}
__attribute__((noinline, target("avx512f,avx512dq,avx2,fma"))) void apply_elementary_w8(
    int fn, double a, const double* in, double* out, size_t n) {
  apply_elementary<8>(fn, a, in, out, n);
}
#endif
void apply_elementary_at(int width, int fn, double a, const double* in, double* out, size_t n) {
#if defined(VISSIAM_ROW_LANES_X86)
  if (width == 4) return apply_elementary_w4(fn, a, in, out, n);
  if (width == 8) return apply_elementary_w8(fn, a, in, out, n);
#endif
  apply_elementary_w2(fn, a, in, out, n);
}

// ---------------------------------------------------------------------------------------------
// 1. Elementary functions

uint64_t bits_of(double x) {
  uint64_t u;
  std::memcpy(&u, &x, 8);
  return u;
}
double from_bits(uint64_t u) {
  double x;
  std::memcpy(&x, &u, 8);
  return x;
}

// |y - ref| in units of the last place of ref rounded to double (subnormal ulp at the bottom).
double ulp_error(double y, long double ref) {
  const double rd = static_cast<double>(ref);
  if (std::isnan(rd) || std::isinf(rd) || std::isnan(y) || std::isinf(y)) {
    if (std::isnan(rd) && std::isnan(y)) return 0.0;
    if (rd == y) return 0.0;
    // ref just above DBL_MAX but rounding to inf, or similar: measure against DBL_MAX's ulp
    if (std::isinf(rd) && std::isfinite(y) && std::fabs(y) == std::numeric_limits<double>::max())
      return static_cast<double>((std::fabs(ref) - std::fabs((long double)y)) / std::ldexp(1.0L, 971));
    return std::numeric_limits<double>::infinity();
  }
  int e = rd == 0.0 ? -1074 : std::ilogb(rd) - 52;
  if (e < -1074) e = -1074;
  return static_cast<double>(std::fabs((long double)y - ref) / std::ldexp(1.0L, e));
}

struct ElementaryResult {
  double ours_max_ulp = 0, libm_max_ulp = 0, ours_worst_x = 0;
  size_t identical = 0, total = 0;
};

bool same_kind(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return bits_of(a) == bits_of(b) || (a == b && a != 0.0);  // zeros: sign must match too
}

// Ours at every width against libm and a long double reference; < max_ulp required.
template <class FLib, class FRef>
void check_elementary(const char* name, int fn, double param, double max_ulp,
                      const std::vector<double>& xs, FLib flib, FRef fref) {
  std::vector<double> lib(xs.size());
  std::vector<long double> ref(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    lib[i] = flib(xs[i]);
    ref[i] = fref(static_cast<long double>(xs[i]));
  }
  for (const Width& w : available_widths()) {
    std::vector<double> ours(xs.size());
    apply_elementary_at(w.lanes, fn, param, xs.data(), ours.data(), xs.size());
    ElementaryResult r;
    for (size_t i = 0; i < xs.size(); ++i) {
      const double x = xs[i], y = ours[i];
      ++r.total;
      if (bits_of(y) == bits_of(lib[i]) || (std::isnan(y) && std::isnan(lib[i]))) ++r.identical;
      if (!std::isfinite(lib[i]) || lib[i] == 0.0 || !std::isfinite(x)) {
        // special values (inf, NaN, out of domain, zero results) must match libm's in kind
        if (!same_kind(y, lib[i])) fail("%s %s(%a) = %a, libm %a", w.name, name, x, y, lib[i]);
        continue;
      }
      const double e = ulp_error(y, ref[i]);
      if (e > r.ours_max_ulp) {
        r.ours_max_ulp = e;
        r.ours_worst_x = x;
      }
      r.libm_max_ulp = std::max(r.libm_max_ulp, ulp_error(lib[i], ref[i]));
      if (!(e < max_ulp)) fail("%s %s(%a) = %a: %.3f ulp (libm %a)", w.name, name, x, y, e, lib[i]);
    }
    std::printf("  %-3s %-11s %8zu args: ours max %.3f ulp (at x = %.17g), libm max %.3f ulp, "
                "%.2f%% bitwise equal to libm\n",
                w.name, name, r.total, r.ours_max_ulp, r.ours_worst_x, r.libm_max_ulp,
                100.0 * r.identical / r.total);
  }
}

void check_elementary_functions(std::mt19937_64& rng, size_t per_kind) {
  std::printf("1. elementary functions (ulp error vs long double; < 1 ulp required; per width)\n");
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  auto uniform = [&](double a, double b) { return a + (b - a) * u01(rng); };
  auto log_uniform = [&](double lo10, double hi10) { return std::pow(10.0, uniform(lo10, hi10)); };
  auto random_bits = [&](std::vector<double>& v, size_t n) {
    for (size_t i = 0; i < n; ++i) v.push_back(from_bits(rng()));
  };
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double dmax = std::numeric_limits<double>::max();
  const double dmin = std::numeric_limits<double>::min();
  const double tiny = std::numeric_limits<double>::denorm_min();
  const std::vector<double> specials = {0.0, -0.0, tiny, -tiny, dmin, -dmin, dmin / 3, 1e-310, -1e-310,
                                        1.0, -1.0, 2.0, 0.5, dmax, -dmax, inf, -inf, nan, -nan,
                                        0x1p-54, -0x1p-54, 0x1p-53, 0x1p-29, 0x1p53, 0x1p1023,
                                        std::nextafter(-1.0, 0.0), std::nextafter(-1.0, -2.0),
                                        709.782712893383973096, 709.79, -745.13321910194110842,
                                        -745.2, -708.39, -708.4, -38.8162421113569373274, -38.9,
                                        0.34657359027997264, 1.0397207708399179, M_SQRT2, M_SQRT1_2,
                                        M_SQRT2 - 1, M_SQRT1_2 - 1, 0.41421353816986084,
                                        -0.29289321601390839, 56 * M_LN2, 20 * M_LN2, 19.5 * M_LN2};

  {  // log
    std::vector<double> xs = specials;
    random_bits(xs, per_kind);
    for (size_t i = 0; i < per_kind; ++i) xs.push_back(log_uniform(-323.5, 308.2));
    for (size_t i = 0; i < per_kind; ++i) xs.push_back(uniform(0.5, 2.0));
    for (size_t i = 0; i < per_kind / 4; ++i) xs.push_back(1.0 + uniform(-1e-6, 1e-6));
    check_elementary("log", kFnLog, 0.0, 1.0, xs, [](double x) { return std::log(x); }, [](long double x) { return logl(x); });
  }
  {  // log1p
    std::vector<double> xs = specials;
    random_bits(xs, per_kind);
    for (size_t i = 0; i < per_kind; ++i) xs.push_back(uniform(-1.0, 1.0));
    for (size_t i = 0; i < per_kind / 2; ++i) xs.push_back(-1.0 + log_uniform(-16.0, 0.0));
    for (size_t i = 0; i < per_kind / 2; ++i) xs.push_back(log_uniform(-320.0, 308.0));
    for (size_t i = 0; i < per_kind / 2; ++i) xs.push_back(-log_uniform(-320.0, 0.0));
    check_elementary("log1p", kFnLog1p, 0.0, 1.0, xs, [](double x) { return std::log1p(x); }, [](long double x) { return log1pl(x); });
  }
  {  // exp
    std::vector<double> xs = specials;
    random_bits(xs, per_kind);
    for (size_t i = 0; i < per_kind; ++i) xs.push_back(uniform(-750.0, 710.0));
    for (size_t i = 0; i < per_kind / 2; ++i) xs.push_back(uniform(-2.0, 2.0));
    for (size_t i = 0; i < per_kind / 2; ++i) xs.push_back((i & 1 ? -1 : 1) * log_uniform(-20.0, 0.0));
    check_elementary("exp", kFnExp, 0.0, 1.0, xs, [](double x) { return std::exp(x); }, [](long double x) { return expl(x); });
  }
  {  // expm1
    std::vector<double> xs = specials;
    random_bits(xs, per_kind);
    for (size_t i = 0; i < per_kind; ++i) xs.push_back(uniform(-45.0, 710.0));
    for (size_t i = 0; i < per_kind / 2; ++i) xs.push_back(uniform(-3.0, 3.0));
    for (size_t i = 0; i < per_kind / 2; ++i) xs.push_back((i & 1 ? -1 : 1) * log_uniform(-320.0, 0.0));
    for (int k = -60; k <= 1030; ++k) {  // every reduction branch k, near its ends
      xs.push_back(k * M_LN2);
      xs.push_back((k + 0.49) * M_LN2);
      xs.push_back((k - 0.49) * M_LN2);
    }
    check_elementary("expm1", kFnExpm1, 0.0, 1.0, xs, [](double x) { return std::expm1(x); }, [](long double x) { return expm1l(x); });
  }
  // hypot of the vMF rows: a common order (30 .. 65538) and x >= 0; < 1.5 ulp required
  for (double a : {1.0, 30.0, 30.5, 31.0, 1024.5, 32768.0, 65537.0}) {
    std::vector<double> xs = {0.0, tiny, 1e-300, 1.0, 1e150, 0x1p499, 0x1p500, 1e300, dmax, inf, nan};
    for (size_t i = 0; i < per_kind / 8; ++i) xs.push_back(log_uniform(-320.0, 308.2));
    char name[32];
    std::snprintf(name, sizeof name, "hypot%g", a);
    check_elementary(name, kFnHypot, a, 1.5, xs, [a](double x) { return std::hypot(a, x); },
                     [a](long double x) { return sqrtl((long double)a * a + x * x); });
  }
}

// ---------------------------------------------------------------------------------------------
// 2. row_loss_lanes vs row_loss

constexpr double kRowTolerance = 1e-13;

// Scales of the three outputs: the sums of the absolute values of their terms.
struct Scales {
  double nll, dnll_dcos, dnll_dkappa;
};

Scales row_scales(int family, double cos, double kappa, double dim) {
  using namespace vissiam;
  if (family == kCosine) return {std::fabs(cos), 1.0, 0.0};
  if (family == kPowerSpherical) {
    const double one_plus_cos = 1.0 + cos;
    const double log1p_cos = std::log(one_plus_cos > kPowerSphericalOnePlusCosFloor
                                          ? one_plus_cos : kPowerSphericalOnePlusCosFloor);
    const double beta = 0.5 * (dim - 1.0);
    const double alpha = beta + kappa;
    const double lgd = lgamma_difference(alpha, beta);
    const double l2d = log2_plus_digamma_difference(alpha, beta);
    return {std::fabs((alpha + beta) * kLog2) + std::fabs(beta * kLogPi) + std::fabs(lgd) +
                std::fabs(kappa * log1p_cos),
            std::fabs(kappa / one_plus_cos), std::fabs(l2d) + std::fabs(log1p_cos)};
  }
  const double nu = 0.5 * dim - 1.0;
  const LogBesselAndRatio b = log_bessel_i_scaled_and_ratio(nu, kappa);
  return {std::fabs((nu + 1.0) * kLog2Pi) + std::fabs(b.log_scaled) + std::fabs(kappa * cos),
          kappa, std::fabs(b.ratio) + std::fabs(cos)};
}

struct FieldStats {
  double worst_scaled = 0;  // |lanes - scalar| / max(|scalar|, scale)
  double worst_relative = 0;  // |lanes - scalar| / |scalar| where |scalar| >= scale / 100
  double worst_dim = 0, worst_kappa = 0, worst_cos = 0;
  double last_scaled = 0;  // of the latest comparison
  size_t equal = 0, total = 0;
};

struct FamilyStats {
  FieldStats field[3];
};

const char* kFieldNames[3] = {"nll", "dnll_dcos", "dnll_dkappa"};
const char* kFamilyNames[3] = {"cosine", "vMF", "power_spherical"};

void compare_value(FieldStats& st, int family, int field, double s, double l, double scale, double dim,
                   double kappa, double cos) {
  ++st.total;
  st.last_scaled = 0;
  if (bits_of(s) == bits_of(l) || (std::isnan(s) && std::isnan(l))) {
    ++st.equal;
    return;
  }
  if (!std::isfinite(s) || !std::isfinite(l)) {
    if (!same_kind(s, l) && !(s == 0.0 && l == 0.0)) {
      fail("%s %s d=%g kappa=%.17g cos=%.17g: lanes %.17g vs scalar %.17g (kind)",
           kFamilyNames[family], kFieldNames[field], dim, kappa, cos, l, s);
    }
    return;
  }
  const double diff = std::fabs(l - s);
  const double denom = std::max({std::fabs(s), scale, 1e-300});
  const double err = diff / denom;
  st.last_scaled = err;
  if (err > st.worst_scaled) {
    st.worst_scaled = err;
    st.worst_dim = dim;
    st.worst_kappa = kappa;
    st.worst_cos = cos;
  }
  if (std::fabs(s) >= 0.01 * scale && s != 0.0) {
    st.worst_relative = std::max(st.worst_relative, diff / std::fabs(s));
  }
  if (!(err <= kRowTolerance)) {
    fail("%s %s d=%g kappa=%.17g cos=%.17g: lanes %.17g vs scalar %.17g (error %.3g of scale %.3g)",
         kFamilyNames[family], kFieldNames[field], dim, kappa, cos, l, s, err, denom);
  }
}

void check_rows(std::mt19937_64& rng, bool quick) {
  std::printf("2. row_loss_lanes vs row_loss (tolerance %.0e relative to max(|value|, scale))\n",
              kRowTolerance);
  const double dmax = std::numeric_limits<double>::max();
  const std::vector<double> dims = {2, 3, 4, 5, 8, 16, 33, 60, 61, 62, 63, 64, 127, 128, 129, 2048, 4097, 65536};
  std::vector<double> kappas = {0.0, 5e-324, 1e-310, 1e-300, 1e-12, 1e-6, 1e-3, 0.1, 0.5, 1, 2, 9.99, 10,
                                30, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e12, 1e300, dmax};
  std::vector<double> coss = {-1.0, -1.0 + 1e-16, -0.999999, -0.5, 0.0, 0.3, 0.9, 1.0 - 1e-12, 1.0,
                              -1.0 + 1.5e-12, -1.0 + 0.5e-12};
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  const int random_kappas = quick ? 60 : 200;
  for (int i = 0; i < random_kappas; ++i) kappas.push_back(std::pow(10.0, -12.0 + 20.0 * u01(rng)));
  for (int i = 0; i < random_kappas / 10; ++i) kappas.push_back(std::pow(10.0, 8.0 + 300.0 * u01(rng)));
  for (int i = 0; i < 8; ++i) coss.push_back(-1.0 + 2.0 * u01(rng));
  for (int i = 0; i < 4; ++i) coss.push_back(-1.0 + std::pow(10.0, -16.0 + 15.0 * u01(rng)));
  for (int i = 0; i < 4; ++i) coss.push_back(1.0 - std::pow(10.0, -16.0 + 15.0 * u01(rng)));

  const RowLoss sentinel = {-12345.0, -12345.0, -12345.0};
  const std::vector<Width> widths = available_widths();
  std::vector<double> variant_worst(widths.size() + 1, 0.0);
  size_t rows = 0;
  for (int family : {1, 2, 0}) {
    FamilyStats stats;
    for (double dim : dims) {
      std::vector<std::pair<double, double>> pairs;  // (cos, kappa)
      for (double k : kappas)
        for (double c : coss) pairs.emplace_back(c, k);
      std::shuffle(pairs.begin(), pairs.end(), rng);  // mixed kappas within a block
      size_t i = 0;
      int n = 1;
      while (i < pairs.size()) {
        const int m = static_cast<int>(std::min<size_t>(n, pairs.size() - i));
        double cos[8], kappa[8];
        for (int j = 0; j < 8; ++j) {  // lanes >= m hold garbage that must not matter
          cos[j] = j < m ? pairs[i + j].first : std::nan("");
          kappa[j] = j < m ? pairs[i + j].second : -1.0;
        }
        const double* kappa_arg = family == vissiam::kCosine ? nullptr : kappa;
        RowLoss expected[8];
        Scales scales[8];
        for (int j = 0; j < m; ++j) {
          const double k = family == vissiam::kCosine ? 0.0 : kappa[j];
          expected[j] = vissiam::row_loss(family, cos[j], k, dim);
          scales[j] = row_scales(family, cos[j], k, dim);
        }
        // every width this CPU has, and row_loss_lanes itself called from a target_clones function
        for (size_t v = 0; v <= widths.size(); ++v) {
          RowLoss out[8];
          for (auto& o : out) o = sentinel;
          if (v < widths.size()) widths[v].block(family, cos, kappa_arg, dim, m, out, true);
          else lanes_block_clones(family, cos, kappa_arg, dim, m, out);
          if (v < widths.size()) {  // the value alone (forward without gradients): bitwise the same nll
            RowLoss value_only[8];
            widths[v].block(family, cos, kappa_arg, dim, m, value_only, false);
            for (int j = 0; j < m; ++j) {
              if (std::memcmp(&value_only[j].nll, &out[j].nll, sizeof(double)) != 0) {
                fail("%s value-only nll %.17g != %.17g (family %d, d=%g, kappa=%.17g, cos=%.17g)", widths[v].name,
                     value_only[j].nll, out[j].nll, family, dim, kappa[j], cos[j]);
              }
            }
          }
          for (int j = m; j < 8; ++j) {
            if (std::memcmp(&out[j], &sentinel, sizeof(RowLoss)) != 0) fail("lane %d >= n = %d written", j, m);
          }
          for (int j = 0; j < m; ++j) {
            const double k = family == vissiam::kCosine ? 0.0 : kappa[j];
            const RowLoss& s = expected[j];
            const Scales& sc = scales[j];
            FieldStats* st = stats.field;
            compare_value(st[0], family, 0, s.nll, out[j].nll, sc.nll, dim, k, cos[j]);
            compare_value(st[1], family, 1, s.dnll_dcos, out[j].dnll_dcos, sc.dnll_dcos, dim, k, cos[j]);
            compare_value(st[2], family, 2, s.dnll_dkappa, out[j].dnll_dkappa, sc.dnll_dkappa, dim, k, cos[j]);
            for (int f = 0; f < 3; ++f) variant_worst[v] = std::max(variant_worst[v], st[f].last_scaled);
            ++rows;
          }
        }
        i += m;
        n = n % 8 + 1;
      }
    }
    for (int f = 0; f < 3; ++f) {
      const FieldStats& st = stats.field[f];
      std::printf("  %-15s %-11s worst %.2e of scale (d=%g kappa=%.3g cos=%.3g), worst plain relative "
                  "%.2e, %.1f%% bitwise equal\n",
                  kFamilyNames[family], kFieldNames[f], st.worst_scaled, st.worst_dim, st.worst_kappa,
                  st.worst_cos, st.worst_relative, 100.0 * st.equal / st.total);
    }
  }
  std::printf("  %zu row evaluations;", rows);
  for (size_t v = 0; v < widths.size(); ++v) std::printf(" %s worst %.2e,", widths[v].name, variant_worst[v]);
  std::printf(" row_loss_lanes (width %d, from target_clones) worst %.2e\n", vissiam::row_loss_lanes_width(),
              variant_worst.back());
}

// ---------------------------------------------------------------------------------------------
// 3. Golden table

void check_golden(const char* path) {
  std::ifstream in(path);
  if (!in) {
    fail("cannot open %s", path);
    return;
  }
  std::string line;
  std::getline(in, line);  // header
  double worst[2][2][2] = {};  // [family vMF/PS][logC/dlogC][scalar/lanes]
  size_t count = 0;
  while (std::getline(in, line)) {
    std::stringstream ss(line);
    std::string family_name, dim_s, kappa_s, logc_s, dlogc_s;
    std::getline(ss, family_name, ',');
    std::getline(ss, dim_s, ',');
    std::getline(ss, kappa_s, ',');
    std::getline(ss, logc_s, ',');
    std::getline(ss, dlogc_s, ',');
    const int family = family_name == "vmf" ? vissiam::kVonMisesFisher : vissiam::kPowerSpherical;
    const int fi = family == vissiam::kVonMisesFisher ? 0 : 1;
    const double dim = std::stod(dim_s), kappa = std::stod(kappa_s);
    const double logc = std::stod(logc_s), dlogc = std::stod(dlogc_s);
    const double cos = 0.0;
    const RowLoss s = vissiam::row_loss(family, cos, kappa, dim);
    RowLoss l;
    lanes_block_clones(family, &cos, &kappa, dim, 1, &l);
    auto err = [](double ours, double exact) { return std::fabs(ours - exact) / std::max(1.0, std::fabs(exact)); };
    worst[fi][0][0] = std::max(worst[fi][0][0], err(-s.nll, logc));
    worst[fi][0][1] = std::max(worst[fi][0][1], err(-l.nll, logc));
    worst[fi][1][0] = std::max(worst[fi][1][0], err(-s.dnll_dkappa, dlogc));
    worst[fi][1][1] = std::max(worst[fi][1][1], err(-l.dnll_dkappa, dlogc));
    ++count;
  }
  std::printf("3. golden table (%zu rows; |error| / max(1, |exact|))\n", count);
  const char* fam[2] = {"vMF", "power_spherical"};
  const char* qty[2] = {"log C", "dlog C/dkappa"};
  for (int f = 0; f < 2; ++f)
    for (int q = 0; q < 2; ++q) {
      const double sc = worst[f][q][0], la = worst[f][q][1];
      std::printf("  %-15s %-14s scalar %.2e  lanes %.2e\n", fam[f], qty[q], sc, la);
      if (!(la <= 1.25 * sc + 2e-15)) fail("golden %s %s: lanes %.3g worse than scalar %.3g", fam[f], qty[q], la, sc);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Speed

// Best time per call of each function, in interleaved rounds (the machine may be shared).
template <class F>
double seconds_per_call(F f, int reps) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

void bench(std::mt19937_64& rng, int rounds) {
  std::string cpu = "unknown";
  {
    std::ifstream info("/proc/cpuinfo");
    std::string line;
    while (std::getline(info, line)) {
      if (line.rfind("model name", 0) == 0) {
        cpu = line.substr(line.find(':') + 2);
        break;
      }
    }
  }
  std::printf("4. speed, ns per row, single thread (CPU: %s)\n", cpu.c_str());
  const std::vector<Width> widths = available_widths();
  std::printf("  %-22s %-12s %8s", "case", "kappa", "scalar");
  for (const Width& w : widths) std::printf(" %8s", w.name);
  std::printf(" %8s %8s\n", "dispatch", "speedup");
  const int64_t rows = 4096;
  std::vector<double> cos(rows), kappa(rows);
  std::vector<RowLoss> out(rows);
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  struct Case {
    int family;
    double dim, lo, hi;
  };
  const Case cases[] = {{1, 3, 1e3, 1e4},    {1, 16, 1e3, 1e4},   {1, 128, 1e3, 1e4}, {1, 2048, 1e3, 1e4},
                        {2, 3, 1e3, 1e4},    {2, 128, 1e3, 1e4},  {2, 2048, 1e3, 1e4},
                        {1, 128, 1, 100},    {2, 3, 0.1, 10},     {0, 128, 1, 1}};
  volatile double sink = 0;
  for (const Case& c : cases) {
    for (int64_t i = 0; i < rows; ++i) {
      cos[i] = -1.0 + 2.0 * u01(rng);
      kappa[i] = c.lo * std::pow(c.hi / c.lo, u01(rng));
    }
    std::vector<std::function<void()>> fns;
    fns.push_back([&] { scalar_rows(c.family, cos.data(), kappa.data(), c.dim, rows, out.data()); });
    for (const Width& w : widths)
      fns.push_back([&, w] { w.rows(c.family, cos.data(), kappa.data(), c.dim, rows, out.data()); });
    fns.push_back([&] { lanes_rows_clones(c.family, cos.data(), kappa.data(), c.dim, rows, out.data()); });
    std::vector<int> reps(fns.size());
    std::vector<double> best(fns.size(), 1e300);
    for (size_t f = 0; f < fns.size(); ++f) {  // ~2 ms per timing
      reps[f] = 1;
      while (seconds_per_call(fns[f], reps[f]) * reps[f] < 2e-3) reps[f] *= 2;
    }
    for (int round = 0; round < rounds; ++round)
      for (size_t f = 0; f < fns.size(); ++f) {
        best[f] = std::min(best[f], seconds_per_call(fns[f], reps[f]));
        sink = sink + out[7].nll;
      }
    char name[64], range[32];
    std::snprintf(name, sizeof name, "%s d=%g", kFamilyNames[c.family], c.dim);
    std::snprintf(range, sizeof range, "%g..%g", c.lo, c.hi);
    std::printf("  %-22s %-12s", name, c.family ? range : "-");
    for (double t : best) std::printf(" %8.1f", t * 1e9 / rows);
    std::printf(" %7.1fx\n", best.front() / best.back());
  }
}

}  // namespace

int main(int argc, char** argv) {
  const char* golden = nullptr;
  bool run_bench = false, quick = false, checks = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--golden") && i + 1 < argc) golden = argv[++i];
    else if (!std::strcmp(argv[i], "--bench")) run_bench = true;
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--bench-only")) run_bench = true, checks = false;
    else {
      std::fprintf(stderr, "usage: %s [--golden CSV] [--bench | --bench-only] [--quick]\n", argv[0]);
      return 2;
    }
  }
  std::mt19937_64 rng(20240611);
  if (checks) {
    check_elementary_functions(rng, quick ? 200000 : 1000000);
    check_rows(rng, quick);
  }
  if (golden) check_golden(golden);
  if (run_bench) bench(rng, quick ? 5 : 25);
  if (g_failures) {
    std::printf("%d FAILURES\n", g_failures);
    return 1;
  }
  std::printf("all checks passed\n");
  return 0;
}
