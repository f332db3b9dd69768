// CUDA kernels of sqdist_forward and sqdist_backward (DESIGN.md §2-§3).
//
// Forward: fused kernels, nothing d x d stored.
//   direct: one block per 64 x 64 tile (I, J >= I) of D and sample; for every modality the
//           tile of K = Xh^T Xh is accumulated over channels (tensor cores for fp16/bf16,
//           TF32 when torch allows it), the normalization folded in as a per-channel scale
//           while staging; the squared differences of every pair are reduced in registers
//           into one partial sum per tile, and the partials are summed in a fixed order.
//   gram:   one block per 64 x 64 tile of every Gram block G_mn = Xh_m Xh_n^T (n >= m),
//           accumulated over d, squared and reduced the same way; S_mn = |G_mm|^2 -
//           2 |G_mn|^2 + |G_nn|^2 from fp64 partials, clamped at 0. The diagonal blocks
//           are tiled whole, like the others: for X_m = X_n the three norms then come from
//           the same tiles summed in the same order, and S is exactly 0.
// No floating-point atomics: the same inputs give the same bits on every run. The
// forward keeps nothing for the backward (the Gram blocks are recomputed there).
//
// Backward: cuBLAS products (deterministic on one stream) over bounded buffers, on the raw
// rows X (the normalization enters as per-channel factors, as in the CPU kernels), for
// the modalities that need a gradient only:
//   direct: strips of kStripBudget entries of K_n[I, :] = X_n[:, I]^T diag(s_n^2) X_n and of
//           E_m = 4 (a_m K_m - sum_n w_mn K_n), multiplied into graw_m += X_m[:, I] E_m[I, :];
//   gram:   graw_m = sum_n coef_mn P_mn diag(s_n^2) X_n from the [C_m, C_n] blocks P = X X^T;
// then a fused normalization-backward kernel turns graw (dL/dXh = diag(s) graw) into
// dL/dX, in place for float32/float64 inputs. Beyond the gradients themselves this holds
// O(N M^2 C^2) (gram) or one strip (direct). Nothing reads a value back to the host, so
// the ops can be captured in CUDA graphs (torch.compile mode="reduce-overhead").
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "ssa_common.h"
#include "tile_core.cuh"

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>
#ifndef MTUT_CUDA_EMULATE
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <type_traits>
#include <vector>

