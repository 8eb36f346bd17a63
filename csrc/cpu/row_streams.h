// The two streams over a pair of rows that every CPU kernel is made of, in float64 lanes:
//   row_dots_block(a, b, rows, n, out)   -> |a|^2, |b|^2, a.b of each row of a block (the forward's
//                                           read of the rows)
//   row_combination(x, y, out, n, cx, cy):  out = cx x + cy y   (a gradient row, rounded once)
// for float, double, Half and BFloat16 elements. A large output is written with non-temporal
// stores (stream_output; row_streams_fence at the end of each parallel task).
//
// Two compiled paths, picked once per process: AVX2 + FMA + F16C (x86-64-v3, also taken on
// AVX-512 machines: the streams are bound by memory, not by vector width) with the widening and
// narrowing done by single instructions (vcvtps2pd, vcvtph2ps, vpmovzxwd ...), and a portable
// one in plain vector extensions (SSE2, NEON, ...). Both include row_streams_body.inc, which
// holds the arithmetic once. Why not one target_clones function on generic 8-lane vectors: GCC
// 12 lowers 64-byte vectors in the AVX2 clone through the stack element by element, and a
// 4-float -> 4-double __builtin_convertvector into two 2-lane conversions plus shuffles via
// memory (measured: 4.8 us, then 2.1 us per float32 row of 2048; a twentieth, then a tenth
// of the bandwidth).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <algorithm>
#include <fstream>
#include <string>

#include "vissiam/spherical_math.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define VISSIAM_ROW_STREAMS_X86 1
#endif

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

#define VISSIAM_STREAM_INLINE inline __attribute__((always_inline))

namespace vissiam {

// ---------------------------------------------------------------- portable path
namespace streams_portable {

typedef double f64x4 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));
typedef uint16_t u16x4 __attribute__((vector_size(8)));
typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef int32_t i32x4 __attribute__((vector_size(16)));
typedef _Float16 f16x4 __attribute__((vector_size(8)));

template <typename scalar_t>
VISSIAM_STREAM_INLINE f64x4 load4(const scalar_t* p);
template <>
VISSIAM_STREAM_INLINE f64x4 load4<float>(const float* p) {
  f32x4 v;
  std::memcpy(&v, p, sizeof(v));
  return __builtin_convertvector(v, f64x4);
}
template <>
VISSIAM_STREAM_INLINE f64x4 load4<double>(const double* p) {
  f64x4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <>
VISSIAM_STREAM_INLINE f64x4 load4<at::Half>(const at::Half* p) {
  f16x4 h;
  std::memcpy(&h, p, sizeof(h));
  return __builtin_convertvector(__builtin_convertvector(h, f32x4), f64x4);
}
template <>
VISSIAM_STREAM_INLINE f64x4 load4<at::BFloat16>(const at::BFloat16* p) {
  u16x4 bits;  // a bfloat16 is the top half of a float32
  std::memcpy(&bits, p, sizeof(bits));
  const u32x4 wide = __builtin_convertvector(bits, u32x4) << 16;
  f32x4 v;
  std::memcpy(&v, &wide, sizeof(v));
  return __builtin_convertvector(v, f64x4);
}

template <typename scalar_t>
VISSIAM_STREAM_INLINE void store4(scalar_t* p, f64x4 v);
template <>
VISSIAM_STREAM_INLINE void store4<float>(float* p, f64x4 v) {
  const f32x4 narrow = __builtin_convertvector(v, f32x4);
  std::memcpy(p, &narrow, sizeof(narrow));
}
template <>
VISSIAM_STREAM_INLINE void store4<double>(double* p, f64x4 v) {
  std::memcpy(p, &v, sizeof(v));
}
template <>
VISSIAM_STREAM_INLINE void store4<at::Half>(at::Half* p, f64x4 v) {
  const f16x4 h = __builtin_convertvector(__builtin_convertvector(v, f32x4), f16x4);
  std::memcpy(p, &h, sizeof(h));
}
template <>
VISSIAM_STREAM_INLINE void store4<at::BFloat16>(at::BFloat16* p, f64x4 v) {
  const f32x4 narrow = __builtin_convertvector(v, f32x4);
  u32x4 bits;
  std::memcpy(&bits, &narrow, sizeof(bits));
  // c10::round_to_nearest_even: add 0x7FFF plus the lowest kept bit, keep the top 16; NaN -> 0x7FC0
  const u32x4 rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const i32x4 is_nan = narrow != narrow;
  const u32x4 result = is_nan ? u32x4{} + 0x7FC0u : rounded;
  const u16x4 halves = __builtin_convertvector(result, u16x4);
  std::memcpy(p, &halves, sizeof(halves));
}

template <typename scalar_t>
VISSIAM_STREAM_INLINE void stream8(scalar_t* p, f64x4 lo, f64x4 hi) {  // no cache-bypassing stores here
  store4(p, lo);
  store4(p + 4, hi);
}

#include "row_streams_body.inc"

}  // namespace streams_portable

