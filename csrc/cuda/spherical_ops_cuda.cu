// Fused CUDA kernels of the vissiam_kernels ops (schemas in csrc/ops.cpp; the
// CPU twin, whose outputs these match, is csrc/cpu/spherical_ops_cpu.cpp).
//
// Minimum traffic per training step: spherical_nll reads each (mu, target) row
// once and writes 5 doubles per row (the NLL and the row state from which every
// gradient follows, spherical_math.h RowGradientCoefficients);
// scaled_row_combination, the whole backward, reads mu and target once and
// writes one gradient.
//
// Row reductions. A row is served by a group of G threads (G a power of two,
// 32 <= G <= 512): G = 32 is warp-per-row, G = 512 is block-per-row. G grows
// with D (never more threads than 16-byte vectors in the row) and shrinks as
// the batch grows (rows * G ~ the device's resident threads), so a training
// batch (B = 512, D = 2048) still fills the GPU while B = 64K rows run a warp
// each. Loads are 16 bytes wide when the row starts and the row stride allow
// it, scalar otherwise (an odd D in float32, an offset view), and each thread
// issues several before using the first. Kernel-argument tables carry up to
// kMaxViews views, so both views of a VI-SimSiam step are one launch; kappa,
// scale and coefficients are read in place in any float dtype and stride.
//
// Precision. |mu|^2, |t|^2 and mu.t are accumulated in float64: on the target
// GPUs (A100, H100, H200: FP64 at 1/2 of FP32) the three DFMA and two F2F
// conversions per element pair cost well under the memory time, and float32
// accumulation would miss the CPU kernel's 1e-6 NLL target where 1 + c is small
// (power spherical, kappa * log1p(c)). The gradient combination is likewise
// formed in double and rounded once, because mu_coef * mu + cross_coef * t
// cancels to O(sqrt(1 - c^2)) as c -> 1. Per-row scalar math runs in double
// through the shared header, in a non-inlined function so that its registers
// do not weigh on the streaming loop.
//
// Determinism: every sum is taken in a fixed order (butterfly shuffles, then
// the warps of a row in index order); no atomics. The order depends on D, the
// dtype, the alignment and the batch size, never on scheduling.
//
// Invalid kappa (negative, NaN, inf) cannot be reported without a host
// synchronization, so the kernels raise an asynchronous device-side assert
// (CUDA_KERNEL_ASSERT: "device-side assert triggered" at the next
// synchronization, after which the CUDA context is unusable, as with torch's
// own index checks) and, should asserts be compiled out, write NaN into the
// row's outputs: never a finite wrong answer.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "vissiam/op_checks.h"
#include "vissiam/special_function_table.h"
#include "vissiam/spherical_math.h"

namespace vissiam {
namespace {

#define CHECK_ARG VISSIAM_CHECK_ARG
#define CHECK_ON_DEVICE VISSIAM_CHECK_ON_DEVICE

constexpr int kMaxRowThreads = 512;
constexpr int kMinBlockThreads = 256;
constexpr int kWarp = 32;
// Views served by one launch (a two-view VI-SimSiam call is one launch).
constexpr int kMaxViews = 4;
// 16-byte vectors per input a thread loads before using the first (memory-level
// parallelism); two for 16-bit types, whose 8-element vectors cost more registers
// once converted to double.
template <int VEC>
constexpr int loads_in_flight() {
  return VEC >= 8 ? 2 : 4;
}

// ---------------------------------------------------------------- element access
template <typename T>
__device__ __forceinline__ double to_double(T x) {
  return static_cast<double>(static_cast<float>(x));
}
template <>
__device__ __forceinline__ double to_double<double>(double x) {
  return x;
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Vector {
  T v[N];
};

// 1-D per-row inputs (kappa, scale, coefficients) arrive in any floating dtype
// and stride (a scalar kappa or a "mean" gradient is expanded, stride 0); they
// are read in place rather than converted by extra kernels.
enum ScalarCode : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct StridedScalars {
  const void* data;
  int64_t stride;
  int code;
};

__device__ __forceinline__ double load_scalar(const StridedScalars& s, int64_t i) {
  const int64_t offset = i * s.stride;
  switch (s.code) {
    case kFloat64:
      return static_cast<const double*>(s.data)[offset];
    case kFloat16:
      return to_double(static_cast<const at::Half*>(s.data)[offset]);
    case kBFloat16:
      return to_double(static_cast<const at::BFloat16*>(s.data)[offset]);
    default:
      return static_cast<double>(static_cast<const float*>(s.data)[offset]);
  }
}

int scalar_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return kFloat32;
    case at::kDouble:
      return kFloat64;
    case at::kHalf:
      return kFloat16;
    case at::kBFloat16:
      return kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, "expected a float16, bfloat16, float32 or float64 tensor; got ", t);
  }
  return kFloat32;  // unreachable
}