namespace mtut {
namespace cuda {
namespace {

// CUDA spelling of the ATen element types.
template <typename T> struct Raw { using type = T; };
template <> struct Raw<at::Half> { using type = __half; };
template <> struct Raw<at::BFloat16> { using type = __nv_bfloat16; };

// What a kernel computes in besides the MMA: fp64 for fp64 inputs, fp32 otherwise.
template <typename Tin> using Cmp = std::conditional_t<std::is_same_v<Tin, double>, double, float>;

template <typename C, typename T> __device__ __forceinline__ C load_as(const T* p) {
  return static_cast<C>(to_float<T>(*p));
}
template <> __device__ __forceinline__ double load_as<double, double>(const double* p) { return *p; }

template <typename Tin> __device__ __forceinline__ Tin from_compute(Cmp<Tin> v) { return from_float<Tin>(v); }
template <> __device__ __forceinline__ double from_compute<double>(double v) { return v; }

#ifndef MTUT_CUDA_EMULATE
// kernel<<<grid, block, 0, stream>>>(args...), then the launch error check.
template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
using DeviceScope = c10::cuda::CUDAGuard;
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
#else
using emulation::launch;
using DeviceScope = emulation::DeviceScope;
cudaStream_t current_stream() { return nullptr; }
#endif

constexpr int64_t tiles_of(int64_t n) { return (n + kTile - 1) / kTile; }  // 64-wide tiles covering n

constexpr int kMaxGroup = 3;         // modalities whose K tiles one direct block holds at once
constexpr int64_t kMaxGrid = 65535;  // grid.y and grid.z limit

// ------------------------------------------------------------------ row scales

// norm[b, c] = ||x[b, c, :]|| and scale[b, c] = 1 / max(norm, eps): one warp per row, fp64
// sum in a fixed order.
template <typename Tin>
__global__ void __launch_bounds__(kThreads) row_scale_kernel(
    const Tin* __restrict__ x, int64_t sn, int64_t sc, int64_t sd, int64_t C, int64_t d, int64_t rows, double eps,
    Cmp<Tin>* __restrict__ norm, Cmp<Tin>* __restrict__ scale) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  if (row >= rows) return;  // whole warps leave together
  const int lane = threadIdx.x % 32;
  const Tin* p = x + (row / C) * sn + (row % C) * sc;
  double acc = 0;
  for (int64_t k = lane; k < d; k += 32) {
    const double v = to_double<Tin>(p[k * sd]);
    acc += v * v;
  }
  for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
  if (lane == 0) {
    const double r = sqrt(acc);
    norm[row] = static_cast<Cmp<Tin>>(r);
    scale[row] = static_cast<Cmp<Tin>>(1.0 / (r < eps ? eps : r));  // NaN stays NaN, as clamp_min keeps it
  }
}

// The normalization backward, fused, one block per row (b, c). graw holds the gradient
// with the row's scale s factored out, dL/dxh = s graw (every product of the backward has
// diag(s) on its left). With xh = s x:
//   r > eps:  dx = (dL/dxh - xh <xh, dL/dxh>) / r = (s / r) (graw - s^2 x <x, graw>)
//   r <= eps: dx = dL/dxh / eps = (s / eps) graw
// out may be graw itself (same dtype and layout): a row is read before it is written.
template <typename Tin>
__global__ void __launch_bounds__(kThreads) normalize_backward_kernel(
    const Cmp<Tin>* graw, const Tin* __restrict__ x, int64_t sn, int64_t sc, int64_t sd, int64_t C, int64_t d,
    const Cmp<Tin>* __restrict__ norm, const Cmp<Tin>* __restrict__ scale, double eps, Tin* out) {
  using T = Cmp<Tin>;
  __shared__ double scratch[kThreads / 32];
  __shared__ double dot;
  const int64_t row = blockIdx.x;
  const T s = scale[row], r = norm[row];
  const T* g = graw + row * d;
  const Tin* xr = x + (row / C) * sn + (row % C) * sc;
  Tin* o = out + row * d;
  if (r > eps) {
    double acc = 0;
    for (int64_t k = threadIdx.x; k < d; k += kThreads) acc += to_double<Tin>(xr[k * sd]) * static_cast<double>(g[k]);
    const double total = block_sum(acc, scratch);
    if (threadIdx.x == 0) dot = total;
    __syncthreads();
    const T f = s / r, c = static_cast<T>(static_cast<double>(s) * s * dot);
    for (int64_t k = threadIdx.x; k < d; k += kThreads) o[k] = from_compute<Tin>(f * (g[k] - c * load_as<T>(xr + k * sd)));
  } else {
    const T f = static_cast<T>(s / eps);
    for (int64_t k = threadIdx.x; k < d; k += kThreads) o[k] = from_compute<Tin>(f * g[k]);
  }
}

// One modality's [N, C, d] view (any strides) and its row scales.
template <typename Tin>
struct Operand {
  const Tin* x;
  int64_t sn, sc, sd, C;
  const Cmp<Tin>* scale;  // [N, C] contiguous
};

// ------------------------------------------------------------------ staging

// sT[k * kLD + i] = Xh[c0 + k, p0 + i] (channel-major tile: the K = Xh^T Xh operands), zero outside.
template <typename Core, typename Tin>
__device__ __forceinline__ void stage_channels(typename Core::Stage* sT, const Operand<Tin>& op, int64_t b, int64_t c0,
                                               int64_t p0, int64_t d) {
  const Tin* x = op.x + b * op.sn;
  const Cmp<Tin>* s = op.scale + b * op.C;
  for (int e = threadIdx.x; e < Core::kBK * kTile; e += kThreads) {
    const int k = e / kTile, i = e % kTile;  // consecutive threads read consecutive positions
    const int64_t c = c0 + k, p = p0 + i;
    Cmp<Tin> v = 0;
    if (c < op.C && p < d) v = load_as<Cmp<Tin>>(x + c * op.sc + p * op.sd) * s[c];
    sT[k * Core::kLD + i] = Core::stage(v);
  }
}

// sT[k * kLD + i] = Xh[r0 + i, k0 + k] (position-major tile: the G = Xh Xh^T operands), zero outside.
template <typename Core, typename Tin>
__device__ __forceinline__ void stage_positions(typename Core::Stage* sT, const Operand<Tin>& op, int64_t b,
                                                int64_t r0, int64_t k0, int64_t d) {
  const Tin* x = op.x + b * op.sn;
  const Cmp<Tin>* s = op.scale + b * op.C;
  for (int e = threadIdx.x; e < Core::kBK * kTile; e += kThreads) {
    const int i = e / Core::kBK, k = e % Core::kBK;  // consecutive threads read consecutive positions
    const int64_t r = r0 + i, p = k0 + k;
    Cmp<Tin> v = 0;
    if (r < op.C && p < d) v = load_as<Cmp<Tin>>(x + r * op.sc + p * op.sd) * s[r];
    sT[k * Core::kLD + i] = Core::stage(v);
  }
}

// ------------------------------------------------------------------ direct forward

template <typename Tin, int G>
struct DirectArgs {
  Operand<Tin> op[G];
  int slot[G][G];    // pair (q1 < q2) of the group -> pair index in partial
  int64_t d, tiles;  // tiles = ceil(d / kTile)
  int64_t b0;        // first sample of this launch
  int pairs;         // P = M (M - 1) / 2
  double* partial;   // [N, tiles, tiles, P]; tiles below the diagonal stay 0
};

template <typename Tin, typename Core, int G>
__global__ void __launch_bounds__(kThreads) direct_sqdist_kernel(const DirectArgs<Tin, G> args) {
  const int64_t ti = blockIdx.x, tj = blockIdx.y, b = args.b0 + blockIdx.z;
  if (tj < ti) return;  // D is symmetric: the upper triangle of tiles, off-diagonal ones twice
  __shared__ __align__(128) typename Core::Stage sA[Core::kBK * Core::kLD];
  __shared__ __align__(128) typename Core::Stage sB[Core::kBK * Core::kLD];
  __shared__ double scratch[kThreads / 32];
  Core acc[G];
#pragma unroll
  for (int q = 0; q < G; ++q) {
    acc[q].zero();
    for (int64_t c0 = 0; c0 < args.op[q].C; c0 += Core::kBK) {
      stage_channels<Core>(sA, args.op[q], b, c0, ti * kTile, args.d);
      stage_channels<Core>(sB, args.op[q], b, c0, tj * kTile, args.d);
      __syncthreads();
      acc[q].mma(sA, sB);
      __syncthreads();
    }
  }
  const double mirror = ti == tj ? 1.0 : 2.0;
  double* out = args.partial + ((b * args.tiles + ti) * args.tiles + tj) * args.pairs;
#pragma unroll
  for (int q1 = 0; q1 < G; ++q1) {
#pragma unroll
    for (int q2 = q1 + 1; q2 < G; ++q2) {
      typename Core::Acc local = 0;  // the tile's zero padding contributes 0 - 0
#pragma unroll
      for (int e = 0; e < Core::kElems; ++e) {
        const typename Core::Acc v = acc[q1].elem(e) - acc[q2].elem(e);
        local += v * v;
      }
      const double total = block_sum(static_cast<double>(local), scratch);
      if (threadIdx.x == 0) out[args.slot[q1][q2]] = mirror * total;
    }
  }
}

// sum_{t < count} p[t * step] over the block in a fixed order; valid in thread 0.
__device__ __forceinline__ double block_sum_strided(const double* p, int64_t count, int64_t step, double* scratch) {
  double acc = 0;
  for (int64_t t = threadIdx.x; t < count; t += kThreads) acc += p[t * step];
  return block_sum(acc, scratch);
}

// S[b, m, n] = S[b, n, m] = sum_t partial[b, t, p] for pair p = (m < n); one block per (b, p).
template <typename Out>
__global__ void __launch_bounds__(kThreads) sum_pair_partials_kernel(
    const double* __restrict__ partial, int64_t count, int pairs, int M, Out* __restrict__ S) {
  __shared__ double scratch[kThreads / 32];
  const int64_t b = blockIdx.x;  // grid.x: any N
  const int p = blockIdx.y;
  const double total = block_sum_strided(partial + b * count * pairs + p, count, pairs, scratch);
  if (threadIdx.x == 0) {
    int m = 0, rest = p;  // p enumerates (m, n > m) with m major
    while (rest >= M - 1 - m) rest -= M - 1 - m, ++m;
    const int n = m + 1 + rest;
    S[(b * M + m) * M + n] = S[(b * M + n) * M + m] = static_cast<Out>(total);
  }
}

// ------------------------------------------------------------------ gram forward

template <typename Tin>
struct GramArgs {
  Operand<Tin> a, b;  // rows of G come from a, columns from b
  int64_t d, col_tiles, b0, stride;
  double* partial;    // [N, stride] for this block; tile (pt, qt) at pt * col_tiles + qt
};

template <typename Tin, typename Core>
__global__ void __launch_bounds__(kThreads) gram_sqnorm_kernel(const GramArgs<Tin> args) {
  const int64_t pt = blockIdx.x, qt = blockIdx.y, b = args.b0 + blockIdx.z;
  __shared__ __align__(128) typename Core::Stage sA[Core::kBK * Core::kLD];
  __shared__ __align__(128) typename Core::Stage sB[Core::kBK * Core::kLD];
  __shared__ double scratch[kThreads / 32];
  Core acc;
  acc.zero();
  for (int64_t k0 = 0; k0 < args.d; k0 += Core::kBK) {
    stage_positions<Core>(sA, args.a, b, pt * kTile, k0, args.d);
    stage_positions<Core>(sB, args.b, b, qt * kTile, k0, args.d);
    __syncthreads();
    acc.mma(sA, sB);
    __syncthreads();
  }
  typename Core::Acc local = 0;
#pragma unroll
  for (int e = 0; e < Core::kElems; ++e) local += acc.elem(e) * acc.elem(e);
  const double total = block_sum(static_cast<double>(local), scratch);
  if (threadIdx.x == 0) args.partial[b * args.stride + pt * args.col_tiles + qt] = total;
}

// t[b, k] = sum of partial[k, b, :] (block k = (m <= n), m major); one block per (b, k).
__global__ void __launch_bounds__(kThreads) sum_block_partials_kernel(
    const double* __restrict__ partial, int64_t N, int64_t stride, int blocks, double* __restrict__ t) {
  __shared__ double scratch[kThreads / 32];
  const int64_t b = blockIdx.x;
  const int k = blockIdx.y;
  const double total = block_sum_strided(partial + (static_cast<int64_t>(k) * N + b) * stride, stride, 1, scratch);
  if (threadIdx.x == 0) t[b * blocks + k] = total;
}

__host__ __device__ inline int block_index(int m, int n, int M) { return m * M - m * (m - 1) / 2 + (n - m); }

// S_mn = t_mm - 2 t_mn + t_nn, clamped at 0 (a NaN passes): one thread per (b, m, n).
template <typename Out>
__global__ void combine_gram_kernel(const double* __restrict__ t, int64_t N, int M, Out* __restrict__ S) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * M * M) return;
  const int64_t b = i / (M * M);
  const int m = static_cast<int>((i / M) % M), n = static_cast<int>(i % M);
  const int blocks = M * (M + 1) / 2;
  double v = 0;
  if (m != n) {
    const int lo = m < n ? m : n, hi = m < n ? n : m;
    const double* tb = t + b * blocks;
    v = tb[block_index(lo, lo, M)] - 2.0 * tb[block_index(lo, hi, M)] + tb[block_index(hi, hi, M)];
    v = v < 0 ? 0.0 : v;
  }
  S[i] = static_cast<Out>(v);
}

