// Elementary functions on lanes of double: log, log1p, exp, expm1, sqrt and the hypot of
// the vMF rows, for the lane-parallel row math (vissiam/row_math_lanes.h). Host C++ only (GCC or
// Clang vector extensions), no library beyond libm.
//
// The lanes are held as hardware vectors of W doubles (vec<W>): W = 2 (SSE2, NEON; vec<2> has
// 2 lanes), 4 (AVX2; vec<4> is two of them, 8 lanes), 8 (AVX-512; 8 lanes). One 64-byte generic
// vector would be simpler to write, but where the hardware vectors are narrower GCC (12) lowers
// its comparisons and ?: selections lane by lane into scalar code (slower than scalar libm); at
// the native width they are single instructions. The caller picks W for the instruction set of
// its function (row_math_lanes.h dispatches at run time). The named functions take and return
// vec<W>; the operators + - * / (with vec<W> or double), comparisons (giving mask<W>), select,
// any/all, bits/from_bits are those of plain vectors.
//
// The algorithms are FreeBSD msun's (fdlibm): exponent extraction by bit manipulation,
// reduction to a small interval, a minimax polynomial, the special values (zeros, subnormals,
// +-inf, NaN, out-of-domain arguments) selected lane-wise at the end. Every branch of the scalar
// code is evaluated and selected with masks. Errors < 1 ulp (tests/row_math_lanes_check.cpp
// measures them against long double on millions of arguments: log 0.75-0.83, log1p 0.75-0.81,
// exp 0.87, expm1 0.80-0.82 ulp at most; the hypot of the rows, sqrt(a^2 + x^2), 1.1 ulp).
//
// Every function is `static inline __attribute__((always_inline))`, so that it is compiled
// with the instruction set of the function it ends up in.
#pragma once

#include <cstdint>

#if !defined(__GNUC__)
#error "vissiam/vector_math.h needs GCC or Clang vector extensions"
#endif

// Vectors as arguments of (always inlined) functions involve no ABI, but GCC warns (-Wpsabi)
// at the end of the including function, so the warning stays off for the rest of the
// translation unit (a push/pop around this header would not cover it).
#pragma GCC diagnostic ignored "-Wpsabi"

#define VISSIAM_LANES_INLINE static inline __attribute__((always_inline))