StridedScalars strided_scalars(const at::Tensor& t) {
  return StridedScalars{t.data_ptr(), t.dim() == 0 ? 0 : t.stride(0), scalar_code(t.scalar_type())};
}

// ---------------------------------------------------------------- launch layout
// Only c10/cuda and the CUDA runtime are included (not ATen/cuda/CUDAContext.h,
// which needs the cuBLAS/cuSPARSE headers): a minimal toolkit builds this file.
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Threads the current device keeps resident, and its multiprocessor count.
struct DeviceShape {
  int multiprocessors;
  int threads_per_multiprocessor;
};

DeviceShape current_device_shape() {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  DeviceShape shape{};
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&shape.multiprocessors, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&shape.threads_per_multiprocessor,
                                        cudaDevAttrMaxThreadsPerMultiProcessor, device));
  return shape;
}

// G threads per row (blockDim.x), rows_per_block rows per block (blockDim.y).
struct RowLayout {
  int row_threads;
  int rows_per_block;
};

RowLayout choose_layout(int64_t rows, int64_t dim, int vector_width) {
  const DeviceShape device = current_device_shape();
  const int64_t resident = static_cast<int64_t>(device.multiprocessors) * device.threads_per_multiprocessor;
  const int64_t vectors = (dim + vector_width - 1) / vector_width;
  const int64_t wanted = (resident + rows - 1) / std::max<int64_t>(rows, 1);
  int g = kWarp;
  while (g < kMaxRowThreads && g < wanted && 2 * g <= vectors) g *= 2;
  return RowLayout{g, std::max(1, kMinBlockThreads / g)};
}

int64_t row_blocks(int64_t rows, const RowLayout& layout) {
  const int64_t blocks = (rows + layout.rows_per_block - 1) / layout.rows_per_block;
  CHECK_ARG(blocks <= std::numeric_limits<int>::max(), "too many rows for one launch: ", rows);
  return blocks;
}

// 16-byte vectors are usable when every row of every tensor starts 16-byte aligned.
bool aligned16(const void* ptr, int64_t row_stride, size_t element_size) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 &&
         (static_cast<uint64_t>(row_stride) * element_size) % 16 == 0;
}

// A (B, D) view with unit stride along D (any row stride, including 0).
at::Tensor unit_inner_stride(const at::Tensor& x) {
  return x.size(1) <= 1 || x.stride(1) == 1 ? x : x.contiguous();
}

// Sum over the G threads of each row; the result is valid in thread x == 0 of
// the row. Every thread of the block must call it (it synchronizes).
__device__ __forceinline__ RowDots reduce_row(RowDots d, double (*scratch)[3]) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    d.mu_mu += __shfl_xor_sync(0xffffffffu, d.mu_mu, offset);
    d.target_target += __shfl_xor_sync(0xffffffffu, d.target_target, offset);
    d.mu_target += __shfl_xor_sync(0xffffffffu, d.mu_target, offset);
  }
  const int warps_per_row = blockDim.x / kWarp;
  if (warps_per_row == 1) return d;
  const int warp = (threadIdx.y * blockDim.x + threadIdx.x) / kWarp;
  if (threadIdx.x % kWarp == 0) {
    scratch[warp][0] = d.mu_mu;
    scratch[warp][1] = d.target_target;
    scratch[warp][2] = d.mu_target;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    d = RowDots{0.0, 0.0, 0.0};
    for (int w = warp; w < warp + warps_per_row; ++w) {
      d.mu_mu += scratch[w][0];
      d.target_target += scratch[w][1];
      d.mu_target += scratch[w][2];
    }
  }
  return d;
}