// ------------------------------------------------------------------ host side

enum class CoreKind { Simt, Wmma, Tf32 };

// Tensor cores from sm_80 (fp16/bf16; fp32 as TF32 only when torch's matmul precision allows it).
CoreKind pick_core(at::ScalarType dtype, int device) {
  int major = 0;
#ifndef MTUT_CUDA_EMULATE
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
#else
  major = emulation::compute_capability_major();  // the tests choose which cores run
#endif
  if (major < 8) return CoreKind::Simt;
  if (dtype == at::kHalf || dtype == at::kBFloat16) return CoreKind::Wmma;
  if (dtype == at::kFloat && at::globalContext().allowTF32CuBLAS()) return CoreKind::Tf32;
  return CoreKind::Simt;
}

struct Prepared {
  std::vector<at::Tensor> views;   // [N, C_m, d] views (copies only where no view exists)
  std::vector<at::Tensor> norms;   // [N, C_m] compute dtype, r = ||x||
  std::vector<at::Tensor> scales;  // [N, C_m] compute dtype, s = 1 / max(r, eps)
};

template <typename T>
Prepared prepare(at::TensorList feats, const FeatInfo& info, double eps, cudaStream_t stream) {
  using Tin = typename Raw<T>::type;
  Prepared p;
  for (const auto& f : feats) {
    at::Tensor v = f.reshape({info.N, f.size(1), info.d});
    at::Tensor r = at::empty({info.N, f.size(1)}, f.options().dtype(info.compute_dtype));
    at::Tensor s = at::empty({info.N, f.size(1)}, f.options().dtype(info.compute_dtype));
    const int64_t rows = info.N * f.size(1);
    const int64_t blocks = (rows + kThreads / 32 - 1) / (kThreads / 32);
    launch(row_scale_kernel<Tin>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), stream,
           reinterpret_cast<const Tin*>(v.const_data_ptr<T>()), v.stride(0), v.stride(1), v.stride(2), f.size(1),
           info.d, rows, eps, r.mutable_data_ptr<Cmp<Tin>>(), s.mutable_data_ptr<Cmp<Tin>>());
    p.views.push_back(v);
    p.norms.push_back(r);
    p.scales.push_back(s);
  }
  return p;
}