namespace vissiam {
namespace lanes {

// Lanes of a vec<W>: 8 (one AVX-512 vector, or two AVX2 vectors, whose independent operations
// overlap in the pipeline) or, for W = 2, just 2: four 2-lane vectors per operation would be
// four times the code (and compile time) for the baseline, which is for old or non-x86 CPUs.
template <int W> struct lanes_of {
  static constexpr int value = W >= 4 ? 8 : W;
};

template <int W> struct native_types;
template <> struct native_types<2> {
  typedef double f __attribute__((vector_size(16)));
  typedef uint64_t u __attribute__((vector_size(16)));
};
template <> struct native_types<4> {
  typedef double f __attribute__((vector_size(32)));
  typedef uint64_t u __attribute__((vector_size(32)));
};
template <> struct native_types<8> {
  typedef double f __attribute__((vector_size(64)));
  typedef uint64_t u __attribute__((vector_size(64)));
};
template <int W> using native_f = typename native_types<W>::f;
template <int W> using native_u = typename native_types<W>::u;
// The type of a lane-wise comparison of doubles (0 or all ones per lane).
template <int W> using native_m = decltype(native_f<W>{} < native_f<W>{});

// lanes_of<W> lanes of double, of mask, of uint64, as lanes_of<W> / W hardware vectors.
template <int W> struct vec {
  static constexpr int kSize = lanes_of<W>::value;
  native_f<W> p[kSize / W];
  double operator[](int i) const { return p[i / W][i % W]; }
};
template <int W> struct mask {
  native_m<W> p[lanes_of<W>::value / W];
};
template <int W> struct uvec {
  native_u<W> p[lanes_of<W>::value / W];
};

// Loops over the 8 / W hardware vectors, unrolled (left as loops, their vectors go through memory).
#define VISSIAM_LANES_EACH(i, W) _Pragma("GCC unroll 8") for (int i = 0; i < lanes_of<W>::value / (W); ++i)

#define VISSIAM_LANES_BINOP(R, T, S, OP)                                                     \
  template <int W> VISSIAM_LANES_INLINE R<W> operator OP(T<W> a, T<W> b) {                   \
    R<W> r;                                                                                  \
    VISSIAM_LANES_EACH(i, W) r.p[i] = a.p[i] OP b.p[i];                                      \
    return r;                                                                                \
  }                                                                                          \
  template <int W> VISSIAM_LANES_INLINE R<W> operator OP(T<W> a, S b) {                      \
    R<W> r;                                                                                  \
    VISSIAM_LANES_EACH(i, W) r.p[i] = a.p[i] OP b;                                           \
    return r;                                                                                \
  }                                                                                          \
  template <int W> VISSIAM_LANES_INLINE R<W> operator OP(S a, T<W> b) {                      \
    R<W> r;                                                                                  \
    VISSIAM_LANES_EACH(i, W) r.p[i] = a OP b.p[i];                                           \
    return r;                                                                                \
  }

VISSIAM_LANES_BINOP(vec, vec, double, +)
VISSIAM_LANES_BINOP(vec, vec, double, -)
VISSIAM_LANES_BINOP(vec, vec, double, *)
VISSIAM_LANES_BINOP(vec, vec, double, /)
VISSIAM_LANES_BINOP(mask, vec, double, <)
VISSIAM_LANES_BINOP(mask, vec, double, <=)
VISSIAM_LANES_BINOP(mask, vec, double, >)
VISSIAM_LANES_BINOP(mask, vec, double, >=)
VISSIAM_LANES_BINOP(mask, vec, double, ==)
VISSIAM_LANES_BINOP(uvec, uvec, uint64_t, +)
VISSIAM_LANES_BINOP(uvec, uvec, uint64_t, &)
VISSIAM_LANES_BINOP(uvec, uvec, uint64_t, |)
#undef VISSIAM_LANES_BINOP

template <int W> VISSIAM_LANES_INLINE vec<W> operator-(vec<W> a) {
  vec<W> r;
  VISSIAM_LANES_EACH(i, W) r.p[i] = -a.p[i];
  return r;
}
template <int W> VISSIAM_LANES_INLINE vec<W>& operator*=(vec<W>& a, vec<W> b) { return a = a * b; }
template <int W> VISSIAM_LANES_INLINE mask<W> operator&(mask<W> a, mask<W> b) {
  mask<W> r;
  VISSIAM_LANES_EACH(i, W) r.p[i] = a.p[i] & b.p[i];
  return r;
}
template <int W> VISSIAM_LANES_INLINE mask<W> operator|(mask<W> a, mask<W> b) {
  mask<W> r;
  VISSIAM_LANES_EACH(i, W) r.p[i] = a.p[i] | b.p[i];
  return r;
}
template <int W> VISSIAM_LANES_INLINE mask<W> operator~(mask<W> a) {
  mask<W> r;
  VISSIAM_LANES_EACH(i, W) r.p[i] = ~a.p[i];
  return r;
}
template <int W> VISSIAM_LANES_INLINE uvec<W> operator<<(uvec<W> a, int s) {
  uvec<W> r;
  VISSIAM_LANES_EACH(i, W) r.p[i] = a.p[i] << s;
  return r;
}
template <int W> VISSIAM_LANES_INLINE uvec<W> operator>>(uvec<W> a, int s) {
  uvec<W> r;
  VISSIAM_LANES_EACH(i, W) r.p[i] = a.p[i] >> s;
  return r;
}

template <int W> VISSIAM_LANES_INLINE vec<W> splat(double x) {
  vec<W> r;
  VISSIAM_LANES_EACH(i, W) r.p[i] = native_f<W>{} + x;
  return r;
}

template <int W> VISSIAM_LANES_INLINE vec<W> load(const double* p) {
  vec<W> r;
  __builtin_memcpy(&r.p[0], p, lanes_of<W>::value * sizeof(double));
  return r;
}

template <int W> VISSIAM_LANES_INLINE vec<W> select(mask<W> m, vec<W> a, vec<W> b) {
  vec<W> r;
  VISSIAM_LANES_EACH(i, W) r.p[i] = m.p[i] ? a.p[i] : b.p[i];
  return r;
}
template <int W> VISSIAM_LANES_INLINE vec<W> select(mask<W> m, vec<W> a, double b) {
  return select(m, a, splat<W>(b));
}
template <int W> VISSIAM_LANES_INLINE vec<W> select(mask<W> m, double a, vec<W> b) {
  return select(m, splat<W>(a), b);
}
template <int W> VISSIAM_LANES_INLINE vec<W> select(mask<W> m, double a, double b) {
  return select(m, splat<W>(a), splat<W>(b));
}

template <int W> VISSIAM_LANES_INLINE bool any(mask<W> m) {
  native_m<W> acc = m.p[0];
#pragma GCC unroll 8
  for (int i = 1; i < lanes_of<W>::value / W; ++i) acc |= m.p[i];
  long long r = 0;
#pragma GCC unroll 8
  for (int i = 0; i < W; ++i) r |= static_cast<long long>(acc[i]);
  return r != 0;
}
template <int W> VISSIAM_LANES_INLINE bool all(mask<W> m) { return !any(~m); }

template <int W> VISSIAM_LANES_INLINE uvec<W> bits(vec<W> x) {
  uvec<W> r;
  VISSIAM_LANES_EACH(i, W) r.p[i] = (native_u<W>)x.p[i];
  return r;
}
template <int W> VISSIAM_LANES_INLINE vec<W> from_bits(uvec<W> u) {
  vec<W> r;
  VISSIAM_LANES_EACH(i, W) r.p[i] = (native_f<W>)u.p[i];
  return r;
}

// Lane-wise sqrt, correctly rounded. __builtin_sqrt per lane is not vectorized while errno is
// kept (the compiler adds a library call for negative arguments), and the AVX builtins cannot
// appear in a function not compiled for AVX; SSE2's packed square root is in every x86-64
// function (vsqrtpd in AVX code).
template <int W> VISSIAM_LANES_INLINE vec<W> sqrt(vec<W> v) {
  vec<W> r;
#if defined(__x86_64__) || defined(__SSE2__)
  typedef double f64x2 __attribute__((vector_size(16)));
#pragma GCC unroll 8
  for (int i = 0; i < lanes_of<W>::value; i += 2) {
    f64x2 h = {v[i], v[i + 1]};
    h = __builtin_ia32_sqrtpd(h);
    r.p[i / W][i % W] = h[0];
    r.p[(i + 1) / W][(i + 1) % W] = h[1];
  }
#else
  for (int i = 0; i < lanes_of<W>::value; ++i) r.p[i / W][i % W] = __builtin_sqrt(v[i]);
#endif
  return r;
}

namespace detail {
// fdlibm's log/log1p: log(1+f) = f - hfsq + s (hfsq + R(s^2)), s = f/(2+f).
constexpr double kLn2Hi = 6.93147180369123816490e-01;  // 0x3fe62e42 fee00000
constexpr double kLn2Lo = 1.90821492927058770002e-10;  // 0x3dea39ef 35793c76
constexpr double kInvLn2 = 1.44269504088896338700e+00;
constexpr double kLg1 = 6.666666666666735130e-01;
constexpr double kLg2 = 3.999999999940941908e-01;
constexpr double kLg3 = 2.857142874366239149e-01;
constexpr double kLg4 = 2.222219843214978396e-01;
constexpr double kLg5 = 1.818357216161805012e-01;
constexpr double kLg6 = 1.531383769920937332e-01;
constexpr double kLg7 = 1.479819860511658591e-01;
constexpr double kSqrt2 = 1.41421356237309514547;  // 0x3ff6a09e 667f3bcd
constexpr uint64_t kMantissaMask = 0x000fffffffffffffull;
constexpr uint64_t kOneBits = 0x3ff0000000000000ull;

// R(z), z = s^2, split in odd and even parts as in fdlibm.
template <int W> VISSIAM_LANES_INLINE vec<W> log_poly(vec<W> z) {
  const vec<W> w = z * z;
  const vec<W> t1 = w * (kLg2 + w * (kLg4 + w * kLg6));
  const vec<W> t2 = z * (kLg1 + w * (kLg3 + w * (kLg5 + w * kLg7)));
  return t2 + t1;
}

// Integers 0 <= e < 2^52 to double, exactly (no int64 -> double instruction before AVX-512).
template <int W> VISSIAM_LANES_INLINE vec<W> small_uint_to_double(uvec<W> e) {
  return from_bits(e | 0x4330000000000000ull) - 0x1p52;
}

// x = 2^k m with m in [sqrt(2)/2, sqrt(2)), for positive normal x: k and f = m - 1.
template <int W> VISSIAM_LANES_INLINE void split_exponent(vec<W> x, vec<W>& k, vec<W>& f) {
  const uvec<W> hx = bits(x);
  const vec<W> m = from_bits((hx & kMantissaMask) | kOneBits);  // [1, 2)
  const mask<W> upper = m >= kSqrt2;
  f = select(upper, m * 0.5, m) - 1.0;  // exact
  k = small_uint_to_double((hx >> 52) & 0x7ffu) - 1023.0 + select(upper, 1.0, 0.0);
}
}  // namespace detail

namespace detail {
// log x (fdlibm e_log.c); kGeneral = false: for positive normal finite x only (no special cases).
template <int W, bool kGeneral> VISSIAM_LANES_INLINE vec<W> log_impl(vec<W> x) {
  vec<W> k, f;
  mask<W> subnormal;
  if (kGeneral) {
    subnormal = (x < 0x1p-1022) & (x > 0.0);
    split_exponent(select(subnormal, x * 0x1p54, x), k, f);
    k = k + select(subnormal, -54.0, 0.0);
  } else {
    split_exponent(x, k, f);
  }
  const vec<W> hfsq = 0.5 * f * f;
  const vec<W> s = f / (2.0 + f);
  const vec<W> r = log_poly(s * s);
  const vec<W> result = k * kLn2Hi - ((hfsq - (s * (hfsq + r) + k * kLn2Lo)) - f);
  if (!kGeneral) return result;
  // log(+-0) = -inf, log(x < 0) = NaN, log(inf) = inf, log(NaN) = NaN.
  const mask<W> regular = (x > 0.0) & (x < __builtin_inf());
  const vec<W> special =
      select(x == 0.0, -__builtin_inf(), select(x < 0.0, __builtin_nan(""), x + x));
  return select(regular, result, special);
}

// log(1 + x) (fdlibm s_log1p.c): 1 + x = 2^k (1 + f), plus the correction c / u for the rounding
// of u = 1 + x. kGeneral = false: for finite x > -1 only.
template <int W, bool kGeneral> VISSIAM_LANES_INLINE vec<W> log1p_impl(vec<W> x) {
  // sqrt(2)/2 - 1 < x < sqrt(2) - 1 (fdlibm's thresholds): f = x exactly, k = 0, no c.
  const mask<W> near_zero = (x < 0.41421353816986084) & (x > -0.29289321601390839);
  const vec<W> u = 1.0 + x;
  vec<W> k_u, f_u;
  split_exponent(kGeneral ? select(u > 0.0, u, 1.0) : u, k_u, f_u);
  // x >= 2^53: 1 + x == x, no correction.
  const vec<W> correction =
      select(x >= 0x1p53, 0.0, select(u >= 2.0, 1.0 - (u - x), x - (u - 1.0)) / u);
  const vec<W> f = select(near_zero, x, f_u);
  const vec<W> k = select(near_zero, 0.0, k_u);
  const vec<W> c = select(near_zero, 0.0, correction);
  const vec<W> hfsq = 0.5 * f * f;
  const vec<W> s = f / (2.0 + f);
  const vec<W> r = log_poly(s * s);
  // With k = 0 and c = 0 this is f - (hfsq - s (hfsq + R)) exactly, fdlibm's k == 0 form.
  const vec<W> result = k * kLn2Hi - ((hfsq - (s * (hfsq + r) + (k * kLn2Lo + c))) - f);
  // |x| < 2^-54 (zeros of either sign, subnormals): x.
  const mask<W> tiny = (x < 0x1p-54) & (x > -0x1p-54);
  if (!kGeneral) return select(tiny, x, result);
  // -1: -inf, < -1: NaN, inf: inf, NaN: NaN.
  const mask<W> regular = (x > -1.0) & (x < __builtin_inf());
  const vec<W> special =
      select(x == -1.0, -__builtin_inf(), select(x < -1.0, __builtin_nan(""), x + x));
  return select(tiny, x, select(regular, result, special));
}
}  // namespace detail

// log x, any x.
template <int W> VISSIAM_LANES_INLINE vec<W> log(vec<W> x) { return detail::log_impl<W, true>(x); }
// log x for positive normal finite x (the same values, without the special cases).
template <int W> VISSIAM_LANES_INLINE vec<W> log_normal(vec<W> x) {
  return detail::log_impl<W, false>(x);
}
// log(1 + x), any x.
template <int W> VISSIAM_LANES_INLINE vec<W> log1p(vec<W> x) {
  return detail::log1p_impl<W, true>(x);
}
// log(1 + x) for finite x > -1 (the same values, without the special cases).
template <int W> VISSIAM_LANES_INLINE vec<W> log1p_finite(vec<W> x) {
  return detail::log1p_impl<W, false>(x);
}

namespace detail {
// fdlibm's exp: exp(r) = 1 + r + r c / (2 - c), c = r - r^2 (P1 + r^2 (P2 + ...)).
constexpr double kExpP1 = 1.66666666666666019037e-01;
constexpr double kExpP2 = -2.77777777770155933842e-03;
constexpr double kExpP3 = 6.61375632143793436117e-05;
constexpr double kExpP4 = -1.65339022054652515390e-06;
constexpr double kExpP5 = 4.13813679705723846039e-08;
constexpr double kExpOverflow = 7.09782712893383973096e+02;
constexpr double kExpUnderflow = -7.45133219101941108420e+02;
constexpr double kExpm1MinusOne = -3.88162421113569373274e+01;  // below: expm1 = -1
// fdlibm's expm1: rational approximation on [-ln2/2, ln2/2].
constexpr double kExpm1Q1 = -3.33333333333331316428e-02;
constexpr double kExpm1Q2 = 1.58730158725481460165e-03;
constexpr double kExpm1Q3 = -7.93650757867487942473e-05;
constexpr double kExpm1Q4 = 4.00821782732936239552e-06;
constexpr double kExpm1Q5 = -2.01099218183624371326e-07;

// round(x / ln 2) as an integer-valued double (|x| < 2^50).
template <int W> VISSIAM_LANES_INLINE vec<W> nearest_multiple_of_ln2(vec<W> x) {
  return (x * kInvLn2 + 0x1.8p52) - 0x1.8p52;
}

// 2^k for integer-valued k in [-1022, 1023], from the exponent field: k + 0x1.8p52 holds k in
// its low mantissa bits (two's complement); adding the bias and shifting the field into place
// drops everything above.
template <int W> VISSIAM_LANES_INLINE vec<W> pow2i(vec<W> k) {
  return from_bits((bits(k + 0x1.8p52) + 1023u) << 52);
}

// y 2^k for integer k in [-1080, 1024] with one rounding: in two steps, the first exact, where
// 2^k is not a normal number (fdlibm's y * 2 * 2^1023 and y * 2^(k+1000) * 2^-1000).
template <int W> VISSIAM_LANES_INLINE vec<W> scale_by_pow2(vec<W> y, vec<W> k) {
  const vec<W> k1 = select(k > 1000.0, 512.0, select(k < -1000.0, -512.0, 0.0));
  return y * pow2i(k1) * pow2i(k - k1);
}
}  // namespace detail

// e^x (fdlibm e_exp.c): x = k ln2 + r, |r| <= ln2/2, r = hi - lo.
template <int W> VISSIAM_LANES_INLINE vec<W> exp(vec<W> x) {
  using namespace detail;
  // Arguments kept in range (NaN to 0) so that the lanes selected away stay finite.
  const vec<W> xc = select(x > 710.0, 710.0, select(x < -746.0, -746.0, select(x == x, x, 0.0)));
  const vec<W> k = nearest_multiple_of_ln2(xc);
  const vec<W> hi = xc - k * kLn2Hi;  // exact
  const vec<W> lo = k * kLn2Lo;
  const vec<W> r = hi - lo;
  const vec<W> t = r * r;
  const vec<W> c = r - t * (kExpP1 + t * (kExpP2 + t * (kExpP3 + t * (kExpP4 + t * kExpP5))));
  const vec<W> y = 1.0 - ((lo - (r * c) / (2.0 - c)) - hi);
  const vec<W> result = scale_by_pow2(y, k);
  // Overflow to inf, underflow to 0 (-inf included), NaN to NaN.
  return select(x > kExpOverflow, __builtin_inf(),
                select(x < kExpUnderflow, 0.0, select(x == x, result, x + x)));
}

// e^x - 1 (fdlibm s_expm1.c), to full relative precision near 0.
template <int W> VISSIAM_LANES_INLINE vec<W> expm1(vec<W> x) {
  using namespace detail;
  const vec<W> xc = select(x > 710.0, 710.0, select(x < -40.0, -40.0, select(x == x, x, 0.0)));
  // k = 0 for |x| <= ln2/2: then hi = x, lo = 0, c = 0.
  const vec<W> k = nearest_multiple_of_ln2(xc);
  const vec<W> hi = xc - k * kLn2Hi;
  const vec<W> lo = k * kLn2Lo;
  const vec<W> r = hi - lo;
  const vec<W> c = (hi - r) - lo;
  const vec<W> hfx = 0.5 * r;
  const vec<W> hxs = r * hfx;
  const vec<W> r1 = 1.0 + hxs * (kExpm1Q1 + hxs * (kExpm1Q2 + hxs * (kExpm1Q3 + hxs * (kExpm1Q4 +
                    hxs * kExpm1Q5))));
  const vec<W> t = 3.0 - r1 * hfx;
  const vec<W> e0 = hxs * ((r1 - t) / (6.0 - r * t));
  // k == 0
  const vec<W> res_k0 = r - (r * e0 - hxs);
  // k != 0
  const vec<W> e = (r * (e0 - c) - c) - hxs;
  const vec<W> res_km1 = 0.5 * (r - e) - 0.5;
  const vec<W> res_k1 = select(r < -0.25, -2.0 * (e - (r + 0.5)), 1.0 + 2.0 * (r - e));
  // k <= -2 or k > 56: exp(x) - 1 from exp(x)
  const vec<W> res_far = scale_by_pow2(1.0 - (e - r), k) - 1.0;
  // 2 <= k < 20: (1 - 2^-k - (e - r)) 2^k;  20 <= k <= 56: ((r - (e + 2^-k)) + 1) 2^k
  const vec<W> kc = select(k > 60.0, 60.0, select(k < -60.0, -60.0, k));
  const vec<W> two_to_minus_k = pow2i(-kc);
  const vec<W> two_to_k = pow2i(kc);
  const vec<W> res_mid = ((1.0 - two_to_minus_k) - (e - r)) * two_to_k;
  const vec<W> res_high = ((r - (e + two_to_minus_k)) + 1.0) * two_to_k;
  const vec<W> result =
      select(k == 0.0, res_k0,
      select(k == -1.0, res_km1,
      select(k == 1.0, res_k1,
      select((k <= -2.0) | (k > 56.0), res_far,
      select(k < 20.0, res_mid, res_high)))));
  // |x| < 2^-54 (zeros, subnormals): x. x > 709.78: inf. x < -56 ln2 (-inf too): -1. NaN: NaN.
  return select(x > kExpOverflow, __builtin_inf(),
         select(x < kExpm1MinusOne, -1.0,
         select(x == x, select((x < 0x1p-54) & (x > -0x1p-54), x, result), x + x)));
}

// hypot(a, x) for a common order 1 <= a <= 2^20 and lanes x >= 0 (any finite x, inf, NaN):
// sqrt(a^2 + x^2) where x^2 cannot overflow (< 1.1 ulp); from 2^500 on, a^2 / (2x) is far
// below half an ulp of x and hypot(a, x) rounds to x.
template <int W> VISSIAM_LANES_INLINE vec<W> hypot_order(double a, vec<W> x) {
  const mask<W> moderate = x < 0x1p500;
  const vec<W> xs = select(moderate, x, 0.0);
  return select(moderate, sqrt(a * a + xs * xs), x);
}

}  // namespace lanes
}  // namespace vissiam