// ---------------------------------------------------------------- spherical_nll
struct NllLaunch {
  const void* mu[kMaxViews];
  const void* target[kMaxViews];
  int64_t mu_stride[kMaxViews];
  int64_t target_stride[kMaxViews];
  StridedScalars kappa[kMaxViews];
  int64_t view_end[kMaxViews];  // rows of views 0..v, counted from this launch's first row
  int64_t rows;                 // rows in this launch
  int64_t first_row;            // global index (across all views) of this launch's first row
  int64_t dim;
  void* nll;                    // (total rows,) float32, or float64 if nll_double
  bool nll_double;
  double* row_state;            // (total rows, 4)
  int family;
};

struct RowResult {
  double nll;
  RowGradientCoefficients grad;
  double dnll_dkappa;
};

// The per-row scalar math, once per row; kept out of line (see the file comment).
__device__ __noinline__ RowResult finish_row(int family, double dim, RowDots dots, double kappa) {
  RowResult r;
  if (!valid_kappa(kappa)) {
    const double nan = ::nan("");
    r.nll = r.grad.mu_coef = r.grad.target_coef = r.grad.cross_coef = r.dnll_dkappa = nan;
    return r;
  }
  const RowLoss loss = row_loss(family, row_cosine(dots), kappa, dim);
  r.nll = loss.nll;
  r.grad = row_gradient_coefficients(dots, loss.dnll_dcos);
  r.dnll_dkappa = loss.dnll_dkappa;
  return r;
}

template <typename scalar_t, int VEC>
__device__ __forceinline__ void accumulate_row(const scalar_t* m, const scalar_t* t, int64_t dim,
                                               RowDots& d) {
  using V = Vector<scalar_t, VEC>;
  constexpr int kLoadsInFlight = loads_in_flight<VEC>();
  const int64_t vectors = dim / VEC;
  const V* mv = reinterpret_cast<const V*>(m);
  const V* tv = reinterpret_cast<const V*>(t);
  // kLoadsInFlight vectors of each input are loaded (predicated) before the
  // first is used; the zero fill past the end adds exact zeros.
  for (int64_t base = threadIdx.x; base < vectors; base += kLoadsInFlight * blockDim.x) {
    V a[kLoadsInFlight], b[kLoadsInFlight];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int64_t j = base + u * static_cast<int64_t>(blockDim.x);
      if (j < vectors) {
        a[u] = mv[j];
        b[u] = tv[j];
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) a[u].v[k] = b[u].v[k] = scalar_t(0);
      }
    }
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const double x = to_double(a[u].v[k]);
        const double y = to_double(b[u].v[k]);
        d.mu_mu += x * x;
        d.target_target += y * y;
        d.mu_target += x * y;
      }
    }
  }
  if (VEC > 1) {
    for (int64_t j = vectors * VEC + threadIdx.x; j < dim; j += blockDim.x) {
      const double x = to_double(m[j]);
      const double y = to_double(t[j]);
      d.mu_mu += x * x;
      d.target_target += y * y;
      d.mu_target += x * y;
    }
  }
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kMaxRowThreads)
    spherical_nll_kernel(const NllLaunch p) {
  __shared__ double scratch[kMaxRowThreads / kWarp][3];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row < p.rows;
  int v = 0;
  RowDots dots{0.0, 0.0, 0.0};
  if (active) {
    while (row >= p.view_end[v]) ++v;
    const int64_t local = row - (v == 0 ? 0 : p.view_end[v - 1]);
    accumulate_row<scalar_t, VEC>(static_cast<const scalar_t*>(p.mu[v]) + local * p.mu_stride[v],
                                  static_cast<const scalar_t*>(p.target[v]) + local * p.target_stride[v],
                                  p.dim, dots);
  }
  dots = reduce_row(dots, scratch);
  if (!active || threadIdx.x != 0) return;

  const int64_t local = row - (v == 0 ? 0 : p.view_end[v - 1]);
  const double kappa = p.family == kCosine ? 0.0 : load_scalar(p.kappa[v], local);
  CUDA_KERNEL_ASSERT(valid_kappa(kappa) && "kappa must be finite and >= 0");
  const RowResult r = finish_row(p.family, static_cast<double>(p.dim), dots, kappa);
  const int64_t out = p.first_row + row;
  if (p.nll_double) {
    static_cast<double*>(p.nll)[out] = r.nll;
  } else {
    static_cast<float*>(p.nll)[out] = static_cast<float>(r.nll);
  }
  double* state = p.row_state + 4 * out;
  state[0] = r.grad.mu_coef;
  state[1] = r.grad.target_coef;
  state[2] = r.grad.cross_coef;
  state[3] = r.dnll_dkappa;
}