template <typename T>
Operand<typename Raw<T>::type> operand(const Prepared& p, size_t m) {
  using Tin = typename Raw<T>::type;
  const at::Tensor& v = p.views[m];
  return {reinterpret_cast<const Tin*>(v.const_data_ptr<T>()), v.stride(0), v.stride(1), v.stride(2), v.size(1),
          p.scales[m].const_data_ptr<Cmp<Tin>>()};
}

template <typename T, typename Core, int G>
void launch_direct(const Prepared& p, const FeatInfo& info, const std::vector<int>& group, at::Tensor& partial,
                   cudaStream_t stream) {
  using Tin = typename Raw<T>::type;
  DirectArgs<Tin, G> args{};
  const int M = static_cast<int>(info.M);
  for (int q = 0; q < G; ++q) args.op[q] = operand<T>(p, group[q]);
  for (int q1 = 0; q1 < G; ++q1)
    for (int q2 = q1 + 1; q2 < G; ++q2) {
      const int m = group[q1], n = group[q2];  // m < n
      args.slot[q1][q2] = m * (2 * M - m - 1) / 2 + (n - m - 1);
    }
  args.d = info.d;
  args.tiles = tiles_of(info.d);
  args.pairs = M * (M - 1) / 2;
  args.partial = partial.mutable_data_ptr<double>();
  for (int64_t b0 = 0; b0 < info.N; b0 += kMaxGrid) {
    args.b0 = b0;
    const dim3 grid(static_cast<unsigned>(args.tiles), static_cast<unsigned>(args.tiles),
                    static_cast<unsigned>(std::min(kMaxGrid, info.N - b0)));
    launch(direct_sqdist_kernel<Tin, Core, G>, grid, dim3(kThreads), stream, args);
  }
}