// ---------------------------------------------------------------- AVX2 + FMA + F16C path
#if defined(VISSIAM_ROW_STREAMS_X86)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace streams_avx2 {

typedef double f64x4 __attribute__((vector_size(32)));

template <typename scalar_t>
VISSIAM_STREAM_INLINE f64x4 load4(const scalar_t* p);
template <>
VISSIAM_STREAM_INLINE f64x4 load4<float>(const float* p) {
  return (f64x4)_mm256_cvtps_pd(_mm_loadu_ps(p));
}
template <>
VISSIAM_STREAM_INLINE f64x4 load4<double>(const double* p) {
  return (f64x4)_mm256_loadu_pd(p);
}
template <>
VISSIAM_STREAM_INLINE f64x4 load4<at::Half>(const at::Half* p) {
  return (f64x4)_mm256_cvtps_pd(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
template <>
VISSIAM_STREAM_INLINE f64x4 load4<at::BFloat16>(const at::BFloat16* p) {
  const __m128i halves = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i wide = _mm_slli_epi32(_mm_cvtepu16_epi32(halves), 16);  // the top half of a float32
  return (f64x4)_mm256_cvtps_pd(_mm_castsi128_ps(wide));
}

template <typename scalar_t>
VISSIAM_STREAM_INLINE void store4(scalar_t* p, f64x4 v);
template <>
VISSIAM_STREAM_INLINE void store4<float>(float* p, f64x4 v) {
  _mm_storeu_ps(p, _mm256_cvtpd_ps((__m256d)v));
}
template <>
VISSIAM_STREAM_INLINE void store4<double>(double* p, f64x4 v) {
  _mm256_storeu_pd(p, (__m256d)v);
}
template <>
VISSIAM_STREAM_INLINE void store4<at::Half>(at::Half* p, f64x4 v) {
  const __m128i h = _mm_cvtps_ph(_mm256_cvtpd_ps((__m256d)v), _MM_FROUND_TO_NEAREST_INT);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), h);
}
// Four lanes as bfloat16 bit patterns in the low halves of 32-bit lanes. c10::round_to_nearest_even:
// add 0x7FFF plus the lowest kept bit, keep the top 16; NaN -> 0x7FC0.
VISSIAM_STREAM_INLINE __m128i bfloat16_bits(f64x4 v) {
  const __m128 narrow = _mm256_cvtpd_ps((__m256d)v);
  const __m128i bits = _mm_castps_si128(narrow);
  const __m128i lowest_kept = _mm_and_si128(_mm_srli_epi32(bits, 16), _mm_set1_epi32(1));
  const __m128i rounded = _mm_srli_epi32(_mm_add_epi32(_mm_add_epi32(bits, _mm_set1_epi32(0x7FFF)), lowest_kept), 16);
  const __m128i is_nan = _mm_castps_si128(_mm_cmpunord_ps(narrow, narrow));
  return _mm_blendv_epi8(rounded, _mm_set1_epi32(0x7FC0), is_nan);
}
template <>
VISSIAM_STREAM_INLINE void store4<at::BFloat16>(at::BFloat16* p, f64x4 v) {
  const __m128i bits = bfloat16_bits(v);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi32(bits, bits));
}

// Eight lanes to a 16-byte aligned address with non-temporal stores (movntps / movntdq): the
// line is written without being read first, a third less traffic for a gradient write. The
// eight results are assembled in registers (a round trip through memory would stall the store).
template <typename scalar_t>
VISSIAM_STREAM_INLINE void stream8(scalar_t* p, f64x4 lo, f64x4 hi);
template <>
VISSIAM_STREAM_INLINE void stream8<float>(float* p, f64x4 lo, f64x4 hi) {
  _mm_stream_ps(p, _mm256_cvtpd_ps((__m256d)lo));
  _mm_stream_ps(p + 4, _mm256_cvtpd_ps((__m256d)hi));
}
template <>
VISSIAM_STREAM_INLINE void stream8<double>(double* p, f64x4 lo, f64x4 hi) {
  _mm_stream_pd(p, _mm256_castpd256_pd128((__m256d)lo));
  _mm_stream_pd(p + 2, _mm256_extractf128_pd((__m256d)lo, 1));
  _mm_stream_pd(p + 4, _mm256_castpd256_pd128((__m256d)hi));
  _mm_stream_pd(p + 6, _mm256_extractf128_pd((__m256d)hi, 1));
}
template <>
VISSIAM_STREAM_INLINE void stream8<at::Half>(at::Half* p, f64x4 lo, f64x4 hi) {
  const __m256 eight = _mm256_set_m128(_mm256_cvtpd_ps((__m256d)hi), _mm256_cvtpd_ps((__m256d)lo));
  _mm_stream_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(eight, _MM_FROUND_TO_NEAREST_INT));
}
template <>
VISSIAM_STREAM_INLINE void stream8<at::BFloat16>(at::BFloat16* p, f64x4 lo, f64x4 hi) {
  // bfloat16_bits on eight lanes at once (one 256-bit register), then packed to 16 bits
  const __m256 narrow = _mm256_set_m128(_mm256_cvtpd_ps((__m256d)hi), _mm256_cvtpd_ps((__m256d)lo));
  const __m256i bits = _mm256_castps_si256(narrow);
  const __m256i lowest_kept = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7FFF)), lowest_kept), 16);
  const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(narrow, narrow, _CMP_UNORD_Q));
  const __m256i result = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), is_nan);
  _mm_stream_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi32(_mm256_castsi256_si128(result), _mm256_extracti128_si256(result, 1)));
}