template <typename scalar_t>
void launch_spherical_nll(NllLaunch& p, bool vectorized) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int width = vectorized ? kVec : 1;
  const RowLayout layout = choose_layout(p.rows, p.dim, width);
  const dim3 block(layout.row_threads, layout.rows_per_block);
  const dim3 grid(static_cast<unsigned>(row_blocks(p.rows, layout)));
  const cudaStream_t stream = current_stream();
  if (vectorized) {
    spherical_nll_kernel<scalar_t, kVec><<<grid, block, 0, stream>>>(p);
  } else {
    spherical_nll_kernel<scalar_t, 1><<<grid, block, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> spherical_nll_cuda(at::TensorList mu, at::TensorList target,
                                                      at::TensorList kappa, int64_t family) {
  check_nll_views(mu, target, kappa, family, at::kCUDA);
  const c10::cuda::CUDAGuard device_guard(mu[0].device());
  const int64_t dim = mu[0].size(1);
  int64_t total_rows = 0;
  bool any_double = false;
  for (size_t v = 0; v < mu.size(); ++v) {
    total_rows += mu[v].size(0);
    any_double |= mu[v].scalar_type() == at::kDouble;
    if (family != kCosine) any_double |= kappa[v].scalar_type() == at::kDouble;
  }
  const auto options = mu[0].options();
  at::Tensor nll = at::empty({total_rows}, options.dtype(any_double ? at::kDouble : at::kFloat));
  at::Tensor row_state = at::empty({total_rows, 4}, options.dtype(at::kDouble));
  if (total_rows == 0) return {nll, row_state};

  // Views of one dtype go together, up to kMaxViews per launch.
  std::vector<at::Tensor> keep_alive;  // unit-stride copies, until the launches are queued
  size_t v = 0;
  int64_t first_row = 0;
  while (v < mu.size()) {
    NllLaunch p{};
    p.dim = dim;
    p.family = static_cast<int>(family);
    p.nll = nll.data_ptr();
    p.nll_double = any_double;
    p.row_state = row_state.data_ptr<double>();
    p.first_row = first_row;
    const at::ScalarType dtype = mu[v].scalar_type();
    const size_t element_size = c10::elementSize(dtype);
    bool vectorized = true;
    int n = 0;
    int64_t rows = 0;
    for (; v < mu.size() && n < kMaxViews && mu[v].scalar_type() == dtype; ++v) {
      const at::Tensor m = unit_inner_stride(mu[v]);
      const at::Tensor t = unit_inner_stride(target[v]);
      keep_alive.push_back(m);
      keep_alive.push_back(t);
      p.mu[n] = m.data_ptr();
      p.target[n] = t.data_ptr();
      p.mu_stride[n] = m.stride(0);
      p.target_stride[n] = t.stride(0);
      vectorized &= aligned16(p.mu[n], p.mu_stride[n], element_size) &&
                    aligned16(p.target[n], p.target_stride[n], element_size);
      if (family != kCosine) p.kappa[n] = strided_scalars(kappa[v]);
      rows += m.size(0);
      p.view_end[n] = rows;
      ++n;
    }
    for (int k = n; k < kMaxViews; ++k) p.view_end[k] = rows;
    p.rows = rows;
    if (rows > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "spherical_nll_cuda",
                                      [&] { launch_spherical_nll<scalar_t>(p, vectorized); });
    }
    first_row += rows;
  }
  return {nll, row_state};
}