template <typename T, typename Core>
void direct_groups(const Prepared& p, const FeatInfo& info, at::Tensor& partial, cudaStream_t stream) {
  const int M = static_cast<int>(info.M);
  if (M <= kMaxGroup) {  // every K tile computed once
    std::vector<int> all(M);
    for (int m = 0; m < M; ++m) all[m] = m;
    if (M == 2) launch_direct<T, Core, 2>(p, info, all, partial, stream);
    else launch_direct<T, Core, 3>(p, info, all, partial, stream);
    return;
  }
  for (int m = 0; m < M; ++m)  // more modalities than registers for their tiles: pair by pair
    for (int n = m + 1; n < M; ++n) launch_direct<T, Core, 2>(p, info, {m, n}, partial, stream);
}

template <typename T, typename Core>
void launch_gram(const Prepared& p, const FeatInfo& info, at::Tensor& partial, int64_t stride, cudaStream_t stream) {
  using Tin = typename Raw<T>::type;
  const int M = static_cast<int>(info.M);
  for (int m = 0; m < M; ++m)
    for (int n = m; n < M; ++n) {
      GramArgs<Tin> args{};
      args.a = operand<T>(p, m);
      args.b = operand<T>(p, n);
      args.d = info.d;
      const int64_t row_tiles = tiles_of(info.channels[m]);
      args.col_tiles = tiles_of(info.channels[n]);
      args.stride = stride;
      args.partial = partial.select(0, block_index(m, n, M)).mutable_data_ptr<double>();
      for (int64_t b0 = 0; b0 < info.N; b0 += kMaxGrid) {
        args.b0 = b0;
        const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(args.col_tiles),
                        static_cast<unsigned>(std::min(kMaxGrid, info.N - b0)));
        launch(gram_sqnorm_kernel<Tin, Core>, grid, dim3(kThreads), stream, args);
      }
    }
}

template <typename Core> struct CoreTag { using type = Core; };

// Calls f(CoreTag<Core>{}) with the core chosen for T (C++17: a generic lambda, not a
// templated one, so that torch versions building extensions as C++17 compile it too).
template <typename T, typename F>
void with_core(CoreKind kind, F&& f) {
  using Tin = typename Raw<T>::type;
  if constexpr (std::is_same_v<Tin, double>) {
    f(CoreTag<SimtCore<double>>{});
  } else if constexpr (std::is_same_v<Tin, float>) {
    if (kind == CoreKind::Tf32) f(CoreTag<Tf32Core>{});
    else f(CoreTag<SimtCore<float>>{});
  } else {
    if (kind == CoreKind::Wmma) f(CoreTag<WmmaCore<Tin>>{});
    else f(CoreTag<SimtCore<float>>{});
  }
}