#include "row_streams_body.inc"

// Eight 16-bit elements from one 16-byte load (the generic load8 makes two 8-byte loads, each
// widened on its own): bfloat16 interleaved under zero halves is the float32 bit pattern.
template <>
VISSIAM_STREAM_INLINE f64x8 load8<at::BFloat16>(const at::BFloat16* p) {
  const __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i zero = _mm_setzero_si128();
  return {(f64x4)_mm256_cvtps_pd(_mm_castsi128_ps(_mm_unpacklo_epi16(zero, halves))),
          (f64x4)_mm256_cvtps_pd(_mm_castsi128_ps(_mm_unpackhi_epi16(zero, halves)))};
}
template <>
VISSIAM_STREAM_INLINE f64x8 load8<at::Half>(const at::Half* p) {
  const __m256 wide = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return {(f64x4)_mm256_cvtps_pd(_mm256_castps256_ps128(wide)), (f64x4)_mm256_cvtps_pd(_mm256_extractf128_ps(wide, 1))};
}

}  // namespace streams_avx2
#pragma GCC pop_options

// Whether this CPU runs the AVX2 path (decided once). VISSIAM_CPU_STREAMS=portable takes the
// portable path on any CPU (how the tests check it on x86 machines).
inline bool row_streams_use_avx2() {
  static const bool use = [] {
    const char* choice = std::getenv("VISSIAM_CPU_STREAMS");
    if (choice != nullptr && std::string(choice) == "portable") return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return use;
}
#endif

// ---------------------------------------------------------------- the entry points
template <typename scalar_t>
inline void row_dots_block(const scalar_t* a, int64_t a_stride, const scalar_t* b, int64_t b_stride, int rows,
                           int64_t n, RowDots* out) {
#if defined(VISSIAM_ROW_STREAMS_X86)
  if (row_streams_use_avx2()) return streams_avx2::row_dots_block(a, a_stride, b, b_stride, rows, n, out);
#endif
  streams_portable::row_dots_block(a, a_stride, b, b_stride, rows, n, out);
}

template <typename scalar_t>
inline void row_combination(const scalar_t* x, const scalar_t* y, scalar_t* out, int64_t n, double cx,
                            double cy, bool stream = false) {
#if defined(VISSIAM_ROW_STREAMS_X86)
  if (row_streams_use_avx2()) return streams_avx2::row_combination(x, y, out, n, cx, cy, stream);
#endif
  streams_portable::row_combination(x, y, out, n, cx, cy, stream);
}

// The largest cache level that CPU 0 sees, from sysfs (the L3 of its core complex, as lscpu gives
// it); 32 MiB where sysfs does not say. Not sysconf(_SC_LEVEL3_CACHE_SIZE): glibc sums the L3 of
// every core complex there (256 MiB on an EPYC whose cores each see 32 MiB).
inline size_t last_level_cache_bytes() {
  size_t largest = 0;
  for (int index = 0; index < 8; ++index) {
    const std::string path = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size";
    std::ifstream file(path);
    size_t value = 0;
    std::string unit;
    if (!(file >> value)) continue;
    file >> unit;  // "32768K" reads as 32768 then "K"
    const size_t scale = unit == "K" ? size_t{1} << 10 : unit == "M" ? size_t{1} << 20 : unit == "G" ? size_t{1} << 30 : 1;
    largest = std::max(largest, value * scale);
  }
  return largest > 0 ? largest : size_t{32} << 20;
}

// Whether a pass that moves `traffic_bytes` (rows read plus rows written) writes its output around
// the cache: when the pass fills more than half of the last-level cache, its output is not what
// stays there, and a cached store first reads each line it writes (a gradient row: read mu, read
// target, read + write out -> four lines moved, not three). Measured on a 2-core AMD EPYC (32 MiB
// L3), vMF fwd+bwd, D = 2048 float32, inputs not in cache: B = 1024 (24 MB moved) 2.10 -> 1.69 ms,
// B = 4096 7.27 -> 6.25 ms, B = 16384 30.0 -> 25.7 ms (same-process A/B medians).
inline bool stream_output(size_t traffic_bytes) {
  static const size_t cache_bytes = last_level_cache_bytes();
  return traffic_bytes > cache_bytes / 2;
}

// Orders this thread's cache-bypassing stores before what follows (the end of a parallel task):
// they are weakly ordered, and the gradient is read by other threads once the kernel returns.
inline void row_streams_fence() {
#if defined(VISSIAM_ROW_STREAMS_X86)
  _mm_sfence();
#endif
}

}  // namespace vissiam

#undef VISSIAM_STREAM_INLINE
#pragma GCC diagnostic pop