// ---------------------------------------------------------------- scaled_row_combination
struct CombinationLaunch {
  const void* x[kMaxViews];
  const void* y[kMaxViews];
  void* out[kMaxViews];
  int64_t x_stride[kMaxViews];
  int64_t y_stride[kMaxViews];
  int64_t view_end[kMaxViews];
  int64_t rows;
  int64_t first_row;
  int64_t dim;
  StridedScalars scale;
  StridedScalars coef_x;
  StridedScalars coef_y;
};

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kMaxRowThreads)
    scaled_row_combination_kernel(const CombinationLaunch p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= p.rows) return;
  int v = 0;
  while (row >= p.view_end[v]) ++v;
  const int64_t local = row - (v == 0 ? 0 : p.view_end[v - 1]);
  const int64_t r = p.first_row + row;
  const double s = load_scalar(p.scale, r);
  const double a = s * load_scalar(p.coef_x, r);
  const double b = s * load_scalar(p.coef_y, r);
  const scalar_t* x = static_cast<const scalar_t*>(p.x[v]) + local * p.x_stride[v];
  const scalar_t* y = static_cast<const scalar_t*>(p.y[v]) + local * p.y_stride[v];
  scalar_t* o = static_cast<scalar_t*>(p.out[v]) + local * p.dim;

  using V = Vector<scalar_t, VEC>;
  constexpr int kLoadsInFlight = loads_in_flight<VEC>();
  const int64_t vectors = p.dim / VEC;
  const V* xv = reinterpret_cast<const V*>(x);
  const V* yv = reinterpret_cast<const V*>(y);
  V* ov = reinterpret_cast<V*>(o);
  for (int64_t base = threadIdx.x; base < vectors; base += kLoadsInFlight * blockDim.x) {
    V xs[kLoadsInFlight], ys[kLoadsInFlight];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int64_t j = base + u * static_cast<int64_t>(blockDim.x);
      if (j < vectors) {
        xs[u] = xv[j];
        ys[u] = yv[j];
      }
    }
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int64_t j = base + u * static_cast<int64_t>(blockDim.x);
      if (j < vectors) {
        V oj;
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          oj.v[k] = static_cast<scalar_t>(a * to_double(xs[u].v[k]) + b * to_double(ys[u].v[k]));
        }
        ov[j] = oj;
      }
    }
  }
  if (VEC > 1) {
    for (int64_t j = vectors * VEC + threadIdx.x; j < p.dim; j += blockDim.x) {
      o[j] = static_cast<scalar_t>(a * to_double(x[j]) + b * to_double(y[j]));
    }
  }
}