// S [N, M, M] (compute dtype) by the fused kernels, from prepared rows.
template <typename T>
at::Tensor sqdist_fused(const Prepared& p, const FeatInfo& info, Algo algo, const at::TensorOptions& options,
                        cudaStream_t stream) {
  using Out = Cmp<typename Raw<T>::type>;
  const int M = static_cast<int>(info.M);
  const auto f64 = options.dtype(at::kDouble);
  at::Tensor S = at::zeros({info.N, info.M, info.M}, options.dtype(info.compute_dtype));
  const CoreKind kind = pick_core(info.dtype, options.device().index());
  if (algo == Algo::Direct) {
    const int64_t tiles = tiles_of(info.d);
    TORCH_CHECK_VALUE(tiles <= kMaxGrid, "mtut: algo='direct' on CUDA supports d <= ", kMaxGrid * kTile,
                      " (prod of the spatiotemporal dims), got d = ", info.d, "; use algo='gram' or 'auto'");
    const int pairs = M * (M - 1) / 2;
    at::Tensor partial = at::zeros({info.N, tiles * tiles, pairs}, f64);
    with_core<T>(kind, [&](auto core) { direct_groups<T, typename decltype(core)::type>(p, info, partial, stream); });
    launch(sum_pair_partials_kernel<Out>, dim3(static_cast<unsigned>(info.N), pairs), dim3(kThreads), stream,
           partial.const_data_ptr<double>(), tiles * tiles, pairs, M, S.mutable_data_ptr<Out>());
    return S;
  }
  int64_t stride = 1;  // the most tiles of any block
  for (int m = 0; m < M; ++m)
    for (int n = m; n < M; ++n)
      stride = std::max(stride, tiles_of(info.channels[m]) * tiles_of(info.channels[n]));
  const int blocks = M * (M + 1) / 2;
  at::Tensor partial = at::zeros({blocks, info.N, stride}, f64);
  with_core<T>(kind, [&](auto core) { launch_gram<T, typename decltype(core)::type>(p, info, partial, stride, stream); });
  at::Tensor t = at::empty({info.N, blocks}, f64);
  launch(sum_block_partials_kernel, dim3(static_cast<unsigned>(info.N), blocks), dim3(kThreads), stream,
         partial.const_data_ptr<double>(), info.N, stride, blocks, t.mutable_data_ptr<double>());
  const int64_t count = info.N * M * M;
  launch(combine_gram_kernel<Out>, dim3(static_cast<unsigned>((count + kThreads - 1) / kThreads)), dim3(kThreads),
         stream, t.const_data_ptr<double>(), info.N, M, S.mutable_data_ptr<Out>());
  return S;
}

// ------------------------------------------------------------------ backward (cuBLAS products)

#ifndef MTUT_CUDA_EMULATE
constexpr int64_t kStripBudget = int64_t(1) << 24;  // entries of one K strip [N, rows, d]
#else
constexpr int64_t kStripBudget = 1024;  // so that the tests' small shapes walk many strips
#endif

// The rows in the compute dtype for the products: the input itself for float/double
// (a view), a converted copy for float16/bfloat16 (whose products could overflow).
std::vector<at::Tensor> compute_rows(const Prepared& p, const FeatInfo& info) {
  std::vector<at::Tensor> x;
  for (const auto& v : p.views) x.push_back(v.to(info.compute_dtype));
  return x;
}

at::Tensor column(const at::Tensor& v) { return v.unsqueeze(-1); }  // [N, C] -> [N, C, 1]

// coef[m * M + n], [N, 1, 1]: the weight of pair (m, n) in dL/dXh_m, for both algorithms:
// coef_mm = 4 a_m with a_m = sum_{n != m} w_mn, and coef_mn = -4 w_mn (n != m).
std::vector<at::Tensor> pair_coefficients(const at::Tensor& w, const FeatInfo& info) {
  const int64_t M = info.M, N = info.N;
  std::vector<at::Tensor> coef(M * M);
  for (int64_t m = 0; m < M; ++m) {
    const at::Tensor wm = w.select(1, m);
    for (int64_t n = 0; n < M; ++n)
      coef[m * M + n] = (n == m ? (wm.sum(1) - wm.select(1, m)) * 4.0 : wm.select(1, n) * -4.0).view({N, 1, 1});
  }
  return coef;
}