template <typename scalar_t>
void launch_scaled_row_combination(const CombinationLaunch& p, bool vectorized) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  const RowLayout layout = choose_layout(p.rows, p.dim, vectorized ? kVec : 1);
  const dim3 block(layout.row_threads, layout.rows_per_block);
  const dim3 grid(static_cast<unsigned>(row_blocks(p.rows, layout)));
  const cudaStream_t stream = current_stream();
  if (vectorized) {
    scaled_row_combination_kernel<scalar_t, kVec><<<grid, block, 0, stream>>>(p);
  } else {
    scaled_row_combination_kernel<scalar_t, 1><<<grid, block, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::vector<at::Tensor> scaled_row_combination_cuda(const at::Tensor& scale, const at::Tensor& coef_x,
                                                    const at::Tensor& coef_y, at::TensorList x,
                                                    at::TensorList y) {
  CHECK_ARG(x.size() == y.size(), "x and y must hold the same number of views; got ", x.size(),
            " and ", y.size());
  const at::Device device = scale.device();
  CHECK_ARG(device.is_cuda(), "scale must be a CUDA tensor; got ", device);
  int64_t total_rows = 0;
  for (size_t v = 0; v < x.size(); ++v) {
    CHECK_ON_DEVICE(x[v], device, "x[", v, "]");
    CHECK_ON_DEVICE(y[v], device, "y[", v, "]");
    CHECK_ARG(x[v].dim() == 2 && y[v].sizes() == x[v].sizes(), "x[", v, "] and y[", v,
              "] must be matching (B, D) tensors; got ", x[v].sizes(), " and ", y[v].sizes());
    CHECK_ARG(y[v].scalar_type() == x[v].scalar_type(), "y[", v, "] must have x's dtype ",
              x[v].scalar_type(), "; got ", y[v].scalar_type());
    TORCH_CHECK_TYPE(at::isFloatingType(x[v].scalar_type()), "x[", v,
                     "] must be a floating point tensor; got ", x[v].scalar_type());
    total_rows += x[v].size(0);
  }
  const char* names[] = {"scale", "coef_x", "coef_y"};
  const at::Tensor* coefficients[] = {&scale, &coef_x, &coef_y};
  for (int k = 0; k < 3; ++k) {
    const at::Tensor& c = *coefficients[k];
    CHECK_ON_DEVICE(c, device, names[k]);
    CHECK_ARG(c.dim() == 1 && c.size(0) == total_rows, names[k], " must have shape (", total_rows,
              ",); got ", c.sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(c.scalar_type()), names[k],
                     " must be a floating point tensor; got ", c.scalar_type());
  }
  const c10::cuda::CUDAGuard device_guard(device);

  std::vector<at::Tensor> outputs;
  std::vector<at::Tensor> keep_alive;
  size_t v = 0;
  int64_t first_row = 0;
  while (v < x.size()) {
    CombinationLaunch p{};
    p.scale = strided_scalars(scale);
    p.coef_x = strided_scalars(coef_x);
    p.coef_y = strided_scalars(coef_y);
    p.first_row = first_row;
    const at::ScalarType dtype = x[v].scalar_type();
    const size_t element_size = c10::elementSize(dtype);
    const int64_t dim = x[v].size(1);
    p.dim = dim;
    bool vectorized = (static_cast<uint64_t>(dim) * element_size) % 16 == 0;
    int n = 0;
    int64_t rows = 0;
    for (; v < x.size() && n < kMaxViews && x[v].scalar_type() == dtype && x[v].size(1) == dim; ++v) {
      const at::Tensor xv = unit_inner_stride(x[v]);
      const at::Tensor yv = unit_inner_stride(y[v]);
      at::Tensor out = at::empty(xv.sizes(), xv.options().memory_format(at::MemoryFormat::Contiguous));
      keep_alive.push_back(xv);
      keep_alive.push_back(yv);
      outputs.push_back(out);
      p.x[n] = xv.data_ptr();
      p.y[n] = yv.data_ptr();
      p.out[n] = out.data_ptr();
      p.x_stride[n] = xv.stride(0);
      p.y_stride[n] = yv.stride(0);
      vectorized &= aligned16(p.x[n], p.x_stride[n], element_size) &&
                    aligned16(p.y[n], p.y_stride[n], element_size) &&
                    aligned16(p.out[n], dim, element_size);
      rows += xv.size(0);
      p.view_end[n] = rows;
      ++n;
    }
    for (int k = n; k < kMaxViews; ++k) p.view_end[k] = rows;
    p.rows = rows;
    if (rows > 0 && dim > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "scaled_row_combination_cuda",
                                      [&] { launch_scaled_row_combination<scalar_t>(p, vectorized); });
    }
    first_row += rows;
  }
  return outputs;
}

// ---------------------------------------------------------------- elementwise ops
constexpr int kElementwiseThreads = 256;

int64_t elementwise_blocks(int64_t n) {
  const int64_t cap = static_cast<int64_t>(current_device_shape().multiprocessors) * 8;
  return std::min<int64_t>(cap, (n + kElementwiseThreads - 1) / kElementwiseThreads);
}

__global__ void normalizer_quantity_kernel(StridedScalars kappa, int64_t n, double dim, int family,
                                           int quantity, void* out, bool out_double) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double k = load_scalar(kappa, i);
    CUDA_KERNEL_ASSERT(valid_kappa(k) && "kappa must be finite and >= 0");
    const double value = valid_kappa(k) ? normalizer_quantity(family, quantity, k, dim) : ::nan("");
    if (out_double) {
      static_cast<double*>(out)[i] = value;
    } else {
      static_cast<float*>(out)[i] = static_cast<float>(value);
    }
  }
}

at::Tensor normalizer_quantity_cuda(const at::Tensor& kappa, int64_t dim, int64_t family,
                                    int64_t quantity) {
  CHECK_ARG(dim >= 2, "dim must be >= 2; got ", dim);
  CHECK_ARG(family == kVonMisesFisher || family == kPowerSpherical,
            "family must be 1 (vMF) or 2 (power spherical); got ", family);
  CHECK_ARG(quantity >= kLogNormalizer && quantity <= kKlUniform, "quantity must be in [0, 4]; got ",
            quantity);
  CHECK_ARG(kappa.is_cuda(), "kappa must be a CUDA tensor; got ", kappa.device());
  TORCH_CHECK_TYPE(at::isFloatingType(kappa.scalar_type()),
                   "kappa must be a floating point tensor; got ", kappa.scalar_type());
  const c10::cuda::CUDAGuard device_guard(kappa.device());
  const bool out_double = kappa.scalar_type() == at::kDouble;
  const at::Tensor k = kappa.contiguous();
  at::Tensor out = at::empty(k.sizes(), k.options().dtype(out_double ? at::kDouble : at::kFloat));
  const int64_t n = k.numel();
  if (n == 0) return out;
  const StridedScalars k_in{k.data_ptr(), 1, scalar_code(k.scalar_type())};
  normalizer_quantity_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0,
                               current_stream()>>>(
      k_in, n, static_cast<double>(dim), static_cast<int>(family), static_cast<int>(quantity),
      out.data_ptr(), out_double);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// The header's special functions on the device, so tests can compare the GPU
// build of the shared math with the CPU build value by value.
__global__ void special_function_kernel(int fn, const double* a, const double* b, double* out,
                                        int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = evaluate_special_function(fn, a[i], b[i]);
  }
}

at::Tensor special_function_cuda(c10::string_view name, const at::Tensor& a, const at::Tensor& b) {
  CHECK_ARG(a.sizes() == b.sizes(), "a and b must have the same shape; got ", a.sizes(), " and ",
            b.sizes());
  TORCH_CHECK_TYPE(a.scalar_type() == at::kDouble && b.scalar_type() == at::kDouble,
                   "a and b must be float64 tensors; got ", a.scalar_type(), " and ", b.scalar_type());
  CHECK_ARG(a.is_cuda(), "a must be a CUDA tensor; got ", a.device());
  CHECK_ON_DEVICE(b, a.device(), "b");
  const SpecialFunction fn = special_function_code(name);
  CHECK_ARG(fn != kUnknownSpecialFunction, "unknown special function name: ", name);
  const c10::cuda::CUDAGuard device_guard(a.device());
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor out = at::empty(ac.sizes(), ac.options());
  const int64_t n = ac.numel();
  if (n == 0) return out;
  special_function_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0,
                            current_stream()>>>(
      fn, ac.data_ptr<double>(), bc.data_ptr<double>(), out.data_ptr<double>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace vissiam

TORCH_LIBRARY_IMPL(vissiam_kernels, CUDA, m) {
  m.impl("spherical_nll", &vissiam::spherical_nll_cuda);
  m.impl("scaled_row_combination", &vissiam::scaled_row_combination_cuda);
  m.impl("normalizer_quantity", &vissiam::normalizer_quantity_cuda);
  m.impl("special_function", &vissiam::special_function_cuda);
}