// s_m^2 of every modality, [N, C_m].
std::vector<at::Tensor> squared_scales(const Prepared& p) {
  std::vector<at::Tensor> s2;
  for (const auto& s : p.scales) s2.push_back(s * s);
  return s2;
}

// graw_m with dL/dXh_m = diag(s_m) graw_m for dL/dXh_m = Xh_m E_m, E_m = sum_n coef_mn K_n
// = 4 (a_m K_m - sum_{n != m} w_mn K_n), over strips of rows I of E:
// K_n[I, :] = X_n[:, I]^T diag(s_n^2) X_n and graw_m += X_m[:, I] E_m[I, :].
// Only the modalities with needs[m] get a buffer, and only the K_n they use are formed.
std::vector<at::Tensor> direct_grad_raw(const Prepared& p, const std::vector<at::Tensor>& x, const at::Tensor& w,
                                        const FeatInfo& info, const Needs& needs) {
  const int64_t M = info.M, N = info.N, d = info.d;
  const int64_t rows = std::clamp<int64_t>(kStripBudget / std::max<int64_t>(N * d, 1), 1, d);
  const std::vector<at::Tensor> coef = pair_coefficients(w, info), s2 = squared_scales(p);
  std::vector<at::Tensor> g(M);
  for (int64_t m = 0; m < M; ++m)
    if (needs[m]) g[m] = at::zeros({N, info.channels[m], d}, x[m].options().memory_format(at::MemoryFormat::Contiguous));
  std::vector<at::Tensor> K(M);
  for (int64_t i0 = 0; i0 < d; i0 += rows) {
    const int64_t ti = std::min(rows, d - i0);
    for (int64_t m = 0; m < M; ++m)  // K_m enters E_m and every other E_n: all are formed
      K[m] = at::bmm((x[m].narrow(2, i0, ti) * column(s2[m])).transpose(1, 2), x[m]);  // [N, ti, d]
    for (int64_t m = 0; m < M; ++m) {
      if (!needs[m]) continue;
      at::Tensor E = K[m] * coef[m * M + m];
      for (int64_t n = 0; n < M; ++n)
        if (n != m) E.add_(K[n] * coef[m * M + n]);
      g[m].baddbmm_(x[m].narrow(2, i0, ti), E);
    }
  }
  return g;
}

// The unscaled Gram block P_mn = X_m X_n^T [N, C_m, C_n].
at::Tensor raw_gram_block(const std::vector<at::Tensor>& x, int64_t m, int64_t n) {
  return at::bmm(x[m], x[n].transpose(1, 2));
}

// graw_m with dL/dXh_m = diag(s_m) graw_m = sum_n coef_mn G_mn Xh_n
// = 4 (a_m G_mm Xh_m - sum_{n != m} w_mn G_mn Xh_n): graw_m = sum_n coef_mn P_mn diag(s_n^2) X_n,
// for the modalities with needs[m]; each block is computed once, where first used.
std::vector<at::Tensor> gram_grad_raw(const Prepared& p, const std::vector<at::Tensor>& x, const at::Tensor& w,
                                      const FeatInfo& info, const Needs& needs) {
  const int64_t M = info.M, N = info.N;
  const std::vector<at::Tensor> coef = pair_coefficients(w, info), s2 = squared_scales(p);
  std::vector<at::Tensor> P(M * M);  // [m * M + n], n >= m
  std::vector<at::Tensor> g(M);
  for (int64_t m = 0; m < M; ++m) {
    if (!needs[m]) continue;
    g[m] = at::zeros({N, info.channels[m], info.d}, x[m].options().memory_format(at::MemoryFormat::Contiguous));
    for (int64_t n = 0; n < M; ++n) {
      const int64_t lo = std::min(m, n), hi = std::max(m, n);
      if (!P[lo * M + hi].defined()) P[lo * M + hi] = raw_gram_block(x, lo, hi);
      const at::Tensor block = m <= n ? P[lo * M + hi] : P[lo * M + hi].transpose(1, 2);
      g[m].baddbmm_(block * s2[n].unsqueeze(1) * coef[m * M + n], x[n]);
    }
  }
  return g;
}

// dL/dfeats from the graw buffers: the fused normalization backward, in place when the
// input is in the compute dtype (float32/float64), else into a new tensor of the input
// dtype; an empty tensor for the modalities without needs[m].
template <typename T>
std::vector<at::Tensor> finish(std::vector<at::Tensor>& graw, const Prepared& p, const FeatInfo& info, double eps,
                               at::TensorList feats, const Needs& needs, cudaStream_t stream) {
  using Tin = typename Raw<T>::type;
  std::vector<at::Tensor> grads;
  for (size_t m = 0; m < graw.size(); ++m) {
    if (!needs[m]) {
      grads.push_back(at::empty({0}, feats[m].options()));
      continue;
    }
    const at::Tensor& v = p.views[m];
    at::Tensor out = info.dtype == info.compute_dtype ? graw[m] : at::empty_like(graw[m], v.options());
    launch(normalize_backward_kernel<Tin>, dim3(static_cast<unsigned>(info.N * v.size(1))), dim3(kThreads), stream,
           graw[m].const_data_ptr<Cmp<Tin>>(), reinterpret_cast<const Tin*>(v.const_data_ptr<T>()), v.stride(0),
           v.stride(1), v.stride(2), v.size(1), info.d, p.norms[m].const_data_ptr<Cmp<Tin>>(),
           p.scales[m].const_data_ptr<Cmp<Tin>>(), eps, reinterpret_cast<Tin*>(out.mutable_data_ptr<T>()));
    grads.push_back(out.view(feats[m].sizes()));
  }
  return grads;
}

// ------------------------------------------------------------------ ops

std::tuple<at::Tensor, at::Tensor> sqdist_forward(at::TensorList feats, double eps, c10::string_view algo,
                                                  bool /*directed: the autograd formula's*/,
                                                  bool /*for_backward: nothing is kept*/) {
  const FeatInfo info = check_feats(feats);
  check_eps(eps);
  const Algo a = resolve_algo(algo, info.d, info.channels);
  const DeviceScope guard(feats[0].device());
  cudaStream_t stream = current_stream();
  at::Tensor S;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, info.dtype, "mtut_sqdist_forward_cuda", [&] {
    S = sqdist_fused<scalar_t>(prepare<scalar_t>(feats, info, eps, stream), info, a, feats[0].options(), stream);
  });
  return {S, at::empty({0}, S.options())};
}

std::vector<at::Tensor> sqdist_backward(at::TensorList feats, const at::Tensor& saved, const at::Tensor& weight,
                                        double eps, c10::string_view algo, const c10::List<bool>& needs_grad) {
  const FeatInfo info = check_feats(feats);
  check_weight(weight, info, feats[0]);
  check_eps(eps);
  const Needs needs = check_needs_grad(needs_grad, info);
  const Algo a = resolve_algo(algo, info.d, info.channels);
  check_saved(saved, info, a, feats[0]);  // kept blocks (from another backend) are not needed: recomputed
  const DeviceScope guard(feats[0].device());
  cudaStream_t stream = current_stream();
  const at::Tensor w = weight.to(info.compute_dtype);
  std::vector<at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, info.dtype, "mtut_sqdist_backward_cuda", [&] {
    const Prepared p = prepare<scalar_t>(feats, info, eps, stream);
    const std::vector<at::Tensor> x = compute_rows(p, info);
    std::vector<at::Tensor> g = a == Algo::Direct ? direct_grad_raw(p, x, w, info, needs)
                                                  : gram_grad_raw(p, x, w, info, needs);
    grads = finish<scalar_t>(g, p, info, eps, feats, needs, stream);
  });
  return grads;
}

}  // namespace
}  // namespace cuda
}  // namespace mtut

#ifdef MTUT_CUDA_EMULATE
// The emulated kernels take CPU tensors; they get their own namespace so that they
// never stand in for the real CPU kernels. Autocast is kept out of them as out of the
// real ops (csrc/mtut_ops.cpp), here for the CPU key the emulation runs on.
TORCH_LIBRARY(mtut_emulated, m) {
  m.def("sqdist_forward(Tensor[] feats, float eps, str algo, bool directed, bool for_backward) -> (Tensor, Tensor)");
  m.def(
      "sqdist_backward(Tensor[] feats, Tensor saved, Tensor weight, float eps, str algo, bool[] needs_grad) "
      "-> Tensor[]");
}
TORCH_LIBRARY_IMPL(mtut_emulated, CPU, m) {
  m.impl("sqdist_forward", &mtut::cuda::sqdist_forward);
  m.impl("sqdist_backward", &mtut::cuda::sqdist_backward);
}
TORCH_LIBRARY_IMPL(mtut_emulated, AutocastCPU, m) {
  for (const char* name : {"sqdist_forward", "sqdist_backward"})
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&mtut::without_autocast>());
}
#else
TORCH_LIBRARY_IMPL(mtut, CUDA, m) {
  m.impl("sqdist_forward", &mtut::cuda::sqdist_forward);
  m.impl("sqdist_backward", &mtut::cuda::sqdist_backward);
}
#endif
